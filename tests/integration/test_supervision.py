"""Never half-alive (invariant 9): a background task whose connection is cut reconnects; one that fails
for good stops the service loudly, naming itself."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import psycopg
import pytest

from listener.pg.conninfo import asyncpg_params
from listener.runtime.worker import Worker, _complete_runs, _save_steps
from listener.runtime.workflow import StepRecord
from listener.supervise import supervised
from tests.runtime_support import enqueue, prepare, run_row, running_worker
from tests.support import _wait_for, events, make_config, running_ingest

Conn = psycopg.Connection[tuple[object, ...]]
WF = "tests.sample_workflows"


def listening_pids(sql: Conn, channel: str) -> list[int]:
    rows = sql.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = %s",
        [f'LISTEN "{channel}"'],
    ).fetchall()
    return [int(str(pid)) for (pid,) in rows]


async def test_notify_is_ingested_after_its_listen_connection_is_terminated(dsn: str, sql: Conn) -> None:
    config = make_config([{"name": "hooks", "workflow": "m:f", "channel": "webhooks"}])
    async with running_ingest(dsn, config) as run:
        await _wait_for(lambda: bool(listening_pids(sql, "webhooks")), "LISTEN webhooks")
        for pid in listening_pids(sql, "webhooks"):
            sql.execute("SELECT pg_terminate_backend(%s)", [pid])
        # NOTIFY is at most once: what is sent before the new LISTEN is gone, so send until one arrives
        sent = 0
        while not events(dsn):
            assert sent < 300, "no NOTIFY was ingested after the LISTEN connection was terminated"
            sql.execute("SELECT pg_notify(%s, %s)", ["webhooks", f"after {sent}"])
            sent += 1
            await asyncio.sleep(0.1)
        assert not run.task.done()
        assert listening_pids(sql, "webhooks")  # listening again


async def test_a_background_task_failing_for_good_stops_ingest_naming_it(
    dsn: str, sql: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """The rewind watcher cannot read its table (dropped: no retry can fix that): ingest stops with the
    task's name in the log, instead of retrying forever beside a stream that looks alive."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    config = make_config([{"name": "r", "workflow": "m:f", "table": "items", "on": ["insert"]}])
    with caplog.at_level(logging.ERROR), pytest.raises(BaseException) as caught:
        async with running_ingest(dsn, config) as run:
            sql.execute("DROP TABLE listener.rewinds CASCADE")
            sql.execute("NOTIFY listener_control, 'wake'")
            await asyncio.wait_for(asyncio.shield(run.task), 60)
    assert "UndefinedTable" in repr(caught.value)
    assert any("ingest-rewinds failed" in r.getMessage() for r in caplog.records), caplog.text


def terminate(sql: Conn, where: str) -> int:
    """Terminate this database's backends matching ``where`` (never our own); how many."""
    rows = sql.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = current_database() AND pid <> pg_backend_pid() AND {where}"
    ).fetchall()
    return len(rows)


async def test_a_worker_listens_again_after_its_listen_connection_is_terminated(dsn: str, sql: Conn) -> None:
    """Polling is slow here (10 min): a run is claimed soon only if the wake-up NOTIFY is heard."""
    prepare(sql)
    async with running_worker(dsn, poll_interval=600) as worker:
        await _wait_for(lambda: bool(listening_pids(sql, "listener_events")), "the worker's LISTEN")
        enqueue(sql, "k1", f"{WF}:two_steps")
        await _wait_for(lambda: run_row(sql, "k1")["status"] == "done", "the first run", timeout=30)
        assert terminate(sql, "query = 'LISTEN \"listener_events\"'") == 1
        await _wait_for(lambda: bool(listening_pids(sql, "listener_events")), "LISTEN again", timeout=30)
        enqueue(sql, "k2", f"{WF}:two_steps")
        await _wait_for(lambda: run_row(sql, "k2")["status"] == "done", "the second run", timeout=30)
    assert worker.stats.done == 2


async def test_a_worker_whose_connections_are_all_terminated_carries_on(dsn: str, sql: Conn) -> None:
    prepare(sql)
    async with running_worker(dsn) as worker:
        enqueue(sql, "k1", f"{WF}:two_steps")
        await _wait_for(lambda: run_row(sql, "k1")["status"] == "done", "the first run", timeout=30)
        assert terminate(sql, "backend_type = 'client backend'") >= 2
        enqueue(sql, "k2", f"{WF}:two_steps")
        await _wait_for(lambda: run_row(sql, "k2")["status"] == "done", "the second run", timeout=30)
    assert worker.stats.done == 2
    assert [row["status"] for row in (run_row(sql, "k1"), run_row(sql, "k2"))] == ["done", "done"]


class LosesFirstReply:
    """A pool whose first ``fetch`` commits on the real server and then loses its reply, as when the
    connection drops (a restart) between the commit and the answer."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.lost = False

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        rows = await self.pool.fetch(query, *args)
        if not self.lost:
            self.lost = True
            raise ConnectionResetError("the connection dropped before the reply")
        return rows


async def test_a_completion_committed_before_its_reply_was_lost_counts_as_done(dsn: str, sql: Conn) -> None:
    """The completion's retry finds its own attempt already done: recognised as done, not refused."""
    worker = running_attempt(dsn, sql)
    async with reply_lost_once(dsn) as pool:
        send = functools.partial(_complete_runs, pool)  # type: ignore[arg-type]
        async with serving(functools.partial(worker._completions.serve, send)):
            assert await asyncio.wait_for(worker._complete("k1", 1), 30) is True
    assert run_row(sql, "k1")["status"] == "done"


async def test_a_step_recorded_before_its_reply_was_lost_counts_as_recorded(dsn: str, sql: Conn) -> None:
    """The step record's retry finds its own attempt's record: recognised as recorded, not as fenced."""
    worker = running_attempt(dsn, sql)
    record = StepRecord("k1", "llm", 1, '{"summary": "s"}', datetime.now(UTC))
    async with reply_lost_once(dsn) as pool:
        send = functools.partial(_save_steps, pool)  # type: ignore[arg-type]
        async with serving(functools.partial(worker._steps.serve, send)):
            assert await asyncio.wait_for(worker._steps.submit(record), 30) is True
    assert sql.execute("SELECT name, attempt, result FROM listener.steps").fetchall() == [
        ("llm", 1, {"summary": "s"})
    ]


def running_attempt(dsn: str, sql: Conn) -> Worker:
    """Run k1 running as attempt 1, and a worker (not started) to record its writes."""
    prepare(sql)
    enqueue(sql, "k1", f"{WF}:two_steps")
    sql.execute(
        "UPDATE listener.runs SET status = 'running', attempt = 1, lease_owner = 'w',"
        " lease_expires = now() + interval '1 minute' WHERE id = 'k1'"
    )
    return Worker(dsn, schema="listener")


@contextlib.asynccontextmanager
async def reply_lost_once(dsn: str) -> AsyncIterator[LosesFirstReply]:
    params = asyncpg_params(dsn, {"search_path": "listener"})
    pool = await asyncpg.create_pool(min_size=1, max_size=2, **params)
    assert pool is not None
    try:
        yield LosesFirstReply(pool)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def serving(serve: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """``serve`` supervised (a lost connection is retried) while the block runs."""
    task = asyncio.create_task(supervised("batches", serve))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
