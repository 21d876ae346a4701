"""The embedded server for development (issue 10.4): `listener db start | status | stop | psql`, a stable
port per data directory, read-only commands that never create a cluster, the demo's own state schema."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from listener.pg.embedded import stable_port
from listener.rules.config import parse_config
from tests.support import reachable_tmpdir


@pytest.fixture
def workdir() -> Iterator[Path]:
    with reachable_tmpdir("listener-test-db-") as path:
        try:
            yield path
        finally:
            if (path / ".listener" / "pgdata").exists():
                cli(path, "db", "stop")


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTENER_") or k == "LISTENER_PG_BIN"}
    return subprocess.run(
        [sys.executable, "-m", "listener", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env=env,
    )


def test_db_start_status_psql_stop_with_a_stable_port(workdir: Path) -> None:
    data = workdir / ".listener" / "pgdata"
    started = cli(workdir, "db", "start")
    assert started.returncode == 0, started.stderr
    dsn = started.stdout.strip()
    port = int(conninfo_to_dict(dsn)["port"])  # type: ignore[arg-type]
    assert port == stable_port(data) or port == int((data / "listener.port").read_text())
    status = cli(workdir, "db", "status")
    assert status.returncode == 0 and status.stdout.strip() == f"running ({data}): {dsn}"
    psql = cli(workdir, "db", "psql", "--", "-At", "-c", "SELECT 40 + 2")
    assert psql.returncode == 0 and psql.stdout.strip() == "42", psql.stderr
    assert cli(workdir, "db", "stop").stdout.strip() == "stopped"
    stopped = cli(workdir, "db", "status")
    assert stopped.returncode == 1 and stopped.stdout.startswith("not running")
    assert cli(workdir, "db", "stop").stdout.strip() == "not running"
    again = cli(workdir, "db", "start")
    assert again.returncode == 0 and again.stdout.strip() == dsn  # the printed DSN keeps working


@pytest.mark.parametrize("command", [["runs"], ["status"], ["runs", "show", "x"], ["backfill", "status"]])
def test_read_only_commands_never_create_a_cluster(workdir: Path, command: list[str]) -> None:
    (workdir / "listener.yaml").write_text("rules: []\n")
    result = cli(workdir, *command)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no embedded server in" in result.stderr and "--dsn" in result.stderr
    assert not (workdir / ".listener").exists()


def test_the_demo_uses_its_own_state_schema() -> None:
    text = resources.files("listener_examples").joinpath("demo.yaml").read_text()
    config = parse_config(text, filename="demo.yaml")
    assert (config.state_schema, config.slot) == ("listener_demo", "listener_demo")
