"""Ingest end to end: row changes → events with deterministic keys, committed with the checkpoint."""

from __future__ import annotations

import psycopg

from tests.support import events, make_config, running_ingest, wait_caught_up

RULES = [
    {
        "name": "on_insert",
        "table": "items",
        "on": ["insert"],
        "workflow": "listener_examples.onboarding:welcome",
    },
    {
        "name": "on_change",
        "table": "items",
        "on": ["update", "delete"],
        "workflow": "listener_examples.tickets:triage",
    },
]


async def test_each_operation_becomes_an_event(dsn: str, sql: psycopg.Connection[tuple[object, ...]]) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
    config = make_config(RULES)
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO items VALUES (1, 'apple', 3), (2, 'pear', 5)")
        sql.execute("UPDATE items SET qty = 4 WHERE id = 1")
        sql.execute("DELETE FROM items WHERE id = 2")
        await wait_caught_up(run, dsn)
    got = events(dsn)
    assert [(e["rule"], e["op"]) for e in got] == [
        ("on_insert", "insert"),
        ("on_insert", "insert"),
        ("on_change", "update"),
        ("on_change", "delete"),
    ]
    assert got[0]["payload"] == {
        "new": {"id": 1, "name": "apple", "qty": 3},
        "old": None,
        "unchanged_toast": [],
    }
    assert got[2]["payload"]["new"] == {"id": 1, "name": "apple", "qty": 4}
    assert got[2]["payload"]["old"] is None  # DEFAULT identity, key unchanged: the server sends no old row
    assert got[3]["payload"]["old"] == {"id": 2}  # only the replica identity columns, never NULLs
    assert got[0]["table_name"] == "public.items"
    # keys: rule / commit LSN / ordinal of the change among its table's changes in the transaction
    assert got[0]["idempotency_key"] == f"on_insert/{got[0]['commit_lsn']}/0"
    assert got[1]["idempotency_key"] == f"on_insert/{got[1]['commit_lsn']}/1"
    assert len({e["idempotency_key"] for e in got}) == 4
