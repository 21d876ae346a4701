"""Compact storage of bulk transactions: raw chunks, expanded into the same events as the direct path."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from listener import install as setup
from listener.pg.replication import ReplicationSession
from tests.support import _wait_for, events, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]

ALL_OPS = ["insert", "update", "delete"]


def rules(table: str = "items", **extra: Any) -> list[dict[str, Any]]:
    return [
        {"name": "all_rows", "table": table, "on": ALL_OPS, "workflow": "m:f", **extra},
        {"name": "inserts", "table": table, "on": ["insert"], "workflow": "m:g"},
    ]


def compact(**settings: Any) -> dict[str, Any]:
    return {"compact_after": 20, "compact_chunk_changes": 64, "expand_ahead": 1_000_000, **settings}


def chunks_left(sql: Conn, schema: str = "listener") -> int:
    row = sql.execute(f"SELECT count(*) FROM {schema}.event_chunks").fetchone()
    assert row is not None
    return int(str(row[0]))


async def wait_expanded(sql: Conn, schema: str = "listener") -> None:
    await _wait_for(lambda: chunks_left(sql, schema) == 0, "the expander to empty event_chunks")


def bulk_transaction(sql: Conn) -> None:
    """One transaction of every operation, with TOAST, arrays, json and NULLs, 300 rows of each."""
    with sql.transaction():
        sql.execute(
            "INSERT INTO items SELECT g, 'v' || g, CASE WHEN g % 7 = 0 THEN NULL ELSE g * 1.5 END,"
            " jsonb_build_object('g', g, 'tags', ARRAY['a', 'b']), ARRAY[g, g + 1],"
            " CASE WHEN g % 50 = 0"
            "   THEN (SELECT string_agg(md5((g * 1000 + i)::text), '') FROM generate_series(1, 300) i)"
            "   ELSE 'short' END"
            " FROM generate_series(1, 300) g"
        )
        sql.execute("UPDATE items SET v = v || '!' WHERE id <= 250")  # big TOAST values stay unchanged
        sql.execute("DELETE FROM items WHERE id > 200")
        sql.execute("INSERT INTO other SELECT g FROM generate_series(1, 100) g")
        # a Relation message in the middle of the transaction: the open chunk ends, a new one follows
        sql.execute("ALTER TABLE items ADD COLUMN extra int DEFAULT 7")
        sql.execute("INSERT INTO items (id, v) SELECT g, 'late' FROM generate_series(1001, 1100) g")
        # a truncate after raw changes of the same table: its ordinal counts them (100)
        sql.execute("TRUNCATE other")


def comparable(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        (e["idempotency_key"], e["rule"], e["workflow"], e["op"], e["table_name"], e["lsn"], e["commit_lsn"],
         e["xid"], e["commit_time"], e["payload"])
        for e in rows
    )  # fmt: skip


async def test_compact_chunks_expand_into_the_events_of_the_direct_path(dsn: str, sql: Conn) -> None:
    sql.execute(
        "CREATE TABLE items (id int PRIMARY KEY, v text, amount numeric, doc jsonb, nums int[], big text)"
    )
    sql.execute("CREATE TABLE other (id int PRIMARY KEY)")
    other = {"name": "other_rows", "table": "other", "on": ["insert", "truncate"], "workflow": "m:h"}
    direct = make_config([*rules(), other], slot="direct", state_schema="direct", ingest={"compact_after": 0})
    chunked = make_config([*rules(), other], slot="chunked", state_schema="chunked", ingest=compact())
    await asyncio.to_thread(setup.init, direct, dsn, dsn)
    async with running_ingest(dsn, direct) as d, running_ingest(dsn, chunked) as c:
        bulk_transaction(sql)
        await wait_caught_up(d, dsn)
        await wait_caught_up(c, dsn)
        await wait_expanded(sql, "chunked")
        assert c.ingest.expander.stats.chunks >= 10
        assert d.ingest.expander.stats.chunks == 0
    expected, got = events(dsn, "direct"), events(dsn, "chunked")
    # inserts twice (two rules), updates, deletes, other, the inserts after the ALTER twice
    assert len(expected) == 300 + 300 + 250 + 100 + 100 + 200 + 1
    (cut,) = [e for e in got if e["op"] == "truncate"]
    assert cut["idempotency_key"].endswith("/100")
    assert [
        e["payload"]["new"]["extra"] for e in got if e["payload"]["new"] and e["payload"]["new"]["id"] > 1000
    ] == [7] * 200
    assert comparable(got) == comparable(expected)
    toast = [e for e in got if e["op"] == "update" and e["payload"]["unchanged_toast"]]
    assert len(toast) == 5  # ids 50, 100, ... 250: the big value was not sent, and is marked so
    runs = sql.execute("SELECT count(*), count(DISTINCT event_key) FROM chunked.runs").fetchone()
    assert runs == (len(got), len(got))


async def test_expansion_stays_a_bounded_number_of_runs_ahead(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    rule = [{"name": "rows", "table": "items", "on": ["insert"], "workflow": "m:f"}]
    config = make_config(rule, ingest=compact(compact_chunk_changes=100, expand_ahead=250))
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 2000) g")
        await wait_caught_up(run, dsn)
        await _wait_for(lambda: len(events(dsn)) >= 250, "the first chunks to expand")
        await asyncio.sleep(0.6)  # a few polls of the expander: it must stay held back
        pending = len(events(dsn))
        assert 250 <= pending < 250 + 100 + 20  # the bound, plus one chunk, plus the direct head
        assert chunks_left(sql) > 0

        def workers_take_all() -> bool:
            sql.execute("UPDATE listener.runs SET status = 'done' WHERE status = 'pending'")
            return chunks_left(sql) == 0

        await _wait_for(workers_take_all, "the expander to follow the workers to the end")
    got = events(dsn)
    assert sorted(e["payload"]["new"]["id"] for e in got) == list(range(1, 2001))
    assert len({e["idempotency_key"] for e in got}) == 2000


async def test_redelivered_bulk_transaction_adds_nothing(
    dsn: str, sql: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunks and checkpoint are committed but the server never heard: it resends the transaction,
    whose chunks (stored again, or already expanded) must make no second event or run."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    rule = [{"name": "rows", "table": "items", "on": ["insert"], "workflow": "m:f"}]
    config = make_config(rule, ingest=compact())
    monkeypatch.setattr(ReplicationSession, "confirm", lambda self, lsn: None)
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 1000) g")
        await wait_caught_up(run, dsn)
        await wait_expanded(sql)
    monkeypatch.undo()
    sql.execute("DELETE FROM listener.checkpoints")  # as if the checkpoint had not been written either
    async with running_ingest(dsn, config) as run:
        await wait_caught_up(run, dsn)
        await wait_expanded(sql)
        assert run.ingest.expander.stats.chunks > 0  # the chunks came again and were expanded again
        assert run.ingest.expander.stats.events_inserted == 0
    got = events(dsn)
    assert len(got) == len({e["idempotency_key"] for e in got}) == 1000
    row = sql.execute("SELECT count(*) FROM listener.runs").fetchone()
    assert row == (1000,)


async def test_rules_that_look_at_the_row_are_never_stored_compactly(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, tenant int)")
    rule = [{"name": "rows", "table": "items", "on": ["insert"], "workflow": "m:f", "key": "{new.tenant}",
             "key_concurrency": 2}]  # fmt: skip
    config = make_config(rule, ingest=compact())
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO items SELECT g, g % 3 FROM generate_series(1, 500) g")
        await wait_caught_up(run, dsn)
        assert run.ingest.expander.stats.chunks == 0
    row = sql.execute("SELECT count(*), count(DISTINCT key) FROM listener.runs").fetchone()
    assert row == (500, 3)
