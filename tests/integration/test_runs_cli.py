"""`listener runs`, `runs show`, `retry` and `cancel` on a real state schema holding runs in known states."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import psycopg.sql
import pytest
from click.testing import CliRunner, Result

from listener.cli.main import main
from listener.pg.conninfo import asyncpg_params
from listener.queue import migrations, store
from listener.runtime import worker

Conn = psycopg.Connection[tuple[object, ...]]

SCHEMA = "ops"  # not the default: proves the commands read `state_schema:` from the config
DONE = "orders_paid/0/1A2B3C4/0"
DEAD = "orders_mail/0/1A2B400/0"
PENDING = "users_new/0/1A2B500/0"
RUNNING = "users_new/0/1A2B600/0"
LIST_KEYS = [
    "id",
    "event_key",
    "generation",
    "rule",
    "workflow",
    "status",
    "attempt",
    "failures",
    "created_at",
    "started_at",
    "finished_at",
    "duration_s",
    "last_error",
]
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "workflows/mail.py", line 12, in notify\n'
    "    smtp.send(message)\n"
    "ConnectionError: smtp.example.com refused\n"
)


@dataclass
class State:
    dsn: str
    config: Path
    sql: Conn

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(
            main, ["--dsn", self.dsn, "-c", str(self.config), *args], env={"COLUMNS": "250"}
        )

    def run(self, run_id: str) -> dict[str, Any]:
        cur = self.sql.cursor(row_factory=psycopg.rows.dict_row)
        row = cur.execute(f"SELECT * FROM {SCHEMA}.runs WHERE id = %s", [run_id]).fetchone()
        assert row is not None, run_id
        return row

    def ids(self) -> list[str]:
        return [str(r[0]) for r in self.sql.execute(f"SELECT id FROM {SCHEMA}.runs ORDER BY seq").fetchall()]


def _attempt(sql: Conn, run_id: str, attempt: int, worker: str, **more: Any) -> None:
    """An attempts row; its ``workflow`` column (used by flow control) is filled when the schema has it."""
    columns = {
        str(c)
        for (c,) in sql.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
            " AND table_name = 'attempts'",
            [SCHEMA],
        ).fetchall()
    }
    row = {"run_id": run_id, "attempt": attempt, "worker": worker, **more}
    if "workflow" in columns:
        row["workflow"] = sql.execute(
            f"SELECT workflow FROM {SCHEMA}.runs WHERE id = %s", [run_id]
        ).fetchone()[0]  # type: ignore[index]
    sql.execute(
        psycopg.sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            psycopg.sql.Identifier(SCHEMA, "attempts"),
            psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, row)),
            psycopg.sql.SQL(", ").join(psycopg.sql.Placeholder() * len(row)),
        ),
        list(row.values()),
    )


def _event(sql: Conn, key: str, rule: str, workflow: str, lsn: str, new: dict[str, Any]) -> None:
    sql.execute(
        f"INSERT INTO {SCHEMA}.events (idempotency_key, source, rule, workflow, op, table_name, lsn,"
        " commit_lsn, xid, commit_time, payload)"
        " VALUES (%s, 'cdc', %s, %s, 'insert', 'public.orders', %s, %s, 750,"
        " '2025-03-01 12:00:00+00', %s)",
        [key, rule, workflow, lsn, lsn, json.dumps({"new": new, "old": None})],
    )


@pytest.fixture
def state(dsn: str, sql: Conn, tmp_path: Path) -> Iterator[State]:
    """A state schema holding a done, a dead, a pending and a running run (created in that order)."""
    config = tmp_path / "listener.yaml"
    config.write_text(f"state_schema: {SCHEMA}\nrules: []\n")
    migrations.migrate(sql, SCHEMA)
    _event(sql, DONE, "orders_paid", "workflows.billing:charge", "0/1A2B3C4", {"id": 1, "total": 42})
    _event(sql, DEAD, "orders_mail", "workflows.mail:notify", "0/1A2B400", {"id": 2})
    _event(sql, PENDING, "users_new", "listener_examples.onboarding:welcome", "0/1A2B500", {"id": 3})
    _event(sql, RUNNING, "users_new", "listener_examples.onboarding:welcome", "0/1A2B600", {"id": 4})
    sql.execute(f"SET search_path TO {SCHEMA}")
    # done: one attempt, two recorded steps, 2.5 s from start to finish
    sql.execute(
        "INSERT INTO runs (id, event_key, workflow, status, attempt, created_at, started_at, finished_at)"
        " VALUES (%s, %s, 'workflows.billing:charge', 'done', 1, '2025-03-01 12:00:01+00',"
        " '2025-03-01 12:00:02+00', '2025-03-01 12:00:04.5+00')",
        [DONE, DONE],
    )
    sql.execute(
        "INSERT INTO steps (run_id, name, attempt, result, started_at, finished_at) VALUES"
        " (%s, 'charge', 1, '{\"charge_id\": \"ch_123\"}', '2025-03-01 12:00:02.1+00',"
        "  '2025-03-01 12:00:03.1+00'),"
        " (%s, 'receipt', 1, '\"sent\"', '2025-03-01 12:00:03.2+00', '2025-03-01 12:00:04.4+00')",
        [DONE, DONE],
    )
    _attempt(
        sql,
        DONE,
        1,
        "host-a:100:abc",
        started_at=datetime(2025, 3, 1, 12, 0, 2, tzinfo=UTC),
        finished_at=datetime(2025, 3, 1, 12, 0, 4, 500000, tzinfo=UTC),
        outcome="done",
    )
    # dead: three failed attempts, the last error and its traceback kept
    sql.execute(
        "INSERT INTO runs (id, event_key, workflow, status, attempt, failures, last_error, traceback,"
        " created_at, started_at, finished_at) VALUES (%s, %s, 'workflows.mail:notify', 'dead', 3, 3,"
        " 'ConnectionError: smtp.example.com refused', %s, '2025-03-01 12:01:00+00',"
        " '2025-03-01 12:01:00+00', '2025-03-01 12:01:30+00')",
        [DEAD, DEAD, TRACEBACK],
    )
    for n, outcome, error in [
        (1, "failed", "TimeoutError: smtp.example.com timed out"),
        (2, "failed", "ConnectionError: smtp.example.com reset"),
        (3, "dead", "ConnectionError: smtp.example.com refused"),
    ]:
        start = datetime(2025, 3, 1, 12, 1, 0, tzinfo=UTC) + timedelta(seconds=10 * (n - 1))
        _attempt(
            sql,
            DEAD,
            n,
            "host-b:200:def",
            started_at=start,
            finished_at=start + timedelta(seconds=5),
            outcome=outcome,
            error=error,
        )
    # pending: never claimed
    sql.execute(
        "INSERT INTO runs (id, event_key, workflow) VALUES (%s, %s, 'listener_examples.onboarding:welcome')",
        [PENDING, PENDING],
    )
    # running: claimed by a worker whose lease is current
    sql.execute(
        "INSERT INTO runs (id, event_key, workflow, status, attempt, lease_owner, lease_expires,"
        " started_at) VALUES (%s, %s, 'listener_examples.onboarding:welcome', 'running', 1, 'host-c:300:aaa',"
        " now() + interval '30 s', now())",
        [RUNNING, RUNNING],
    )
    _attempt(sql, RUNNING, 1, "host-c:300:aaa")
    sql.execute("RESET search_path")
    yield State(dsn, config, sql)


def local(hour: int, minute: int, second: int) -> str:
    """2025-03-01 at that UTC time, as people see it: in the local time zone."""
    return datetime(2025, 3, 1, hour, minute, second, tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def json_lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


# ---------------------------------------------------------------------------------------------------------
# listener runs


def test_runs_lists_newest_first_as_json_lines_with_stable_keys(state: State) -> None:
    rows = json_lines(state.cli("runs", "--json"))
    assert [r["id"] for r in rows] == [RUNNING, PENDING, DEAD, DONE]
    assert all(list(r) == LIST_KEYS for r in rows)
    done = rows[3]
    assert done == {
        "id": DONE,
        "event_key": DONE,
        "generation": 0,
        "rule": "orders_paid",
        "workflow": "workflows.billing:charge",
        "status": "done",
        "attempt": 1,
        "failures": 0,
        "created_at": done["created_at"],
        "started_at": done["started_at"],
        "finished_at": done["finished_at"],
        "duration_s": 2.5,
        "last_error": None,
    }
    # ISO 8601 in UTC, whatever the time zones of server and client
    assert (done["created_at"], done["started_at"], done["finished_at"]) == (
        "2025-03-01T12:00:01+00:00",
        "2025-03-01T12:00:02+00:00",
        "2025-03-01T12:00:04.500000+00:00",
    )
    dead = rows[2]
    assert (dead["status"], dead["attempt"], dead["failures"], dead["duration_s"]) == ("dead", 3, 3, 30.0)
    assert dead["last_error"] == "ConnectionError: smtp.example.com refused"
    pending = rows[1]
    assert (pending["status"], pending["started_at"], pending["duration_s"]) == ("pending", None, None)


def test_runs_filters_by_status_workflow_rule_and_limit(state: State) -> None:
    def ids(*args: str) -> list[str]:
        return [r["id"] for r in json_lines(state.cli("runs", "--json", *args))]

    assert ids("--status", "dead", "--status", "pending") == [PENDING, DEAD]
    assert ids("--status", "done") == [DONE]
    assert ids("--status", "cancelled") == []
    assert ids("--workflow", "listener_examples.onboarding:welcome") == [RUNNING, PENDING]
    assert ids("--rule", "orders_mail") == [DEAD]
    assert ids("--rule", "users_new", "--status", "running") == [RUNNING]
    assert ids("--limit", "2") == [RUNNING, PENDING]
    bad = state.cli("runs", "--status", "failed")
    assert bad.exit_code == 2 and "'failed' is not one of" in bad.stderr


def test_runs_table_for_people(state: State) -> None:
    result = state.cli("runs")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "id" in lines[1] and "status" in lines[1] and "last error" in lines[1]
    done_line = next(line for line in lines if DONE in line)
    assert "workflows.billing:charge" in done_line and " done " in done_line and "2.5s" in done_line
    dead_line = next(line for line in lines if DEAD in line)
    assert "ConnectionError: smtp.example.com refused" in dead_line and "30.0s" in dead_line
    assert "4 run(s), newest first" in result.stdout
    limited = state.cli("runs", "--limit", "1")
    assert RUNNING in limited.stdout and DONE not in limited.stdout
    assert "more may exist: raise --limit (now 1)" in limited.stdout
    assert state.cli("runs", "--status", "cancelled").stdout == "no runs match\n"


# ---------------------------------------------------------------------------------------------------------
# listener runs show


def test_show_for_people_has_event_steps_attempts_and_traceback(state: State) -> None:
    done = state.cli("runs", "show", DONE)
    assert done.exit_code == 0, done.output
    out = done.stdout
    assert out.startswith(f"run {DONE}  done\n")
    assert "workflows.billing:charge" in out and "orders_paid (cdc)" in out and "insert public.orders" in out
    assert "0/1A2B3C4 (commit 0/1A2B3C4, xid 750)" in out
    assert '{"id": 1, "total": 42}' in out
    assert "steps (2)" in out
    charge = next(line for line in out.splitlines() if "charge " in line and "ch_123" in line)
    assert '{"charge_id": "ch_123"}' in charge and "1.0s" in charge
    receipt = next(line for line in out.splitlines() if "receipt" in line)
    assert '"sent"' in receipt and "1.2s" in receipt
    assert "attempts (1)" in out and "host-a:100:abc" in out
    assert "last error" not in out

    dead = state.cli("runs", "show", DEAD)
    assert dead.exit_code == 0, dead.output
    out = dead.stdout
    assert re.search(r"^attempt +3 \(3 failed\)", out, re.M)
    assert "steps: none recorded" in out and "attempts (3)" in out
    attempt_lines = [line for line in out.splitlines() if "host-b:200:def" in line]
    assert len(attempt_lines) == 3
    assert "failed" in attempt_lines[0] and "TimeoutError: smtp.example.com timed out" in attempt_lines[0]
    assert "dead" in attempt_lines[2] and "5.0s" in attempt_lines[2]
    assert "last error: ConnectionError: smtp.example.com refused" in out
    assert 'File "workflows/mail.py", line 12, in notify' in out

    running = state.cli("runs", "show", RUNNING)
    assert re.search(r"^lease +host-c:300:aaa until 20", running.stdout, re.M)
    assert "so far" in running.stdout
    assert next(line for line in running.stdout.splitlines() if "host-c:300:aaa" in line and "1 " in line)


def test_show_json_has_everything(state: State) -> None:
    result = state.cli("runs", "show", DEAD, "--json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert list(d)[: len(LIST_KEYS)] == LIST_KEYS
    assert (d["id"], d["status"], d["attempt"], d["failures"]) == (DEAD, "dead", 3, 3)
    assert d["traceback"] == TRACEBACK and d["lease_owner"] is None
    assert d["event"]["rule"] == "orders_mail" and d["event"]["payload"] == {"new": {"id": 2}, "old": None}
    assert d["event"]["lsn"] == "0/1A2B400" and d["event"]["xid"] == 750
    assert d["steps"] == []
    assert [(a["attempt"], a["outcome"], a["error"], a["duration_s"]) for a in d["attempts"]] == [
        (1, "failed", "TimeoutError: smtp.example.com timed out", 5.0),
        (2, "failed", "ConnectionError: smtp.example.com reset", 5.0),
        (3, "dead", "ConnectionError: smtp.example.com refused", 5.0),
    ]
    assert d["generations"] == [{"id": DEAD, "generation": 0, "status": "dead"}]

    steps = json.loads(state.cli("runs", "show", DONE, "--json").stdout)["steps"]
    assert [(s["name"], s["attempt"], s["result"], s["duration_s"]) for s in steps] == [
        ("charge", 1, {"charge_id": "ch_123"}, 1.0),
        ("receipt", 1, "sent", 1.2),
    ]


def test_unknown_run_exits_2_with_a_hint(state: State) -> None:
    for args in (["runs", "show", "nope"], ["retry", "nope"], ["cancel", "nope"]):
        result = state.cli(*args)
        assert result.exit_code == 2, args
        assert "error: no such run: 'nope'" in result.stderr
        assert "fix: `listener runs` lists the runs" in result.stderr


@pytest.mark.bare_database
def test_commands_before_init_say_so(dsn: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--dsn", dsn, "runs"])
    assert result.exit_code == 2
    assert "the state schema 'listener' does not exist" in result.stderr and "listener init" in result.stderr


def test_real_entry_point(state: State) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "listener", "--dsn", state.dsn, "-c", str(state.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).parents[2],
        )

    listed = cli("runs", "--json", "--status", "dead")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [DEAD]
    missing = cli("runs", "show", "orders_paid/0/0/9")
    assert missing.returncode == 2 and "no such run: 'orders_paid/0/0/9'" in missing.stderr
    assert "Traceback" not in missing.stderr


# ---------------------------------------------------------------------------------------------------------
# listener retry


def test_retry_dead_resumes_the_same_run_keeping_its_steps(state: State) -> None:
    steps_before = state.sql.execute(
        f"SELECT count(*) FROM {SCHEMA}.steps WHERE run_id = %s", [DEAD]
    ).fetchone()
    state.sql.execute(f"LISTEN {store.notify_channel(SCHEMA)}")
    result = state.cli("retry", DEAD)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{DEAD}\n"
    assert f"run {DEAD} was dead, is pending again (a new attempt; recorded steps kept)" in result.stderr
    assert [n.channel for n in state.sql.notifies(timeout=5, stop_after=1)] == ["ops_events"]
    run = state.run(DEAD)
    assert (run["status"], run["failures"], run["generation"], run["finished_at"]) == ("pending", 0, 0, None)
    assert run["attempt"] == 3  # the next claim makes attempt 4: a new attempt, fenced as any other
    after = state.sql.execute(f"SELECT count(*) FROM {SCHEMA}.steps WHERE run_id = %s", [DEAD]).fetchone()
    assert after == steps_before
    assert state.ids() == [DONE, DEAD, PENDING, RUNNING]  # no new run

    # pending again: nothing to retry until it is dead or cancelled
    again = state.cli("retry", DEAD)
    assert again.exit_code == 2 and f"run '{DEAD}' is pending" in again.stderr


def test_rerun_dead_makes_a_new_generation_from_scratch(state: State) -> None:
    before = state.run(DEAD)
    result = state.cli("retry", "--rerun", DEAD)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{DEAD}#1\n"
    assert f"run {DEAD}#1 (generation 1) is pending; run {DEAD} stays dead" in result.stderr
    new = state.run(f"{DEAD}#1")
    assert (new["event_key"], new["generation"], new["workflow"]) == (DEAD, 1, "workflows.mail:notify")
    assert (new["status"], new["attempt"], new["failures"], new["last_error"]) == ("pending", 0, 0, None)
    assert new["started_at"] is None and new["finished_at"] is None
    assert state.run(DEAD) == before  # history stays as it was
    assert state.ids()[-1] == f"{DEAD}#1"

    # the new generation is live: the event is not run twice at once
    again = state.cli("retry", "--rerun", DEAD)
    assert again.exit_code == 2
    assert f"run '{DEAD}#1' of the same event is already pending" in again.stderr
    gens = json.loads(state.cli("runs", "show", DEAD, "--json").stdout)["generations"]
    assert [(g["id"], g["status"]) for g in gens] == [(DEAD, "dead"), (f"{DEAD}#1", "pending")]

    # cancelled, it can be rerun again: generation 2
    assert state.cli("cancel", f"{DEAD}#1").exit_code == 0
    third = state.cli("retry", "--rerun", f"{DEAD}#1")
    assert third.exit_code == 0, third.output
    assert third.stdout == f"{DEAD}#2\n"
    assert state.run(f"{DEAD}#2")["generation"] == 2


def test_retry_done_needs_rerun(state: State) -> None:
    refused = state.cli("retry", DONE)
    assert refused.exit_code == 2
    assert f"will not retry run '{DONE}': it is done, and an event runs once per idempotency key" in (
        refused.stderr
    )
    assert f"fix: to run it again on purpose, as a new generation: listener retry --rerun {DONE}" in (
        refused.stderr
    )
    assert f"{DONE}#1" not in state.ids()

    result = state.cli("retry", "--rerun", DONE)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{DONE}#1\n"
    assert state.run(f"{DONE}#1")["status"] == "pending"
    assert state.run(DONE)["status"] == "done"


def test_retry_of_an_event_that_already_succeeded_needs_rerun(state: State) -> None:
    """A dead generation 0 whose retry (generation 1) is done: retrying generation 0 again is a rerun."""
    state.sql.execute(
        f"INSERT INTO {SCHEMA}.runs (id, event_key, generation, workflow, status)"
        " VALUES (%s, %s, 1, 'workflows.mail:notify', 'done')",
        [f"{DEAD}#1", DEAD],
    )
    refused = state.cli("retry", DEAD)
    assert refused.exit_code == 2
    assert f"run '{DEAD}#1' of the same event is done" in refused.stderr
    assert state.cli("retry", "--rerun", DEAD).stdout == f"{DEAD}#2\n"


def test_retry_refuses_pending_and_running_runs(state: State) -> None:
    pending = state.cli("retry", PENDING)
    assert pending.exit_code == 2
    assert f"run '{PENDING}' is pending: a worker will run it" in pending.stderr
    running = state.cli("retry", RUNNING)
    assert running.exit_code == 2
    assert f"run '{RUNNING}' is running (attempt 1 on host-c:300:aaa)" in running.stderr
    assert f"listener cancel {RUNNING}" in running.stderr
    assert state.ids() == [DONE, DEAD, PENDING, RUNNING]


def test_retry_inherits_what_the_run_was_made_with(state: State) -> None:
    """Columns that are not a run's own progress (flow-control settings, say) carry over to the retry."""
    state.sql.execute(f"ALTER TABLE {SCHEMA}.runs ADD COLUMN tenant_tier int NOT NULL DEFAULT 0")
    state.sql.execute(f"UPDATE {SCHEMA}.runs SET priority = 7, tenant_tier = 3 WHERE id = %s", [DEAD])
    assert state.cli("retry", "--rerun", DEAD).exit_code == 0
    assert state.run(f"{DEAD}#1")["priority"] == 7  # a rule's `priority:`
    assert state.run(f"{DEAD}#1")["tenant_tier"] == 3  # and a column added later


# ---------------------------------------------------------------------------------------------------------
# listener cancel


def test_cancel_pending(state: State) -> None:
    result = state.cli("cancel", PENDING)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"cancelled run {PENDING} (was pending)\n"
    run = state.run(PENDING)
    assert run["status"] == "cancelled" and run["finished_at"] is not None
    again = state.cli("cancel", PENDING)
    assert again.exit_code == 2 and f"run '{PENDING}' is already cancelled" in again.stderr


def test_cancel_refuses_finished_runs(state: State) -> None:
    done = state.cli("cancel", DONE)
    assert done.exit_code == 2
    assert f"run '{DONE}' is done: there is nothing to cancel" in done.stderr
    dead = state.cli("cancel", DEAD)
    assert dead.exit_code == 2
    assert f"run '{DEAD}' is dead (after 3 failed attempt(s))" in dead.stderr
    assert state.run(DONE)["status"] == "done" and state.run(DEAD)["status"] == "dead"


async def test_cancel_running_fences_its_worker(state: State) -> None:
    result = state.cli("cancel", RUNNING)
    assert result.exit_code == 0, result.output
    assert "cancelled run" in result.stdout and "was running attempt 1" in result.stdout
    run = state.run(RUNNING)
    assert (run["status"], run["lease_owner"], run["lease_expires"]) == ("cancelled", None, None)
    attempt = state.sql.execute(
        f"SELECT outcome, finished_at IS NOT NULL FROM {SCHEMA}.attempts WHERE run_id = %s", [RUNNING]
    ).fetchone()
    assert attempt == ("cancelled", True)
    # the worker still executing attempt 1 can neither complete nor fail it now
    conn = await asyncpg.connect(**asyncpg_params(state.dsn, {"search_path": SCHEMA}))
    try:
        assert await conn.fetch(worker._DONE, [RUNNING], [1]) == []
        assert await conn.fetchval(worker._FAILED, RUNNING, 1, 5, 0.0, "boom", "tb") is None
    finally:
        await conn.close()
    run = state.run(RUNNING)
    assert (run["status"], run["last_error"]) == ("cancelled", None)


def test_a_narrow_terminal_keeps_what_matters(state: State) -> None:
    def narrow(*args: str) -> str:
        result = CliRunner().invoke(
            main, ["--dsn", state.dsn, "-c", str(state.config), *args], env={"COLUMNS": "80"}
        )
        assert result.exit_code == 0, result.output
        assert all(len(line) <= 80 for line in result.stdout.splitlines())
        return result.stdout

    listed = narrow("runs")
    assert "3 (3 failed)" in listed and "30.0s" in listed and "times in a terminal of 150+ columns" in listed
    shown = narrow("runs", "show", DEAD)
    assert f"  3  dead  host-b:200:def  {local(12, 1, 20)}  5.0s\n" in shown
    assert "     TimeoutError: smtp.example.com timed out\n" in shown
    steps = narrow("runs", "show", DONE)
    assert f'  charge  attempt 1  {local(12, 0, 2)}  1.0s  {{"charge_id": "ch_123"}}\n' in steps
