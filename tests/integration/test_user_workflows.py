"""The user's own workflows import without tricks (issue 10.1): the config file's directory is importable,
`workflows_path:` names others, a package of the user's named `workflows` is not shadowed by anything
listener ships, and `listener check` imports every workflow, naming the rule, the file and the line of
each failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

Conn = psycopg.Connection[tuple[object, ...]]


def rule(name: str, workflow: str) -> str:
    return f"  - name: {name}\n    table: items\n    on: [insert]\n    workflow: {workflow}\n"


def check(dsn: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`listener check` in a fresh interpreter, from another directory, without PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    elsewhere = config.parent.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "listener", "check", "--dsn", dsn, "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=elsewhere,
        env=env,
    )


def test_workflows_beside_the_config_and_in_workflows_path_import(
    tmp_path: Path, dsn: str, sql: Conn
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    (project / "myflows.py").write_text("async def welcome(ctx):\n    return 1\n")
    (project / "flows" / "other.py").write_text("async def hello(ctx):\n    return 2\n")
    # a package of the user's own named `workflows`: never shadowed by listener's examples
    (project / "workflows").mkdir()
    (project / "workflows" / "__init__.py").write_text("")
    (project / "workflows" / "onboarding.py").write_text("async def mine(ctx):\n    return 3\n")
    config = project / "listener.yaml"
    config.write_text(
        "workflows_path: flows\nrules:\n"
        + rule("a", "myflows:welcome")
        + rule("b", "other:hello")
        + rule("c", "workflows.onboarding:mine")
    )
    proc = check(dsn, config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"✓ workflows: 3 rule(s) import (from {project / 'flows'}, {project})" in proc.stdout


def test_check_reports_each_import_failure_with_rule_file_and_line(
    tmp_path: Path, dsn: str, sql: Conn
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    project = tmp_path / "project"
    project.mkdir()
    (project / "broken_syntax.py").write_text("async def f(ctx):\n    return (\n")
    (project / "raises.py").write_text("import os\n\nVALUE = int(os.environ['NOT_SET_AT_ALL_X'])\n")
    (project / "imports_missing.py").write_text("import not_installed_anywhere_x\n")
    (project / "fine.py").write_text("async def f(ctx):\n    return 1\n")
    config = project / "listener.yaml"
    config.write_text(
        "rules:\n"
        + rule("missing", "no_such_module_x:f")
        + rule("syntax", "broken_syntax:f")
        + rule("raising", "raises:f")
        + rule("dependency", "imports_missing:f")
        + rule("no_function", "fine:g")
        + rule("ok", "fine:f")
    )
    proc = check(dsn, config)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Traceback" not in out + proc.stderr

    def line_of(name: str) -> str:
        text = config.read_text().splitlines()
        start = text.index(f"  - name: {name}")
        return f"{config}:{start + 4}"  # the rule's `workflow:` line

    assert (
        f"✗ workflow of rule missing: {line_of('missing')}, rule 'missing': workflow 'no_such_module_x:f':"
        " cannot import module 'no_such_module_x'" in out
    )
    assert "beside the config file" in out and "workflows_path:" in out
    assert (
        f"{line_of('syntax')}, rule 'syntax'" in out
        and f"{project / 'broken_syntax.py'}:2: syntax error" in out
    )
    assert f"{line_of('raising')}, rule 'raising'" in out
    assert f"raised KeyError at {project / 'raises.py'}:3" in out
    assert f"{line_of('dependency')}, rule 'dependency'" in out
    assert f"failed at {project / 'imports_missing.py'}:1" in out and "not_installed_anywhere_x" in out
    assert "module 'fine' has no function 'g'" in out
    assert "rule 'ok'" not in out

    as_json = check(dsn, config, "--json")
    assert as_json.returncode == 1
    failed = {c["name"] for c in json.loads(as_json.stdout)["checks"] if not c["ok"]}
    assert {
        f"workflow of rule {r}" for r in ("missing", "syntax", "raising", "dependency", "no_function")
    } <= failed


def test_check_imports_the_schedules_workflows_too(tmp_path: Path, dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    project = tmp_path / "project"
    project.mkdir()
    (project / "fine.py").write_text("async def f(ctx):\n    return 1\n")
    config = project / "listener.yaml"
    head = "rules:\n" + rule("ok", "fine:f") + "schedules:\n  - name: beat\n    every: 1m\n"
    config.write_text(head + "    workflow: fine:f\n")
    proc = check(dsn, config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "✓ workflows: 1 rule(s) and 1 schedule(s) import" in proc.stdout
    config.write_text(head + "    workflow: fine:nope\n")
    proc = check(dsn, config)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        f"✗ workflow of rule schedule/beat: {config}:7, rule 'schedule/beat': workflow 'fine:nope'"
        in proc.stdout
    )
