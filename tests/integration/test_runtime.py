"""The durable runtime with real PostgreSQL: one run per key, memoized steps, exactly-once transactional
effects, retries, dead runs, timeouts, and fencing of a worker that lost its lease (invariants 3-5)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import psycopg

from tests import sample_workflows
from tests.runtime_support import (
    calls,
    effects,
    enqueue,
    prepare,
    run_row,
    running_worker,
    step_names,
    wait_until,
)

Conn = psycopg.Connection[tuple[object, ...]]
WF = "tests.sample_workflows"


async def test_two_steps_run_once_and_the_write_commits_with_its_step(
    dsn: str, sql: Conn, calls_file: str
) -> None:
    prepare(sql)
    enqueue(sql, "k1", f"{WF}:two_steps", {"id": 1, "text": "hello"})
    enqueue(sql, "k1", f"{WF}:two_steps", {"id": 1, "text": "hello"})  # redelivered: nothing new
    async with running_worker(dsn) as worker:
        await wait_until(lambda: run_row(sql, "k1")["status"] == "done", "the run to finish")
    assert worker.stats.done == 1
    assert sql.execute("SELECT count(*) FROM listener.runs").fetchone() == (1,)
    assert step_names(sql, "k1") == ["llm", "save"]
    assert effects(sql) == [("k1", "summary of hello", "k1:save")]  # step key: stable, per step
    assert calls(calls_file) == ["llm k1"]
    row = run_row(sql, "k1")
    assert (row["attempt"], row["failures"], row["lease_owner"]) == (1, 0, None)


async def test_a_retry_returns_recorded_steps_without_calling_them(
    dsn: str, sql: Conn, calls_file: str
) -> None:
    prepare(sql)
    enqueue(sql, "k2", f"{WF}:fails_once_between_steps")
    async with running_worker(dsn):
        await wait_until(lambda: run_row(sql, "k2")["status"] == "done", "the retried run to finish")
    row = run_row(sql, "k2")
    assert (row["attempt"], row["failures"]) == (2, 1)
    assert calls(calls_file) == ["llm k2"]  # the LLM step ran once across both attempts
    assert effects(sql) == [("k2", "summary of x", "k2:save")]
    outcomes = sql.execute(
        "SELECT attempt, outcome FROM listener.attempts WHERE run_id = 'k2' ORDER BY 1"
    ).fetchall()
    assert outcomes == [(1, "failed"), (2, "done")]


async def test_a_failing_step_rolls_back_its_writes_and_its_record(dsn: str, sql: Conn) -> None:
    prepare(sql)
    enqueue(sql, "k3", f"{WF}:rolls_back")
    async with running_worker(dsn):
        await wait_until(lambda: run_row(sql, "k3")["status"] == "dead", "the run to die", timeout=60)
    assert effects(sql) == []
    assert step_names(sql, "k3") == []


async def test_a_poison_event_ends_dead_with_its_error_and_traceback(dsn: str, sql: Conn) -> None:
    prepare(sql)
    enqueue(sql, "k4", f"{WF}:poison", {"id": 4})
    enqueue(sql, "k5", f"{WF}:two_steps", {"id": 5, "text": "fine"})
    async with running_worker(dsn) as worker:
        await wait_until(lambda: run_row(sql, "k4")["status"] == "dead", "the poison run to die")
        await wait_until(lambda: run_row(sql, "k5")["status"] == "done", "the healthy run to finish")
    row = run_row(sql, "k4")
    assert row["failures"] == 2  # @workflow(max_attempts=2)
    assert row["last_error"] == "ValueError: cannot handle row {'id': 4}"
    assert "Traceback (most recent call last)" in row["traceback"] and "in poison" in row["traceback"]
    assert worker.stats.dead == 1 and worker.stats.done == 1  # the worker kept going


async def test_a_result_that_is_not_json_names_the_step(dsn: str, sql: Conn) -> None:
    prepare(sql)
    enqueue(sql, "k6", f"{WF}:not_json")
    async with running_worker(dsn):
        await wait_until(lambda: run_row(sql, "k6")["status"] == "dead", "the run to die")
    row = run_row(sql, "k6")
    assert (
        "step 'opaque' of workflow tests.sample_workflows:not_json returned a value that is not"
        in row["last_error"]
    )
    assert row["failures"] == 1  # deterministic: no pointless retries


async def test_a_result_too_deep_to_encode_names_the_step_and_dies_at_once(dsn: str, sql: Conn) -> None:
    prepare(sql)
    enqueue(sql, "d1", f"{WF}:too_deep_result")
    async with running_worker(dsn) as worker:
        await wait_until(lambda: run_row(sql, "d1")["status"] == "dead", "the run to die")
    row = run_row(sql, "d1")
    assert row["last_error"].startswith(
        "StepError: step 'deep' of workflow tests.sample_workflows:too_deep_result returned a value nested "
        "too deeply to encode as JSON: maximum recursion depth exceeded"
    )
    assert "fix: return a flatter result" in row["last_error"]
    assert row["failures"] == 1 and step_names(sql, "d1") == [] and worker.stats.dead == 1


async def test_a_result_jsonb_refuses_fails_its_step_not_the_steps_recorded_beside_it(
    dsn: str, sql: Conn
) -> None:
    prepare(sql)
    enqueue(sql, "u1", f"{WF}:unstorable_beside_good")
    enqueue(sql, "u2", f"{WF}:nul_in_result")
    async with running_worker(dsn) as worker:
        await wait_until(lambda: run_row(sql, "u1")["status"] == "dead", "run u1 to die")
        await wait_until(lambda: run_row(sql, "u2")["status"] == "dead", "run u2 to die")
    first, second = run_row(sql, "u1"), run_row(sql, "u2")
    # PostgreSQL's own refusal, named after the step; dead at once, as any retry would fail the same way
    assert first["last_error"].startswith(
        "StepError: step 'bad' of workflow tests.sample_workflows:unstorable_beside_good returned a value "
        "PostgreSQL cannot store as jsonb: "
    )
    assert "surrogate" in first["last_error"] and first["failures"] == 1
    assert step_names(sql, "u1") == ["good"]  # sent in the same batch, and recorded
    # NUL is refused before it is sent, with the fix
    assert second["last_error"] == (
        "StepError: step 'nul' of workflow tests.sample_workflows:nul_in_result returned a string holding "
        "the character NUL (\\u0000), which PostgreSQL's jsonb cannot store\n"
        "  fix: remove NUL characters from the step's result (text.replace('\\x00', ''))"
    )
    assert worker.stats.dead == 2


async def test_two_steps_of_one_name_at_once_are_refused(dsn: str, sql: Conn) -> None:
    prepare(sql)
    enqueue(sql, "t1", f"{WF}:same_step_twice_at_once")
    async with running_worker(dsn):
        await wait_until(lambda: run_row(sql, "t1")["status"] == "dead", "the run to die")
    assert run_row(sql, "t1")["last_error"].startswith(
        "StepError: step 'twin' started while a step of that name is running in the same run"
    )


def now(sql: Conn) -> datetime:
    row = sql.execute("SELECT now()").fetchone()
    assert row is not None and isinstance(row[0], datetime)
    return row[0]


async def test_a_step_holding_its_transaction_keeps_its_lease_and_stalls_no_other_run(
    dsn: str, sql: Conn
) -> None:
    """A ctx.transaction() step whose code keeps the transaction open does not hold its run's row (the
    fence comes last, with the step's record): the heartbeat renews that run's lease meanwhile, the
    worker's other runs record their steps and complete, and its claims go on."""
    prepare(sql)
    sample_workflows.GATE, sample_workflows.HELD = asyncio.Event(), asyncio.Event()
    try:
        async with running_worker(dsn, lease_seconds=1.5) as worker:  # a heartbeat every 0.5 s
            # k1's row comes before k2's, by key and on disk: a heartbeat that waited for k2 would hold
            # k1's row meanwhile, and k1's step would wait for it
            enqueue(sql, "k1", f"{WF}:beats_then_steps")
            enqueue(sql, "k2", f"{WF}:holds_transaction")
            await asyncio.wait_for(sample_workflows.HELD.wait(), 30)
            await wait_until(lambda: run_row(sql, "k1")["status"] == "done", "the other run", timeout=8)
            assert step_names(sql, "k1") == ["after"]
            held_since = now(sql)
            await asyncio.sleep(2.5)  # longer than the lease: only renewals keep it
            k2 = run_row(sql, "k2")
            assert k2["status"] == "running" and k2["attempt"] == 1
            assert k2["lease_expires"] > held_since + timedelta(seconds=2.5), "k2's lease was not renewed"
            enqueue(sql, "k3", f"{WF}:beats_then_steps")
            await wait_until(lambda: run_row(sql, "k3")["status"] == "done", "a run claimed later", timeout=8)
            assert run_row(sql, "k2")["attempt"] == 1 and sample_workflows.HELD.is_set()
            sample_workflows.GATE.set()
            await wait_until(lambda: run_row(sql, "k2")["status"] == "done", "the held run", timeout=30)
    finally:
        sample_workflows.GATE = sample_workflows.HELD = None
    assert step_names(sql, "k2") == ["slow"] and run_row(sql, "k2")["attempt"] == 1
    assert worker.stats.done >= 3 and worker.stats.fenced == 0


async def test_a_workflow_that_does_not_import_dies_at_once_naming_it(dsn: str, sql: Conn) -> None:
    prepare(sql)
    enqueue(sql, "k7", f"{WF}:no_such_function")
    async with running_worker(dsn):
        await wait_until(lambda: run_row(sql, "k7")["status"] == "dead", "the run to die")
    assert "has no function 'no_such_function'" in run_row(sql, "k7")["last_error"]


async def test_a_run_timeout_fails_the_attempt(dsn: str, sql: Conn) -> None:
    prepare(sql)
    enqueue(sql, "k8", f"{WF}:too_slow")
    async with running_worker(dsn):
        await wait_until(lambda: run_row(sql, "k8")["status"] == "dead", "the run to time out")
    assert run_row(sql, "k8")["last_error"] == "TimeoutError: run exceeded its timeout of 0.2s"


async def test_a_zombie_worker_cannot_complete_or_write_a_step(dsn: str, sql: Conn, calls_file: str) -> None:
    """Worker A's lease expires while it is paused; B takes over with attempt 2.  When A wakes, its step
    write and its completion are refused; the effect exists exactly once."""
    prepare(sql)
    sample_workflows.GATE = asyncio.Event()
    try:
        enqueue(sql, "k9", f"{WF}:two_steps", {"id": 9, "text": "z"})
        async with running_worker(dsn, lease_seconds=300) as a:
            await wait_until(lambda: step_names(sql, "k9") == ["llm"], "A to record the first step")
            sql.execute(
                "UPDATE listener.runs SET lease_expires = now() - interval '1 second' WHERE id = 'k9'"
            )
            async with running_worker(dsn, lease_seconds=300) as b:
                await wait_until(lambda: run_row(sql, "k9")["attempt"] == 2, "B to take the run over")
                sample_workflows.GATE.set()  # both continue: A (attempt 1) and B (attempt 2)
                await wait_until(lambda: run_row(sql, "k9")["status"] == "done", "B to finish")
                await wait_until(lambda: a.stats.fenced == 1, "A to be fenced out")
        assert b.stats.done == 1 and a.stats.done == 0
        assert effects(sql) == [("k9", "summary of z", "k9:save")]
        assert calls(calls_file) == ["llm k9"]  # B replayed the recorded step
        outcomes = sql.execute(
            "SELECT attempt, outcome FROM listener.attempts WHERE run_id = 'k9' ORDER BY 1"
        ).fetchall()
        assert outcomes == [(1, "lease expired"), (2, "done")]
    finally:
        sample_workflows.GATE = None


async def test_listener_retry_of_a_dead_run_does_not_repeat_its_finished_steps(
    dsn: str, sql: Conn, calls_file: str
) -> None:
    from listener.ops import runs

    prepare(sql)
    enqueue(sql, "k10", f"{WF}:dies_after_llm")
    sample_workflows.BROKEN["save"] = True
    try:
        async with running_worker(dsn):
            await wait_until(lambda: run_row(sql, "k10")["status"] == "dead", "the run to die")
            sample_workflows.BROKEN["save"] = False  # the bug is fixed and deployed
            with runs.connect(dsn, "listener") as conn:
                retried = runs.retry(conn, "k10", schema="listener")
            assert retried.id == "k10"
            await wait_until(lambda: run_row(sql, "k10")["status"] == "done", "the retried run to finish")
    finally:
        sample_workflows.BROKEN["save"] = True
    assert calls(calls_file) == ["llm k10"]  # the paid LLM call was not made again
    assert effects(sql) == [("k10", "summary of retry me", "k10:save")]
    outcomes = sql.execute(
        "SELECT attempt, outcome FROM listener.attempts WHERE run_id = 'k10' ORDER BY 1"
    ).fetchall()
    assert outcomes == [(1, "dead"), (2, "done")]


async def test_a_step_is_retried_in_place_and_bounded_by_its_timeout(dsn: str, sql: Conn) -> None:
    prepare(sql)
    enqueue(sql, "s1", f"{WF}:step_retries")
    enqueue(sql, "s2", f"{WF}:step_timeout")
    async with running_worker(dsn):
        await wait_until(lambda: run_row(sql, "s1")["status"] == "done", "the retried step to succeed")
        await wait_until(lambda: run_row(sql, "s2")["status"] == "dead", "the hung step to time out")
    assert sample_workflows.FLAKY_CALLS["s1"] == 3  # two transient failures, then the answer
    assert run_row(sql, "s1")["attempt"] == 1  # all within one attempt of the run
    assert run_row(sql, "s2")["last_error"].startswith("TimeoutError")
    assert step_names(sql, "s2") == []


async def test_a_lost_notification_costs_latency_never_a_run(dsn: str, sql: Conn) -> None:
    """Invariant 7: runs enqueued with no NOTIFY at all are still found, by the fallback poll."""
    prepare(sql)
    async with running_worker(dsn, poll_interval=0.5) as worker:
        await asyncio.sleep(0.3)  # the worker is idle, waiting
        with sql.transaction():  # no pg_notify: as if the notification were lost
            sql.execute(
                "INSERT INTO listener.events (idempotency_key, source, rule, workflow, payload)"
                " VALUES ('silent', 'test', 'r', %s, %s::jsonb)",
                [f"{WF}:two_steps", '{"new": {"id": 1, "text": "s"}}'],
            )
            sql.execute(
                "INSERT INTO listener.runs (id, event_key, workflow) VALUES ('silent', 'silent', %s)",
                [f"{WF}:two_steps"],
            )
        await wait_until(lambda: run_row(sql, "silent")["status"] == "done", "the poll to find the run", 10)
    assert worker.stats.done == 1
