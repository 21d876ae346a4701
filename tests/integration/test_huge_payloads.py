"""Payloads longer than PAYLOAD_PIECE_CHARS reach the state database in pieces (through a large object of
the writer's transaction): stored exactly as sent whole, whatever the characters and wherever the pieces
cut; no large object left behind; and an event inserted before keeps its payload when its batch is written
again."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from listener.queue import store
from listener.queue.batches import EventBatch
from tests.support import events, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]
RULES = [
    {"name": "a", "table": "docs", "on": ["insert", "update"], "workflow": "m:f"},
    {"name": "b", "table": "docs", "on": ["insert"], "workflow": "m:g"},  # the same payload, twice
]
TEXT = 'a"b\\c\nd\té€😀' * 150  # 1,950 characters: escapes, 2-, 3- and 4-byte UTF-8


async def test_payloads_in_pieces_are_stored_exactly(
    dsn: str, sql: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "PAYLOAD_PIECE_CHARS", 1000)
    sql.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    written: list[EventBatch] = []
    async with running_ingest(dsn, make_config(RULES)) as run:
        run.ingest.on_batch = lambda batch, inserted: written.append(batch)
        with sql.transaction():
            sql.execute("INSERT INTO docs VALUES (1, %s), (2, 'small'), (3, %s)", [TEXT, TEXT[:700] * 5])
            sql.execute("UPDATE docs SET body = %s WHERE id = 2", [TEXT * 2])
        await wait_caught_up(run, dsn)
        bodies = [(e["rule"], e["op"], e["payload"]["new"]["body"]) for e in events(dsn)]
        expected = [(rule, "insert", body) for rule in "ab" for body in (TEXT, "small", TEXT[:700] * 5)]
        assert sorted(bodies) == sorted([*expected, ("a", "update", TEXT * 2)])
        # written again (a redelivery): nothing inserted, nothing overwritten, nothing left behind
        again = [b for b in written if b.payload]
        assert again and max(len(p) for b in again for p in b.payload) > 1000
        assert sum([await run.ingest.store.write_batch(b) for b in again]) == 0
    assert [(e["rule"], e["op"], e["payload"]["new"]["body"]) for e in events(dsn)] == bodies
    row: Any = sql.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    assert row[0] == 0
