"""Every way user code can fail ends its run, with real PostgreSQL: unstorable or unprintable errors, a
user-raised CancelledError, sys.exit(), plain functions that block, and runs that never end (issue 9,
point 8).  The worker keeps going through all of them."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from listener.defaults import ERROR_CHARS, TRACEBACK_CHARS
from listener.rules.config import parse_config
from listener.service import make_worker
from tests import sample_workflows
from tests.runtime_support import calls, enqueue, prepare, run_row, running_worker, step_names, wait_until

Conn = psycopg.Connection[tuple[object, ...]]
WF = "tests.sample_workflows"


@pytest.mark.parametrize(
    ("workflow", "error"),
    [
        ("nul_in_error", "ValueError: bad  byte, bad \\udcff char, xxx"),
        ("unprintable_error", "Unprintable: <str() of the exception raised RuntimeError"),
        ("raises_cancelled", "CancelledError"),
        ("exits", "SystemExit: 3"),
    ],
)
async def test_any_exception_from_user_code_is_a_failed_attempt(
    dsn: str, sql: Conn, workflow: str, error: str
) -> None:
    """Each of these used to leave the run `running` for ever (the failure could not be recorded, or the
    worker's task died with it), or stopped the worker itself (sys.exit)."""
    prepare(sql)
    enqueue(sql, "bad", f"{WF}:{workflow}")
    async with running_worker(dsn) as worker:
        await wait_until(lambda: run_row(sql, "bad")["status"] == "dead", "the run to die")
        enqueue(sql, "after", f"{WF}:two_steps", {"id": 2, "text": "fine"})
        await wait_until(lambda: run_row(sql, "after")["status"] == "done", "the worker to keep going")
    row = run_row(sql, "bad")
    assert (row["attempt"], row["failures"]) == (2, 2)  # @workflow(max_attempts=2)
    assert row["last_error"].startswith(error)
    assert "\x00" not in row["last_error"] and "\x00" not in row["traceback"]
    assert len(row["last_error"]) <= ERROR_CHARS and len(row["traceback"]) <= TRACEBACK_CHARS
    assert "Traceback (most recent call last)" in row["traceback"]
    outcomes = sql.execute(
        "SELECT attempt, outcome, error FROM listener.attempts WHERE run_id = 'bad' ORDER BY 1"
    )
    assert [(a, o, e) for a, o, e in outcomes] == [
        (1, "failed", row["last_error"]),
        (2, "dead", row["last_error"]),
    ]
    assert worker.stats.dead == 1 and worker.stats.done == 1


@pytest.mark.parametrize("workflow", ["blocking", "blocking_step"])
async def test_a_plain_function_runs_in_a_thread_and_keeps_its_lease(
    dsn: str, sql: Conn, calls_file: str, workflow: str
) -> None:
    """A plain `def` (a workflow, or a step's function) that blocks does not block the event loop: other
    runs go on, the heartbeat renews its lease, and it runs once."""
    prepare(sql)
    sample_workflows.PLAIN_GATE.clear()
    enqueue(sql, "plain", f"{WF}:{workflow}")
    try:
        async with running_worker(dsn, lease_seconds=1.5) as worker:
            await wait_until(lambda: calls(calls_file) == ["blocking plain"], "the plain function to start")
            enqueue(sql, "async", f"{WF}:two_steps", {"id": 2, "text": "meanwhile"})
            await wait_until(lambda: run_row(sql, "async")["status"] == "done", "another run meanwhile")
            await asyncio.sleep(4.5)  # three leases: only the heartbeat keeps the run's
            sample_workflows.PLAIN_GATE.set()
            await wait_until(lambda: run_row(sql, "plain")["status"] == "done", "the plain run to finish")
    finally:
        sample_workflows.PLAIN_GATE.set()
    row = run_row(sql, "plain")
    assert (row["attempt"], row["failures"]) == (1, 0)
    assert calls(calls_file) == ["blocking plain", "llm async"]
    assert worker.stats.done == 2 and worker.stats.fenced == 0
    if workflow == "blocking_step":
        assert step_names(sql, "plain") == ["call"]


@pytest.mark.parametrize("workflow", ["hangs", "hangs_plain"])
async def test_a_run_without_a_timeout_of_its_own_gets_the_workers_default(
    dsn: str, sql: Conn, workflow: str
) -> None:
    prepare(sql)
    sample_workflows.PLAIN_GATE.clear()
    enqueue(sql, "hung", f"{WF}:{workflow}")
    enqueue(sql, "patient", f"{WF}:patient")  # @workflow(timeout=60) outlasts the default
    try:
        async with running_worker(dsn, run_timeout=0.3):
            await wait_until(lambda: run_row(sql, "hung")["status"] == "dead", "the hung run to time out")
            await wait_until(lambda: run_row(sql, "patient")["status"] == "done", "the patient run")
    finally:
        sample_workflows.PLAIN_GATE.set()  # frees the abandoned thread of hangs_plain
    assert run_row(sql, "hung")["last_error"] == "TimeoutError: run exceeded its timeout of 0.3s"


def test_the_default_run_timeout_comes_from_the_worker_settings() -> None:
    config = parse_config(
        "worker: {run_timeout_s: 120}\nrules: [{name: r, table: t, on: [insert], workflow: m:f}]"
    )
    assert make_worker(config, "dbname=x").run_timeout == 120
    default = parse_config("rules: [{name: r, table: t, on: [insert], workflow: m:f}]")
    assert make_worker(default, "dbname=x").run_timeout == 3600


async def test_an_expired_lease_counts_as_an_attempt(dsn: str, sql: Conn, calls_file: str) -> None:
    """A run whose worker keeps dying (simulated: its lease expired twice already) is dead at its next
    claim, after the workflow's max_attempts, instead of being retried for ever."""
    prepare(sql)
    enqueue(sql, "doomed", f"{WF}:two_steps")  # @workflow(max_attempts=3)
    sql.execute(
        "UPDATE listener.runs SET status = 'running', attempt = 3, failures = 2, lease_owner = 'gone:1:1',"
        " lease_expires = now() - interval '1 second' WHERE id = 'doomed'"
    )
    sql.execute(
        "INSERT INTO listener.attempts (run_id, attempt, workflow, worker)"
        " VALUES ('doomed', 3, 'w', 'gone:1:1')"
    )
    async with running_worker(dsn) as worker:
        await wait_until(lambda: run_row(sql, "doomed")["status"] == "dead", "the run to die")
    row = run_row(sql, "doomed")
    assert row["failures"] == 3
    assert "lease expired" in row["last_error"] and "gone:1:1" in row["last_error"]
    assert calls(calls_file) == []  # not run a fourth time
    assert worker.stats.dead == 1
    outcomes = sql.execute(
        "SELECT attempt, outcome FROM listener.attempts WHERE run_id = 'doomed' ORDER BY 1"
    ).fetchall()
    assert outcomes == [(3, "lease expired"), (4, "dead")]
