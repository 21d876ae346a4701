"""Exactly-once ingest across restarts, redelivery and state-database failures (invariants 1 and 2)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg
import pytest

from listener import install as setup
from listener.errors import ProtocolError
from listener.pg.lsn import parse_lsn
from listener.pg.replication import ReplicationSession
from listener.queue.batches import EventBatch
from listener.queue.handoff import Offer
from listener.queue.store import StateStore
from tests.support import current_wal_lsn, events, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]
RULES = [{"name": "rows", "table": "items", "on": ["insert", "update", "delete"], "workflow": "m:f"}]


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [e["payload"]["new"]["id"] for e in rows if e["op"] == "insert"]


def slot_flush(sql: Conn, slot: str = "listener_test") -> int:
    row = sql.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [slot]
    ).fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


def stored_checkpoint(sql: Conn) -> int:
    """The ingest checkpoint; 0 before the first transaction was ingested."""
    row = sql.execute("SELECT lsn::text FROM listener.checkpoints").fetchone()
    return parse_lsn(str(row[0])) if row is not None else 0


async def test_restart_resumes_without_loss_or_duplicates(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    config = make_config(RULES)
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO items SELECT g, 'a' FROM generate_series(1, 50) g")
        await wait_caught_up(run, dsn)
    # written while listener is down
    sql.execute("INSERT INTO items SELECT g, 'b' FROM generate_series(51, 80) g")
    with sql.transaction():
        sql.execute("INSERT INTO items VALUES (81, 'c')")
        sql.execute("UPDATE items SET v = 'd' WHERE id = 1")
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO items SELECT g, 'e' FROM generate_series(82, 100) g")
        await wait_caught_up(run, dsn)
    got = events(dsn)
    assert ids(got) == list(range(1, 101))
    assert [e["op"] for e in got].count("update") == 1
    assert len({e["idempotency_key"] for e in got}) == len(got) == 101
    # the slot was told exactly what is durable
    assert slot_flush(sql) == stored_checkpoint(sql)


async def test_redelivered_transactions_add_nothing(
    dsn: str, sql: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events and checkpoint committed, but the flush LSN never reached the server (a crash right after the
    commit): the server sends the transactions again; they must add nothing."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    config = make_config(RULES)
    monkeypatch.setattr(ReplicationSession, "confirm", lambda self, lsn: None)
    async with running_ingest(dsn, config) as run:
        for i in range(5):
            sql.execute(
                "INSERT INTO items SELECT g, 'x' FROM generate_series(%s::int, %s::int) g",
                [i * 10 + 1, i * 10 + 10],
            )
        await _wait_checkpoint_rows(dsn, 50)
    flush_before = slot_flush(sql)
    assert flush_before < stored_checkpoint(sql)  # the server still has to resend them
    monkeypatch.undo()
    async with running_ingest(dsn, config) as run:
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.changes == 0  # skipped by the checkpoint: not even re-evaluated
    got = events(dsn)
    assert ids(got) == list(range(1, 51))


async def _wait_checkpoint_rows(dsn: str, n: int) -> None:
    for _ in range(500):
        if len(events(dsn)) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {n} events")


async def test_a_crash_mid_transaction_replays_it_without_duplicates(
    dsn: str, sql: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction bigger than a batch is written in chunks before its commit arrives.  If the process
    loses its connection after some chunks (checkpoint still before the transaction), the server sends
    the whole transaction again and the unique idempotency keys drop the chunks already written."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    config = make_config(RULES, ingest={"batch_events": 100})
    original = StateStore.write_batch
    calls = 0

    async def flaky(self: StateStore, batch: EventBatch, offer: Offer | None = None) -> int:
        nonlocal calls
        calls += 1
        if calls == 4:  # after three chunks of the big transaction are committed
            raise ConnectionResetError("connection to the state database lost (test)")
        return await original(self, batch, offer)

    async with running_ingest(dsn, config) as run:
        monkeypatch.setattr(StateStore, "write_batch", flaky)
        before = stored_checkpoint(sql)
        sql.execute("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 1000) g")
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.reconnects == 1
        assert calls > 10
    assert before < stored_checkpoint(sql)
    got = events(dsn)
    assert ids(got) == list(range(1, 1001))
    assert run.ingest.stats.events_inserted == 1000  # the replayed chunks inserted nothing


async def test_flush_never_passes_what_is_durable(dsn: str, sql: Conn) -> None:
    """Invariant 1: while the state database refuses the events (a full disk), the slot's confirmed
    position stays behind them; once it accepts them again, they arrive exactly once."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    config = make_config(RULES)
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO items VALUES (1, 'ok')")
        await wait_caught_up(run, dsn)
        good = stored_checkpoint(sql)
        sql.execute(
            """
            CREATE FUNCTION listener.refuse() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device (test)'
                  USING ERRCODE = 'disk_full'; END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON listener.events
                FOR EACH ROW EXECUTE FUNCTION listener.refuse();
            """
        )
        # (on PostgreSQL 14 the DDL above arrives as an empty transaction: the checkpoint may pass it)
        before_refused = parse_lsn(str(sql.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]))  # type: ignore[index]
        sql.execute("INSERT INTO items VALUES (2, 'refused at first')")
        await asyncio.sleep(1.5)  # ingest tries, fails, reconnects, tries again...
        assert run.ingest.stats.reconnects >= 1
        assert good <= stored_checkpoint(sql) <= before_refused
        assert slot_flush(sql) <= stored_checkpoint(sql)
        sql.execute("DROP TRIGGER refuse ON listener.events")
        await wait_caught_up(run, dsn)
    assert ids(events(dsn)) == [1, 2]
    assert slot_flush(sql) == stored_checkpoint(sql)


async def test_a_cut_replication_connection_reconnects_and_loses_nothing(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    config = make_config(RULES, ingest={"batch_events": 50})
    async with running_ingest(dsn, config) as run:
        for chunk in range(5):
            sql.execute(
                "INSERT INTO items SELECT g, 'x' FROM generate_series(%s::int, %s::int) g",
                [chunk * 200 + 1, chunk * 200 + 200],
            )
            # cut the walsender's connection, as a network failure or a server restart would
            killed = sql.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = 'listener_test' AND active_pid IS NOT NULL"
            ).fetchall()
            assert killed in ([], [(True,)])
            await asyncio.sleep(0.3)
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.reconnects >= 2
    assert ids(events(dsn)) == list(range(1, 1001))


async def test_a_transaction_of_exactly_n_batches_is_acknowledged_at_once(dsn: str, sql: Conn) -> None:
    """The commit of a transaction whose events filled the last batch exactly must not wait for the next
    message or status timeout to be checkpointed (it once waited up to status_interval)."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    config = make_config(RULES, ingest={"batch_events": 100, "status_interval_s": 30})
    async with running_ingest(dsn, config) as run:
        for size in (100, 300, 2048, 4096):
            sql.execute("INSERT INTO items SELECT g, 'x' FROM generate_series(1, %s::int) g", [size])
            commit = parse_lsn(str(sql.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]))  # type: ignore[index]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3.0
            while run.ingest.durable_lsn < commit - 1024:  # the commit record ends just before this point
                assert loop.time() < deadline, f"{size} rows: checkpoint held back"
                await asyncio.sleep(0.01)
            sql.execute("TRUNCATE items")


async def test_malformed_bytes_stop_ingest_naming_the_lsn_and_acknowledge_nothing(
    dsn: str, sql: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant 8: bad bytes from the server are never skipped; the error names the offset and LSN."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    config = make_config(RULES)
    original = ReplicationSession.read

    async def corrupt(self: ReplicationSession, *args: Any, **kwargs: Any) -> list[tuple[int, memoryview]]:
        messages = await original(self, *args, **kwargs)
        # the Insert message of the row below arrives cut short after its relation OID
        return [
            (lsn, memoryview(b"I\x00\x00\x40\x00N") if bytes(m[:1]) == b"I" else m) for lsn, m in messages
        ]

    setup.init(config, dsn, dsn)
    flush_before = slot_flush(sql)
    monkeypatch.setattr(ReplicationSession, "read", corrupt)
    with pytest.raises(ProtocolError) as info:
        async with running_ingest(dsn, config, init=False) as run:
            before_insert = current_wal_lsn(dsn)
            sql.execute("INSERT INTO items VALUES (1, 'x')")
            await asyncio.wait_for(run.task, 30)
    assert "of the message at LSN" in str(info.value) and info.value.offset == 6
    assert info.value.lsn is not None and info.value.lsn > 0
    assert events(dsn) == []
    # nothing acknowledged from the insert on: the change will come again (on 14 the flush may pass the
    # empty transactions that setup's own writes make)
    assert flush_before <= slot_flush(sql) <= before_insert


async def test_a_state_database_error_that_retrying_cannot_fix_stops_ingest(dsn: str, sql: Conn) -> None:
    """Not every error is worth a reconnect loop: a refusal that will not pass stops ingest loudly, having
    acknowledged nothing."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    config = make_config(RULES)
    setup.init(config, dsn, dsn)
    sql.execute(
        """
        CREATE FUNCTION listener.refuse() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'events are not accepted here (test)'; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON listener.events
            FOR EACH ROW EXECUTE FUNCTION listener.refuse();
        """
    )
    flush_before = slot_flush(sql)
    with pytest.raises(asyncpg.RaiseError, match="events are not accepted here"):
        async with running_ingest(dsn, config, init=False) as run:
            before_insert = current_wal_lsn(dsn)
            sql.execute("INSERT INTO items VALUES (1, 'x')")
            await asyncio.wait_for(run.task, 30)
    assert run.ingest.stats.reconnects == 0
    # on 14 the flush may pass the empty transaction of the DDL above, never the insert
    assert flush_before <= slot_flush(sql) <= before_insert
