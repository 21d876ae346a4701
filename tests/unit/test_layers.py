"""The import graph of the ``listener`` package: imports point down the stages, never up, never in a cycle.

Every import counts: at module level, inside functions (lazy imports) and under ``TYPE_CHECKING``. The
stages, bottom to top (README, "Architecture")::

    errors, defaults  <  supervise  <  pg/  <  rules/  <  queue/  <  metrics  <  ingest/, runtime/
        <  install, http/  <  service  <  ops/  <  cli/
        <  listener.workflow, listener.__main__ (public entry points)

A module may import a module of a lower stage, or of its own package. The two packages of one stage
(``ingest`` and ``runtime``) never import each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "listener"

STAGES: dict[str, float] = {
    "listener": 0,
    "listener.errors": 0,
    "listener.defaults": 0,
    "listener.sql": 0,
    "listener.supervise": 1,
    "listener.pg": 2,
    "listener.rules": 3,
    "listener.queue": 4,
    "listener.metrics": 4.5,  # recorded by ingest, runtime and http; reads pg/, and queue/'s batches
    "listener.ingest": 5,
    "listener.runtime": 5,
    "listener.install": 6,
    "listener.http": 6,
    "listener.service": 7,
    "listener.ops": 8,
    "listener.cli": 9,
    "listener.workflow": 10,
    "listener.__main__": 10,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def stage_of(module: str) -> str:
    """The stage a module belongs to: the longest prefix named in STAGES."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in STAGES:
            return prefix
    raise AssertionError(f"{module} belongs to no stage: add it to STAGES (and to README's architecture)")


def resolve(module: str, target: str) -> str:
    """``target`` as a module of the package (``from listener.pg import lsn`` names listener.pg.lsn)."""
    while target not in MODULES and "." in target:
        target = target.rpartition(".")[0]
    return target


def imports(module: str) -> Iterator[tuple[str, int]]:
    """Every listener module ``module`` imports, with the line, lazy and type-only imports included."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "listener":
                    yield resolve(module, alias.name), node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "listener":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in MODULES else resolve(module, base)), node.lineno


GRAPH = {m: sorted({t for t, _ in imports(m) if t != m}) for m in MODULES}


def test_every_module_belongs_to_a_stage() -> None:
    for module in MODULES:
        stage_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    mine = stage_of(module)
    wrong = []
    for target, line in imports(module):
        theirs = stage_of(target)
        if theirs == mine or target == "listener":
            continue
        if STAGES[theirs] >= STAGES[mine]:
            wrong.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {target} ({theirs})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_no_cycles() -> None:
    """No cycle among modules, lazy imports included (a cycle inside one package counts too)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for target in GRAPH[module]:
            if target in MODULES and not MODULES[module].name == "__init__.py" == MODULES[target].name:
                visit(target)
        path.pop()
        done.add(module)

    for module in MODULES:
        visit(module)


def test_the_checker_sees_lazy_and_type_only_imports(tmp_path: Path) -> None:
    """The walker finds imports inside functions and under TYPE_CHECKING, not just at the top."""
    found = dict(imports("listener.ingest.backfill"))
    assert found, "the walker found no import in listener.ingest.backfill"
    source = (
        "import typing\n"
        "if typing.TYPE_CHECKING:\n    from listener.cli import main\n"
        "def f():\n    from listener.ops import rewind\n"
    )
    tree = ast.parse(source)
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names == ["listener.cli", "listener.ops"]
