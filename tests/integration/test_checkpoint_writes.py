"""Transactions that make no event cost no checkpoint write each (issue 17).

PostgreSQL 14 streams an empty Begin/Commit for every transaction in the database, and on any version a
transaction whose changes no rule matches arrives as one without events.  Writing a checkpoint for each
would be one state-database write per transaction -- and with the state schema in the watched database,
each such write is itself the next empty transaction on 14: a loop.  The counts below are the ingest's
committed batches (every state-database write of ingest is one), never a wall-clock speed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from listener.defaults import IDLE_CHECKPOINT_INTERVAL_S
from tests.support import _wait_for, current_wal_lsn, events, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]
# updates are watched only when they change the status: an update of another column makes no event, and
# (a comparison of old and new values) it cannot be filtered on the server
RULES: list[dict[str, Any]] = [
    {"name": "created", "table": "items", "on": "insert", "workflow": "m:f"},
    {"name": "status", "table": "items", "on": "update", "changed": ["status"], "workflow": "m:f"},
]
NO_EVENT_TRANSACTIONS = 50
IDLE_SPAN_S = 2.0


def _setup(sql: Conn) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, status text, note text)")
    sql.execute("ALTER TABLE items REPLICA IDENTITY FULL")
    sql.execute("CREATE TABLE unwatched (id int)")


async def test_transactions_that_make_no_event_share_a_checkpoint_write(dsn: str, sql: Conn) -> None:
    _setup(sql)
    async with running_ingest(dsn, make_config(RULES)) as run:
        run.ingest.empty_checkpoint_interval = IDLE_CHECKPOINT_INTERVAL_S  # the default, not the tests'
        sql.execute("INSERT INTO items VALUES (1, 'new', '')")
        await _wait_for(lambda: run.ingest.stats.events_inserted == 1, "the insert's event")
        seen, written = run.ingest.stats.transactions, run.ingest.stats.batches
        for n in range(1, NO_EVENT_TRANSACTIONS + 1):
            # each its own transaction, none making an event, each seen before the next is written
            sql.execute("UPDATE items SET note = %s WHERE id = 1", [str(n)])
            await _wait_for(lambda: run.ingest.stats.transactions >= seen + n, "the update")  # noqa: B023
        after_updates = current_wal_lsn(dsn)
        # at most one write that no event needed per interval (the first may fall due at once)
        assert run.ingest.stats.batches - written <= 2
        # the next batch with an event carries the checkpoint past all of them
        sql.execute("UPDATE items SET status = 'done' WHERE id = 1")
        await _wait_for(lambda: run.ingest.stats.events_inserted == 2, "the status update's event")
        assert run.ingest.stats.batches - written <= 3
        assert run.ingest.durable_lsn > after_updates
    assert [e["rule"] for e in events(dsn)] == ["created", "status"]


async def test_an_idle_listener_on_the_watched_database_writes_a_bounded_number_of_checkpoints(
    dsn: str, sql: Conn
) -> None:
    """The state schema lives in the watched database (running_ingest's default)."""
    _setup(sql)
    async with running_ingest(dsn, make_config(RULES)) as run:
        run.ingest.empty_checkpoint_interval = IDLE_CHECKPOINT_INTERVAL_S
        sql.execute("INSERT INTO items VALUES (1, 'new', '')")
        sql.execute("INSERT INTO unwatched VALUES (1)")  # on 14: an empty transaction
        await _wait_for(lambda: run.ingest.stats.events_inserted == 1, "the insert's event")
        written = run.ingest.stats.batches
        await asyncio.sleep(IDLE_SPAN_S)  # idle: nothing is written to the database meanwhile
        assert run.ingest.stats.batches - written <= 1 + IDLE_SPAN_S / IDLE_CHECKPOINT_INTERVAL_S


async def test_the_checkpoint_follows_transactions_that_make_no_event(dsn: str, sql: Conn) -> None:
    """Deferred, not lost: once the interval passes, the checkpoint moves past them without new events."""
    _setup(sql)
    async with running_ingest(dsn, make_config(RULES)) as run:
        sql.execute("INSERT INTO items VALUES (1, 'new', '')")
        for n in range(20):
            sql.execute("UPDATE items SET note = %s WHERE id = 1", [str(n)])
            sql.execute("INSERT INTO unwatched VALUES (%s)", [n])
        await wait_caught_up(run, dsn)  # a transaction with only a logical message: no event either
    assert [e["rule"] for e in events(dsn)] == ["created"]
