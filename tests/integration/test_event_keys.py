"""The idempotency key the event insert builds in SQL (sql/queries/events.sql, insert_events) is the key
listener.rules.events.cdc_key makes in Python (invariant 2): for ordinary and edge inputs, whether the
commit LSN's text came from Python (the live stream) or from the server (the expander reads it back from
event_chunks)."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from listener.pg.lsn import format_lsn
from listener.queue import migrations
from listener.queue.batches import EventBatch
from listener.queue.store import StateStore
from listener.rules.events import cdc_key
from tests.support import BatchRule as Rule

Conn = psycopg.Connection[tuple[object, ...]]


RULES = ["r", "a/b/c", "/", "règle/ü😀", "x'); DROP TABLE events; --", " spaced "]
COMMITS = [
    0,
    0x16_B374D848,
    0x1_00000000,  # the high half's first bit
    0xFFFFFFFF_00000000,
    0x7FFFFFFF_FFFFFFFF,
    0x80000000_00000001,  # the top bit: no longer an int8
    0xFFFFFFFF_FFFFFFFF,
]
ORDINALS = [0, 1, 9, 10, 2**31 - 1, 2**31, 2**32 + 5, 2**53]


async def test_the_sql_key_is_cdc_key(dsn: str, sql: Conn) -> None:
    migrations.migrate(sql, "listener")
    server_text = {
        lsn: str(sql.execute("SELECT %s::pg_lsn::text", [format_lsn(lsn)]).fetchone()[0])  # type: ignore[index]
        for lsn in COMMITS
    }
    assert server_text == {lsn: format_lsn(lsn) for lsn in COMMITS}  # the expander's text is the live one
    batch = EventBatch()
    expected: dict[str, tuple[str, int, int]] = {}
    for rule in RULES:
        for commit in COMMITS:
            for ordinal in ORDINALS:
                gid = batch.group_id(Rule(rule), "insert", "public.t", server_text[commit], 7, None)
                payload = {"rule": rule, "commit": commit, "ordinal": ordinal}
                batch.add(gid, min(commit, 2**63 - 1), ordinal, json.dumps(payload))
                expected[cdc_key(rule, commit, ordinal)] = (rule, commit, ordinal)
                assert batch.event_key(len(batch) - 1) == cdc_key(rule, commit, ordinal)
    state = await StateStore.connect(dsn, schema="listener", slot="keys")
    try:
        assert await state.insert_events(batch) == (len(expected), 0, 0)
        assert await state.insert_events(batch) == (0, 0, 0)  # the same keys: redelivery inserts nothing
    finally:
        await state.close()
    rows: list[Any] = sql.execute(
        "SELECT e.idempotency_key, e.payload, r.id FROM listener.events e"
        " JOIN listener.runs r ON r.event_key = e.idempotency_key"
    ).fetchall()
    made = {key: (p["rule"], p["commit"], p["ordinal"]) for key, p, _ in rows}
    assert made == expected
    assert all(run_id == key for key, _, run_id in rows)  # one run per key, its id the key (invariant 3)
