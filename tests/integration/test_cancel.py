"""Cancelling a running ingest (its task, not its stop event) mid-write: the batch being written still
commits with its checkpoint, and nothing is left open (the final writes are shielded from cancellation)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from listener import install as setup
from listener.ingest import Ingest
from listener.queue.store import StateStore
from tests.support import WAIT_S, _wait_for, events, make_config

RULES = [{"name": "on_insert", "table": "items", "on": ["insert"], "workflow": "m:f"}]


def one(conn: psycopg.Connection[tuple[object, ...]], query: str) -> object:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


async def test_cancelling_ingest_mid_write_commits_the_batch_and_its_checkpoint_cleanly(
    dsn: str, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    config = make_config(RULES)
    await asyncio.to_thread(setup.init, config, dsn, dsn)
    store = await StateStore.connect(dsn, schema=config.state_schema, slot=config.slot)
    ingest = Ingest.from_config(config, source_dsn=dsn, store=store)
    task = asyncio.create_task(ingest.run(asyncio.Event()), name="test-ingest")
    try:
        await _wait_for(lambda: ingest.streaming.is_set() or task.done(), "ingest to stream")
        with psycopg.connect(dsn) as locker:
            # the writer's transaction will wait for this lock after it began: a write in flight
            locker.execute("LOCK TABLE listener.events IN EXCLUSIVE MODE")
            sql.execute("INSERT INTO items VALUES (1, 'apple')")
            waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"
            await _wait_for(lambda: one(sql, waiting) == 1 or task.done(), "the writer to wait for the lock")
            assert not task.done()
            task.cancel()
            await asyncio.sleep(0)  # the cancellation reaches the writer while its write waits
            locker.rollback()  # the write goes on
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT_S)
    finally:
        task.cancel()
        await asyncio.wait_for(store.close(), WAIT_S)  # no connection left behind in the pool
    got = events(dsn)
    assert [e["rule"] for e in got] == ["on_insert"]  # the batch in flight was committed...
    row = sql.execute("SELECT lsn > %s::pg_lsn FROM listener.checkpoints", [got[0]["commit_lsn"]]).fetchone()
    assert row == (True,)  # ...with its checkpoint
    idle = "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
    assert one(sql, idle) == 0
