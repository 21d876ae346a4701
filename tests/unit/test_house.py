"""Where things live (issue 11): rendering only in ``listener.cli``, every error class in
``listener.errors``, every default in ``listener.defaults`` (which imports nothing from listener)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from listener.errors import ListenerError

PACKAGE = Path(__file__).resolve().parents[2] / "listener"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _outside_cli() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "cli" not in p.relative_to(PACKAGE).parts[:1]]


def test_only_the_cli_renders() -> None:
    """No module outside listener/cli imports rich or prints."""
    found = []
    for path in _outside_cli():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(name.split(".")[0] == "rich" for name in names):
                found.append(f"{where} imports rich")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.append(f"{where} prints")
    assert not found, "rendering outside listener/cli:\n" + "\n".join(found)


def test_every_error_class_is_defined_in_listener_errors() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "__main__.py":
            importlib.import_module(_module(path))
    classes: list[type[BaseException]] = [ListenerError]
    for cls in classes:
        classes.extend(cls.__subclasses__())
    elsewhere = sorted(
        f"{c.__module__}.{c.__qualname__}" for c in classes if c.__module__ != "listener.errors"
    )
    assert not elsewhere, f"error classes outside listener/errors.py: {elsewhere}"


def test_defaults_import_nothing_from_listener() -> None:
    tree = ast.parse((PACKAGE / "defaults.py").read_text())
    imported = [
        alias.name if isinstance(node, ast.Import) else node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert [name for name in imported if name.split(".")[0] == "listener"] == []
