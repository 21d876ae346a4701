"""Every mistake in the rule language is reported with the rule, file:line and a fix (real catalog)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from listener.errors import ConfigError
from listener.rules.catalog import read_tables
from listener.rules.compile import RuleSet
from listener.rules.config import load_config

Conn = psycopg.Connection[tuple[object, ...]]
ROOT = Path(__file__).parents[2]

HEAD = """\
slot: listener_test
publication: listener_test
rules:
  - name: ok
    table: contracts
    on: [insert]
    workflow: listener_examples.onboarding:welcome
  - name: bad
    table: contracts
    on: [insert, update]
    workflow: listener_examples.onboarding:welcome
"""


@pytest.fixture
def contracts(sql: Conn) -> Conn:
    sql.execute(
        "CREATE TABLE contracts (id int PRIMARY KEY, status text, amount numeric(12,2), doc jsonb,"
        " signed_at timestamptz)"
    )
    return sql


def compile_error(sql: Conn, tmp_path: Path, extra: str) -> tuple[ConfigError, str, Path]:
    text = HEAD + textwrap.indent(textwrap.dedent(extra), "    ")
    path = tmp_path / "listener.yaml"
    path.write_text(text)
    config = load_config(path)
    tables, collation = read_tables(sql, ["public.contracts"])
    with pytest.raises(ConfigError) as caught:
        RuleSet.from_config(config, tables, collation)
    return caught.value, text, path


@pytest.mark.parametrize(
    ("extra", "key", "says", "fix"),
    [
        ("when: new.stauts = 'signed'\n", "when", 'unknown column "stauts"', "new.status"),
        ("when: new.id = 'abc'\n", "when", "'abc'", ""),
        ("when: new.status > 5\n", "when", "text", ""),
        ("when: new.status\n", "when", "boolean", "compare it"),
        ("when: new.id IN (SELECT 1)\n", "when", "subquer", ""),
        ("when: count(new.id) > 1\n", "when", "count", ""),
        ("when: random() > 0.5\n", "when", "random", ""),
        ("when: new.status ~ 'x'\n", "when", "~", ""),
        ("when: new.status = 'a' AND\n", "when", "", ""),
        ("when: old.status = 'draft'\n", "when", "REPLICA IDENTITY", "REPLICA IDENTITY FULL"),
        ("changed: [stauts]\n", "changed", "no column 'stauts'", "status"),
        ("changed: [status]\n", "changed", "old value of 'status'", "REPLICA IDENTITY FULL"),
        ("payload: {was: old.amount}\n", "payload", "old value of 'amount'", "REPLICA IDENTITY FULL"),
        ("payload: [id, amout]\n", "payload", "no column 'amout'", "amount"),
    ],
)
def test_rule_mistakes_name_rule_line_and_fix(
    contracts: Conn, tmp_path: Path, extra: str, key: str, says: str, fix: str
) -> None:
    error, text, path = compile_error(contracts, tmp_path, extra)
    assert error.rule == "bad"
    assert error.file == str(path)
    assert error.line == next(
        n for n, line in enumerate(text.splitlines(), 1) if line.strip().startswith(key)
    )
    assert says in str(error)
    assert error.hint, "every mistake comes with a fix"
    assert fix in error.hint


def test_check_reports_each_bad_rule_and_still_checks_the_others(contracts: Conn, tmp_path: Path) -> None:
    dsn = contracts.info.dsn
    text = HEAD + "    when: new.stauts = 'x'\n  - name: bad2\n    table: nope\n    on: [insert]\n" \
        "    when: new.x > 1\n    workflow: listener_examples.onboarding:welcome\n"  # fmt: skip
    path = tmp_path / "listener.yaml"
    path.write_text(text)
    env = {**os.environ, "LISTENER_DSN": dsn, "LISTENER_CONFIG": str(path)}
    out = subprocess.run(
        [sys.executable, "-m", "listener", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "✓ rule ok: insert on public.contracts" in out.stdout
    assert "✗ rule bad:" in out.stdout and 'unknown column "stauts"' in out.stdout
    assert f"{path}:" in out.stdout
    assert "✗ rule bad2:" in out.stdout and "does not exist" in out.stdout


def run_rules_test(dsn: str, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LISTENER_DSN": dsn, "LISTENER_CONFIG": str(path)}
    return subprocess.run(
        [sys.executable, "-m", "listener", "rules", "test", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_rules_test_evaluates_a_sample_row(contracts: Conn, tmp_path: Path) -> None:
    contracts.execute("ALTER TABLE contracts REPLICA IDENTITY FULL")
    path = tmp_path / "listener.yaml"
    path.write_text(
        HEAD.replace("on: [insert, update]", "on: [update]")
        + "    when: new.status = 'signed' AND old.status IS DISTINCT FROM 'signed' AND new.amount > 100\n"
    )
    dsn = contracts.info.dsn
    new = '{"id": 1, "status": "signed", "amount": 250}'
    signed = run_rules_test(dsn, path, "bad", "--new", new, "--old", '{"id": 1, "status": "draft"}')
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.startswith("rule bad: update matches")
    again = run_rules_test(dsn, path, "bad", "--new", new, "--old", '{"id": 1, "status": "signed"}')
    assert again.returncode == 1
    assert "does not match: when: is false" in again.stdout
    small = run_rules_test(
        dsn,
        path,
        "bad",
        "--new",
        '{"id": 1, "status": "signed", "amount": "12.5"}',
        "--old",
        '{"status": null}',
    )
    assert small.returncode == 1 and "when: is false" in small.stdout
    missing = run_rules_test(
        dsn, path, "bad", "--new", '{"id": 1, "status": "signed", "amount": 250}', "--old", "{}"
    )
    assert missing.returncode == 1 and "when: needs 'old.status'; add it to the sample" in missing.stdout
    insert = run_rules_test(dsn, path, "bad", "--new", '{"id": 1}')
    assert insert.returncode == 1 and "`on:` has update, not insert" in insert.stdout
    unknown = run_rules_test(dsn, path, "nope", "--new", "{}")
    assert unknown.returncode != 0 and "no rule named 'nope'" in unknown.stderr
    bad_value = run_rules_test(dsn, path, "bad", "--new", '{"amount": "lots"}', "--old", "{}")
    assert bad_value.returncode != 0 and "is not a valid numeric" in bad_value.stderr
    bad_json = run_rules_test(dsn, path, "bad", "--new", "{oops")
    assert bad_json.returncode != 0 and "not JSON" in bad_json.stderr


def test_rules_test_reads_infinite_and_bc_timestamps(contracts: Conn, tmp_path: Path) -> None:
    """`rules test` once said such a row "fails as in PostgreSQL"; PostgreSQL evaluates it."""
    path = tmp_path / "listener.yaml"
    path.write_text(
        HEAD.replace("on: [insert, update]", "on: [insert]") + "    when: new.signed_at > '2000-01-01'\n"
    )
    dsn = contracts.info.dsn
    later = run_rules_test(dsn, path, "bad", "--new", '{"id": 1, "signed_at": "infinity"}')
    assert later.returncode == 0, later.stdout + later.stderr
    assert later.stdout.startswith("rule bad: insert matches") and '"signed_at": "infinity"' in later.stdout
    bc = run_rules_test(dsn, path, "bad", "--new", '{"id": 1, "signed_at": "0044-03-15 12:00:00 BC"}')
    assert bc.returncode == 1 and "does not match: when: is false" in bc.stdout, bc.stdout + bc.stderr
