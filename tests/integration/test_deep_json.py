"""Deep JSON is legal in PostgreSQL (thousands of levels): every source carries it, nothing dies on it.

Python's json module (and so psycopg's and asyncpg's json loaders) recurses once per level and raises
RecursionError near 1,000 levels; such values travel as their PostgreSQL text, listed in ``as_text``."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from listener.defaults import MAX_JSON_DEPTH
from listener.runtime.workflow import Event
from tests.support import _wait_for, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]
LEVELS = 2000
DEEP = "[" * LEVELS + "]" * LEVELS
SHALLOW = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH


def rule(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "workflow": "m:f", **fields}


def payloads(dsn: str) -> list[tuple[str, dict[str, Any]]]:
    """(op, payload) of every event, the payload read the way a worker reads it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT op, payload::text FROM listener.events ORDER BY seq").fetchall()
    return [(str(op), json.loads(str(text))) for op, text in rows]


def worker_events(dsn: str) -> list[Event]:
    """The events as `Event.from_row` builds them for a workflow."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        rows = cur.execute(
            "SELECT idempotency_key AS event_key, rule, workflow, op, table_name, lsn::text AS lsn,"
            " commit_lsn::text AS commit_lsn, xid, commit_time, payload::text AS payload"
            " FROM listener.events ORDER BY seq"
        ).fetchall()
    return [Event.from_row(row) for row in rows]


async def test_a_deep_jsonb_column_is_carried_as_text(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE docs (id int PRIMARY KEY, meta jsonb, raw json, metas jsonb[])")
    sql.execute("ALTER TABLE docs REPLICA IDENTITY FULL")
    config = make_config(
        [
            rule(name="all", table="docs", on=["insert", "update"]),
            rule(name="picked", table="docs", on=["insert"], payload={"m": "new.meta"}),
            rule(name="when", table="docs", on=["insert", "update"], when="new.meta->>'x' IS NULL"),
        ]
    )
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO docs VALUES (1, %s, %s, ARRAY[%s::jsonb])", [DEEP, DEEP, DEEP])
        sql.execute("INSERT INTO docs VALUES (2, %s, '{\"x\": 1}', NULL)", [SHALLOW])
        sql.execute("UPDATE docs SET id = 3 WHERE id = 1")
        await wait_caught_up(run, dsn)
    got = payloads(dsn)
    deep_new = {"id": 1, "meta": DEEP, "raw": DEEP, "metas": [DEEP]}
    shallow_new = {"id": 2, "meta": json.loads(SHALLOW), "raw": {"x": 1}, "metas": None}
    updated = {
        "new": {"id": 3, "raw": DEEP},  # the jsonb values are TOASTed (and unchanged)
        "old": deep_new,
        "unchanged_toast": ["meta", "metas"],
        "as_text": ["meta", "raw", "metas"],
    }
    assert got == [
        (
            "insert",
            {"new": deep_new, "old": None, "unchanged_toast": [], "as_text": ["meta", "raw", "metas"]},
        ),
        ("insert", {"data": {"m": DEEP}, "unchanged_toast": [], "as_text": ["m"]}),
        (
            "insert",
            {"new": deep_new, "old": None, "unchanged_toast": [], "as_text": ["meta", "raw", "metas"]},
        ),
        ("insert", {"new": shallow_new, "old": None, "unchanged_toast": []}),
        ("insert", {"data": {"m": json.loads(SHALLOW)}, "unchanged_toast": []}),
        ("insert", {"new": shallow_new, "old": None, "unchanged_toast": []}),
        ("update", updated),
        ("update", updated),
    ]
    first = worker_events(dsn)[0]
    assert first.new == deep_new and first.as_text == ("meta", "raw", "metas")


async def test_a_deep_logical_decoding_message_is_carried_as_text(dsn: str, sql: Conn) -> None:
    deep = "[" * 1500 + "]" * 1500
    config = make_config([rule(message="deep")])
    async with running_ingest(dsn, config) as run:
        sql.execute("SELECT pg_logical_emit_message(true, 'deep', repeat('[',1500)||repeat(']',1500))")
        sql.execute("SELECT pg_logical_emit_message(true, 'deep', '1e400')")
        sql.execute("SELECT pg_logical_emit_message(true, 'deep', 'NaN')")
        sql.execute("SELECT pg_logical_emit_message(true, 'deep', '[1]')")
        await wait_caught_up(run, dsn)
    got = [(p["data"], p["content"], p.get("as_text")) for _, p in payloads(dsn)]
    assert got == [
        (deep, deep, ["data"]),
        ("1e400", "1e400", ["data"]),  # a number beyond float range: Python would make it inf
        (None, "NaN", None),  # not JSON (PostgreSQL's json refuses it too)
        ([1], "[1]", None),
    ]
    assert [e.data for e in worker_events(dsn)] == [deep, "1e400", None, [1]]


async def test_a_deep_notify_is_carried_as_text_and_notify_ingest_goes_on(dsn: str, sql: Conn) -> None:
    config = make_config([rule(channel="hooks")])
    async with running_ingest(dsn, config) as run:
        await _wait_for(run.ingest.listening.is_set, "LISTEN on the rule channels")
        sql.execute("SELECT pg_notify('hooks', repeat('[',1500)||repeat(']',1500))")
        sql.execute("SELECT pg_notify('hooks', %s)", ['{"nul": "\\u0000"}'])
        sql.execute("NOTIFY hooks, '{\"after\": 1}'")
        await _wait_for(lambda: len(payloads(dsn)) >= 3, "three NOTIFY events")
    got = [(p["data"], p.get("as_text")) for _, p in payloads(dsn)]
    deep = "[" * 1500 + "]" * 1500
    assert got == [(deep, ["data"]), ('{"nul": "\\u0000"}', ["data"]), ({"after": 1}, None)]


async def test_nul_in_json_text_and_message_bytes_is_carried(dsn: str, sql: Conn) -> None:
    """jsonb refuses \\u0000 (the queue's payload is jsonb), json and message bytes do not."""
    sql.execute("CREATE TABLE docs (id int PRIMARY KEY, raw json)")
    config = make_config([rule(name="rows", table="docs", on=["insert"]), rule(name="m", message="nul")])
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO docs VALUES (1, %s)", ['{"a": "\\u0000"}'])
        sql.execute("SELECT pg_logical_emit_message(true, 'nul', %s::text)", ['{"a": "\\u0000"}'])
        sql.execute("SELECT pg_logical_emit_message(true, 'nul', '\\x6100'::bytea)")
        await wait_caught_up(run, dsn)
    got = [p for _, p in payloads(dsn)]
    assert got[0] == {
        "new": {"id": 1, "raw": '{"a": "\\u0000"}'},
        "old": None,
        "unchanged_toast": [],
        "as_text": ["raw"],
    }
    assert (got[1]["data"], got[1]["as_text"]) == ('{"a": "\\u0000"}', ["data"])
    assert (got[2]["data"], got[2]["content"]) == (None, "\\x6100")  # like any content that is not text
