"""Rules beyond table + operation: changed:, payload:, priority, message: and channel: sources."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from listener.errors import ConfigError
from tests.support import _wait_for, events, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]


def rule(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "workflow": "m:f", **fields}


async def test_changed_matches_only_updates_that_change_a_listed_column(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE tickets (id int PRIMARY KEY, priority int, note text, big text)")
    sql.execute("ALTER TABLE tickets REPLICA IDENTITY FULL")
    config = make_config([rule(table="tickets", on=["update"], changed=["priority", "big"])])
    big = "x" * 100  # small: sent in every update
    sql.execute("INSERT INTO tickets VALUES (1, 1, 'a', %s), (2, 1, 'a', %s)", [big, big])
    async with running_ingest(dsn, config) as run:
        sql.execute("UPDATE tickets SET note = 'b' WHERE id = 1")  # no listed column changed
        sql.execute("UPDATE tickets SET priority = 2 WHERE id = 1")  # changed
        sql.execute("UPDATE tickets SET priority = 2 WHERE id = 2")  # changed
        sql.execute("UPDATE tickets SET priority = 2, note = 'c' WHERE id = 2")  # same value again
        sql.execute("UPDATE tickets SET big = 'y' WHERE id = 1")  # changed
        await wait_caught_up(run, dsn)
    got = [
        (e["payload"]["new"]["id"], e["payload"]["new"]["priority"], e["payload"]["new"]["big"])
        for e in events(dsn)
    ]
    assert got == [(1, 2, big), (2, 2, big), (1, 2, "y")]


async def test_changed_counts_unchanged_toast_as_unchanged(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, title text)")
    sql.execute("ALTER TABLE docs REPLICA IDENTITY FULL")
    config = make_config([rule(table="docs", on=["update"], changed=["body"])])
    body = "".join(f"{i:x}" for i in range(40_000))  # incompressible enough to be TOASTed out of line
    sql.execute("INSERT INTO docs VALUES (1, %s, 'a')", [body])
    async with running_ingest(dsn, config) as run:
        sql.execute("UPDATE docs SET title = 'b'")  # body unchanged (and not sent)
        sql.execute("UPDATE docs SET body = 'short'")
        await wait_caught_up(run, dsn)
    got = events(dsn)
    assert [e["payload"]["new"]["body"] for e in got] == ["short"]


async def test_payload_picks_and_renames_columns(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE contracts (id int PRIMARY KEY, status text, amount numeric, secret text)")
    sql.execute("ALTER TABLE contracts REPLICA IDENTITY FULL")
    config = make_config(
        [
            rule(name="picked", table="contracts", on=["insert"], payload=["id", "amount"]),
            rule(
                name="renamed",
                table="contracts",
                on=["update"],
                payload={"contract": "new.id", "now": "new.status", "was": "old.status"},
            ),
        ]
    )
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO contracts VALUES (7, 'draft', 12.50, 'pw')")
        sql.execute("UPDATE contracts SET status = 'signed'")
        await wait_caught_up(run, dsn)
    got = {e["rule"]: e["payload"] for e in events(dsn)}
    assert got["picked"] == {"data": {"id": 7, "amount": "12.50"}, "unchanged_toast": []}
    assert got["renamed"] == {"data": {"contract": 7, "now": "signed", "was": "draft"}, "unchanged_toast": []}


def test_payload_and_changed_name_real_columns(dsn: str, sql: Conn) -> None:
    from listener.rules.catalog import read_tables
    from listener.rules.compile import RuleSet

    sql.execute("CREATE TABLE contracts (id int PRIMARY KEY, status text)")
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"changed": ["stauts"]}, "changed", "changed: no column 'stauts' in public.contracts"),
        ({"payload": ["id", "stats"]}, "payload", "payload.stats: no column 'stats' in public.contracts"),
        ({"payload": {"was": "old.status"}}, "payload", "needs the old value of 'status'"),
    ]
    for bad, key, message in cases:
        config = make_config([rule(table="contracts", on=["insert", "update"], **bad)])
        tables, collation = read_tables(sql, ["public.contracts"])
        with pytest.raises(ConfigError) as caught:
            RuleSet.from_config(config, tables, collation)
        assert message in str(caught.value), key
        assert caught.value.rule == "r"
        assert caught.value.hint
    assert "status" in str(caught.value.hint) or "REPLICA IDENTITY FULL" in str(caught.value.hint)


async def test_priority_orders_the_claims(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE jobs (id int PRIMARY KEY, urgent bool)")
    config = make_config(
        [
            rule(name="normal", table="jobs", on=["insert"]),
            rule(name="urgent", table="jobs", on=["insert"], priority=10, workflow="m:g"),
        ]
    )
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO jobs SELECT g, false FROM generate_series(1, 5) g")
        await wait_caught_up(run, dsn)
    rows = sql.execute(
        "SELECT workflow, priority FROM listener.runs"
        " WHERE status = 'pending' AND NOT gated ORDER BY priority DESC, run_after, seq LIMIT 5"
    ).fetchall()
    assert rows == [("m:g", 10)] * 5  # what a claim takes first


async def test_logical_decoding_messages_become_events(dsn: str, sql: Conn) -> None:
    config = make_config(
        [rule(name="orders", message="orders"), rule(name="audit", message="audit", workflow="m:g")]
    )
    async with running_ingest(dsn, config) as run:
        with sql.transaction():
            sql.execute("SELECT pg_logical_emit_message(true, 'orders', '{\"order\": 1}')")
            sql.execute("SELECT pg_logical_emit_message(true, 'orders', '{\"order\": 2}')")
            sql.execute("SELECT pg_logical_emit_message(true, 'other', 'ignored')")
        with sql.transaction():
            sql.execute("SELECT pg_logical_emit_message(true, 'orders', 'rolled back')")
            raise psycopg.Rollback()
        sql.execute("SELECT pg_logical_emit_message(false, 'audit', 'not json')")
        await wait_caught_up(run, dsn)
    got = events(dsn)
    assert [(e["rule"], e["op"], e["payload"]["data"]) for e in got] == [
        ("orders", "message", {"order": 1}),
        ("orders", "message", {"order": 2}),
        ("audit", "message", None),
    ]
    first, second, audit = got
    assert first["idempotency_key"].endswith("/0") and second["idempotency_key"].endswith("/1")
    assert first["commit_lsn"] == second["commit_lsn"]
    assert audit["payload"]["content"] == "not json" and audit["payload"]["transactional"] is False


async def test_notify_payloads_become_events_while_listening(dsn: str, sql: Conn) -> None:
    config = make_config([rule(name="hooks", channel="webhooks")])
    async with running_ingest(dsn, config) as run:
        await _wait_for(run.ingest.listening.is_set, "LISTEN on the rule channels")
        sql.execute('NOTIFY webhooks, \'{"id": "evt_1"}\'')
        sql.execute("NOTIFY webhooks, 'plain'")
        sql.execute("NOTIFY elsewhere, 'x'")
        await _wait_for(lambda: len(events(dsn)) >= 2, "two NOTIFY events")
    got = events(dsn)
    assert [(e["rule"], e["op"], e["payload"]["data"], e["payload"]["content"]) for e in got] == [
        ("hooks", "notify", {"id": "evt_1"}, '{"id": "evt_1"}'),
        ("hooks", "notify", None, "plain"),
    ]
    assert got[0]["commit_lsn"] is None and got[0]["lsn"] is None
    assert len({e["idempotency_key"] for e in got}) == 2


async def test_a_predicate_that_fails_stops_ingest_naming_rule_and_lsn(dsn: str, sql: Conn) -> None:
    """PostgreSQL would raise ("integer out of range"): the service stops there, acknowledging nothing
    past the change, instead of guessing a match."""
    from listener.errors import RuleEvaluationError

    sql.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
    config = make_config([rule(table="items", on=["insert"], when="new.n * 1000000 > 5")])
    with pytest.raises(RuleEvaluationError) as caught:
        async with running_ingest(dsn, config) as run:
            sql.execute("INSERT INTO items VALUES (1, 1)")
            await wait_caught_up(run, dsn)
            sql.execute("INSERT INTO items VALUES (2, 100000)")
            await wait_caught_up(run, dsn)
    text = str(caught.value)
    assert "rule 'r' on public.items at LSN " in text and "integer out of range" in text
    assert caught.value.hint is not None and "when:" in caught.value.hint
    assert [e["payload"]["new"]["id"] for e in events(dsn)] == [1]
    row = sql.execute(
        "SELECT confirmed_flush_lsn <= (SELECT lsn FROM listener.checkpoints) FROM pg_replication_slots"
    ).fetchone()
    assert row == (True,)
