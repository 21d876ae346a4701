"""CLI conventions (issue 10.3): global options after the command too, --version, documented exit codes
(0 ok, 1 problems found, 2 usage or configuration error, 3 runtime failure), `listener check --json`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from listener import install as setup
from listener.cli.main import main

OK_RULE = "rules:\n  - name: r1\n    table: items\n    on: insert\n    workflow: m:f\n"
MISSING_TABLE = "rules:\n  - name: r1\n    table: missing_table\n    on: insert\n    workflow: m:f\n"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "listener", *args], capture_output=True, text=True, timeout=120
    )


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == "listener 0.1.0"


def test_global_options_after_the_command(tmp_path: Path, dsn: str, sql: object) -> None:
    """`listener check --config x.yaml --dsn ...` is the same as `listener -c x.yaml --dsn ... check`."""
    config = tmp_path / "x.yaml"
    config.write_text(MISSING_TABLE)
    before = CliRunner().invoke(main, ["-c", str(config), "--dsn", dsn, "check"])
    after = CliRunner().invoke(main, ["check", "--config", str(config), "--dsn", dsn, "-v"])
    assert after.exit_code == before.exit_code == 1, after.output
    assert after.stdout == before.stdout and f"1 rule(s), {config}" in after.stdout
    # after the command, it wins over the one before: here the state DSN given last
    nowhere = "postgresql://nobody@127.0.0.1:1/nowhere"
    result = CliRunner().invoke(main, ["--dsn", nowhere, "-c", str(config), "check", "--dsn", dsn])
    assert result.exit_code == 1, result.output
    typo = tmp_path / "typo.yaml"
    typo.write_text(OK_RULE.replace("table:", "tabel:"))
    sub = CliRunner().invoke(main, ["--dsn", dsn, "runs", "show", "nope", "-c", str(typo)])  # a subgroup's
    assert sub.exit_code == 2 and f"{typo}:3" in sub.stderr, sub.output


def test_exit_codes(tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    good, bad, typo = tmp_path / "good.yaml", tmp_path / "bad.yaml", tmp_path / "typo.yaml"
    good.write_text("rules: []\n")
    bad.write_text(MISSING_TABLE)
    typo.write_text(OK_RULE.replace("table:", "tabel:"))
    assert _cli("--dsn", dsn, "-c", str(good), "check").returncode == 0
    assert _cli("--dsn", dsn, "-c", str(bad), "check").returncode == 1  # problems found
    assert _cli("--dsn", dsn, "-c", str(typo), "check").returncode == 2  # configuration error
    assert _cli("check", "--no-such-option").returncode == 2  # usage error
    unreachable = _cli("--dsn", "postgresql://nobody@127.0.0.1:1/x", "-c", str(good), "check")
    assert unreachable.returncode == 3 and "cannot connect" in unreachable.stderr  # runtime failure

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(setup, "check", crash)
    result = CliRunner().invoke(main, ["--dsn", dsn, "-c", str(good), "check"])
    assert result.exit_code == 3 and "RuntimeError: a bug" in result.stderr


def test_check_json(tmp_path: Path, dsn: str) -> None:
    config = tmp_path / "listener.yaml"
    config.write_text(MISSING_TABLE)
    result = CliRunner().invoke(main, ["--dsn", dsn, "-c", str(config), "check", "--json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["config"] == str(config) and doc["rules"] == 1 and doc["ok"] is False
    failed = [c for c in doc["checks"] if not c["ok"] and c["name"].startswith("table")]
    assert [c["name"] for c in failed] == ["table public.missing_table"]
    assert failed[0]["fix"].startswith("create the table") and set(failed[0]) == {
        "name", "ok", "warning", "detail", "fix"
    }  # fmt: skip
    config.write_text("rules: []\n")
    result = CliRunner().invoke(main, ["--dsn", dsn, "-c", str(config), "check", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"] is True
