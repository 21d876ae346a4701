"""Parked queue messages from the CLI: `listener queues` (positions, parked counts), `queues parked` (the
listing, `--show` of one), and `listener replay --queue` reading them again with the current `format:` and
rules: events under the keys they would have had live, marked retried in the same transaction, once;
those still unreadable stay parked with the reason of now.  The rows are parked as the live source parks
them (``park_row`` into ``EventBatch.parked``, written by ``StateStore.write_batch``)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from listener.ingest.brokers import Message
from listener.ingest.queues import park_row, read_message
from listener.queue.batches import EventBatch
from listener.queue.store import StateStore
from listener.rules.compile import RuleSet
from listener.rules.config import Config
from tests.support import SLOT, cli, write_config

Conn = psycopg.Connection[tuple[object, ...]]
SENT = datetime(2026, 3, 1, 12, 0, 4, 500000, tzinfo=UTC)
KAFKA = {"brokers": ["127.0.0.1:1"], "topics": ["orders"], "group": "listener"}
REDIS = {"url": "redis://127.0.0.1:1/0", "stream": "notes", "group": "listener"}
WHEN_FAILS = "(body->>'amount')::int > 10"  # fails on {"amount": "abc"}
WHEN_FIXED = "body->>'amount' IS NOT NULL"
NOT_UTF8 = b"\xff\xfe\x00binary"


def kafka(offset: int, body: bytes, **fields: Any) -> Message:
    return Message("orders:0", (offset,), f"orders:0:{offset}", "orders", body, sent_at=SENT, **fields)


def redis(ms: int, seq: int, body: bytes) -> Message:
    return Message("notes", (ms, seq), f"notes:{ms}-{seq}", "notes", body, sent_at=SENT)


# Parked by the configuration of write_setup(fixed=False): json orders whose rule's `when:` casts.
PLAIN = kafka(5, b"hello, plain text")  # not JSON
CAST = kafka(6, b'{"amount": "abc"}', key=b"order-6", headers=[("trace", b"t-1"), ("sig", b"\x00\xff")])
BINARY = kafka(7, NOT_UTF8, key=b"\xfe\x01")  # not UTF-8 either way
NOTE = redis(1700000000000, 3, b"remember the milk")  # a text note on a json queue


def write_setup(path: Path, *, fixed: bool) -> Config:
    """The configuration that parked the messages, or (``fixed``) the one that reads them."""
    queues = [
        {"name": "orders", "kafka": KAFKA},
        {"name": "notes", "redis_stream": REDIS, "format": "text" if fixed else "json"},
    ]
    rules = [
        {"name": "big", "queue": "orders", "when": WHEN_FIXED if fixed else WHEN_FAILS, "workflow": "m:f"},
        {"name": "note", "queue": "notes", "workflow": "m:f"},
    ]
    return write_config(path, rules, queues=queues)


def park(dsn: str, config: Config) -> None:
    """The four messages parked as the live sources park them: with their reason, and the positions moved
    past them in the same batch."""
    rules = RuleSet(config.rules, config.limits, tables={}).queues
    batch = EventBatch()
    for queue, form, message in (
        ("orders", "json", PLAIN), ("orders", "json", CAST), ("orders", "json", BINARY),
        ("notes", "json", NOTE),
    ):  # fmt: skip
        read = read_message(queue, form, message, rules[queue], datetime.now(UTC))
        assert read.parked is not None, message
        batch.parked.append(park_row(queue, message, read.parked))
        batch.positions[(queue, message.part)] = max(
            message.position, batch.positions.get((queue, message.part), ())
        )

    async def write() -> None:
        store = await StateStore.connect(dsn, schema=config.state_schema, slot=SLOT, max_size=1)
        try:
            await store.write_batch(batch)
        finally:
            await store.close()

    asyncio.run(write())


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def events(sql: Conn) -> dict[str, Any]:
    rows = sql.execute("SELECT idempotency_key, payload FROM listener.events ORDER BY 1").fetchall()
    return {str(key): payload for key, payload in rows}


def runs(sql: Conn) -> list[str]:
    return [str(r[0]) for r in sql.execute("SELECT event_key FROM listener.runs ORDER BY 1").fetchall()]


def parked_rows(sql: Conn) -> dict[str, tuple[str, datetime | None]]:
    rows = sql.execute(
        "SELECT queue || ' ' || part || ' ' || array_to_string(position, '-'), reason, retried_at "
        "FROM listener.queue_parked"
    ).fetchall()
    return {str(r[0]): (str(r[1]), r[2]) for r in rows}  # type: ignore[misc]


def test_queues_lists_positions_and_parked_counts(sql: Conn, dsn: str, tmp_path: Path) -> None:
    config = write_setup(tmp_path / "listener.yaml", fixed=False)
    result = cli(dsn, config, "queues", "--json")
    assert result.exit_code == 0, result.output
    empty = json_lines(result.stdout)
    assert [(q["name"], q["broker"], q["parts"], q["parked"]) for q in empty] == [
        ("orders", "kafka", [], 0),
        ("notes", "redis_stream", [], 0),
    ]
    park(dsn, config)
    result = cli(dsn, config, "queues", "--json")
    assert result.exit_code == 0, result.output
    found = {q["name"]: q for q in json_lines(result.stdout)}
    assert [(p["part"], p["position"]) for p in found["orders"]["parts"]] == [("orders:0", "7")]
    assert [(p["part"], p["position"]) for p in found["notes"]["parts"]] == [("notes", "1700000000000-3")]
    assert (found["orders"]["parked"], found["notes"]["parked"]) == (3, 1)
    assert found["orders"]["configured"] and found["orders"]["last_parked"] is not None

    table = cli(dsn, config, "queues")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    orders = next(line for line in lines if "orders:0" in line)
    assert "orders" in orders and "kafka" in orders and " 7 " in orders and orders.rstrip(" │").endswith("3")
    notes = next(line for line in lines if "1700000000000-3" in line)
    assert "redis_stream" in notes and notes.rstrip(" │").endswith("1")
    assert "listener replay --queue NAME" in table.stdout

    # a queue dropped from the configuration is still shown while its rows are there
    alone = write_config(tmp_path / "alone.yaml", [{"name": "big", "queue": "orders", "workflow": "m:f"}],
                         queues=[{"name": "orders", "kafka": KAFKA}])  # fmt: skip
    result = cli(dsn, alone, "queues", "--json")
    assert [(q["name"], q["broker"], q["parked"]) for q in json_lines(result.stdout)] == [
        ("orders", "kafka", 3),
        ("notes", None, 1),
    ]


def test_parked_listing_and_show(sql: Conn, dsn: str, tmp_path: Path) -> None:
    config = write_setup(tmp_path / "listener.yaml", fixed=False)
    park(dsn, config)

    result = cli(dsn, config, "queues", "parked", "--json")
    assert result.exit_code == 0, result.output
    rows = json_lines(result.stdout)
    assert sorted((r["queue"], r["part"], r["position"], r["topic"], r["bytes"]) for r in rows) == [
        ("notes", "notes", "1700000000000-3", "notes", len(NOTE.body)),
        ("orders", "orders:0", "5", "orders", len(PLAIN.body)),
        ("orders", "orders:0", "6", "orders", len(CAST.body)),
        ("orders", "orders:0", "7", "orders", len(NOT_UTF8)),
    ]
    reasons = {r["position"]: r["reason"] for r in rows}
    assert reasons["5"].startswith("the body is not JSON")
    assert reasons["6"].startswith("rule 'big': `when:` failed on this message: invalid input syntax")
    assert reasons["7"] == "the body is not UTF-8 (byte 0)"
    assert all(r["retried_at"] is None and r["sent_at"] == SENT.isoformat() for r in rows)

    only = json_lines(cli(dsn, config, "queues", "parked", "--queue", "notes", "--json").stdout)
    assert [r["position"] for r in only] == ["1700000000000-3"]
    limited = json_lines(cli(dsn, config, "queues", "parked", "--limit", "2", "--json").stdout)
    assert len(limited) == 2

    table = cli(dsn, config, "queues", "parked", "--queue", "orders")
    assert table.exit_code == 0, table.output
    assert "3 parked message(s), oldest first" in table.stdout and "not UTF-8" in table.stdout
    assert "retried" not in table.stdout.splitlines()[1]  # the column comes with --all

    # one message: headers, key, body (JSON: whole, base64; text: as text, or hex when not UTF-8)
    shown = cli(dsn, config, "queues", "parked", "--queue", "orders", "--show", "6", "--json")
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert (doc["part"], doc["position"], doc["key"]) == ("orders:0", "6", "order-6")
    assert doc["headers"] == {"trace": "t-1", "sig": {"base64": base64.b64encode(b"\x00\xff").decode()}}
    assert doc["body_text"] == '{"amount": "abc"}' and base64.b64decode(doc["body_base64"]) == CAST.body
    binary = json.loads(
        cli(dsn, config, "queues", "parked", "--queue", "orders", "--show", "7", "--json").stdout
    )
    assert binary["body_text"] is None and base64.b64decode(binary["body_base64"]) == NOT_UTF8
    assert binary["key"] == "base64:" + base64.b64encode(b"\xfe\x01").decode()

    text = cli(dsn, config, "queues", "parked", "--queue", "orders", "--show", "orders:0:5")
    assert text.exit_code == 0, text.output
    assert "parked message orders orders:0:5" in text.stdout and "hello, plain text" in text.stdout
    assert "the body is not JSON" in text.stdout
    hexed = cli(dsn, config, "queues", "parked", "--queue", "orders", "--show", "7")
    assert "not UTF-8, as hex" in hexed.stdout and "ff fe 00 62 69 6e" in hexed.stdout
    redis_entry = cli(dsn, config, "queues", "parked", "--queue", "notes", "--show", "1700000000000-3")
    assert redis_entry.exit_code == 0 and "remember the milk" in redis_entry.stdout

    # errors a user can make: what is wrong, and the fix; exit code 2
    bad = cli(dsn, config, "queues", "parked", "--queue", "orders", "--show", "six")
    assert bad.exit_code == 2 and "--show 'six' is not a position: give a Kafka offset" in bad.stderr
    assert "fix: e.g. --show 1234" in bad.stderr
    redis_bad = cli(dsn, config, "queues", "parked", "--queue", "notes", "--show", "17")
    assert redis_bad.exit_code == 2 and "milliseconds-sequence" in redis_bad.stderr
    missing = cli(dsn, config, "queues", "parked", "--queue", "orders", "--show", "99")
    assert missing.exit_code == 2 and "queue 'orders' has no parked message at 99" in missing.stderr
    unknown = cli(dsn, config, "queues", "parked", "--queue", "ordres")
    assert unknown.exit_code == 2, unknown.output
    assert (
        "--queue ordres: no queue named 'ordres'" in unknown.stderr
        and "did you mean 'orders'?" in unknown.stderr
    )
    no_queue = cli(dsn, config, "queues", "parked", "--show", "6")
    assert no_queue.exit_code == 2 and "--show needs --queue NAME" in no_queue.stderr


def test_replay_queue_reads_parked_messages_again_once(sql: Conn, dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    park(dsn, write_setup(path, fixed=False))
    before = parked_rows(sql)

    # the same configuration: nothing reads, nothing is written, the reasons stay
    same = cli(dsn, write_setup(path, fixed=False), "replay", "--queue", "orders", "--json")
    assert same.exit_code == 0, same.output
    doc = json.loads(same.stdout)
    assert (doc["messages"], doc["retried"], doc["events_inserted"], len(doc["still_parked"])) == (3, 0, 0, 3)
    assert events(sql) == {} and parked_rows(sql) == before

    config = write_setup(path, fixed=True)
    # a dry run counts and writes nothing
    dry = cli(dsn, config, "replay", "--queue", "orders", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    doc = json.loads(dry.stdout)
    assert (doc["dry_run"], doc["messages"], doc["retried"], doc["new_runs"], doc["events_inserted"]) == (
        True, 3, 1, 1, 0,
    )  # fmt: skip
    assert doc["rules"] == {"big": {"events": 1, "present": 0, "new": 1}}
    assert [s["message"] for s in doc["still_parked"]] == ["orders:0:5", "orders:0:7"]
    assert events(sql) == {} and runs(sql) == [] and parked_rows(sql) == before

    # the cast reads now (the fixed `when:` matches it); orders stays `format: json`, so the plain text
    # still fails, and the body that is not UTF-8 fails whatever the format
    result = cli(dsn, config, "replay", "--queue", "orders")
    assert result.exit_code == 0, result.output
    assert "1 message(s) retried: made 1 new event(s) and run(s)" in result.stdout
    assert "2 message(s) still parked" in result.stdout
    assert "orders:0:7: the body is not UTF-8 (byte 0)" in result.stdout
    assert "orders:0:5: the body is not JSON" in result.stdout
    made = events(sql)
    assert list(made) == ["big/orders/orders:0:6/0"]
    payload = made["big/orders/orders:0:6/0"]
    assert payload["data"] == {"amount": "abc"}
    assert payload["message"] == {
        "queue": "orders", "topic": "orders", "position": "orders:0:6", "key": "order-6",
        "sent_at": SENT.isoformat(), "headers": {"trace": "t-1", "sig": {"base64": "AP8="}},
    }  # fmt: skip
    assert runs(sql) == ["big/orders/orders:0:6/0"]
    after = parked_rows(sql)
    assert after["orders orders:0 6"][0] == before["orders orders:0 6"][0]  # why it was parked, kept
    assert after["orders orders:0 6"][1] is not None
    assert after["orders orders:0 5"][1] is None and after["orders orders:0 7"][1] is None
    assert after["notes notes 1700000000000-3"] == before["notes notes 1700000000000-3"]  # another queue

    # again: the retried one is not read again, nothing is made twice
    again = json.loads(cli(dsn, config, "replay", "--queue", "orders", "--json").stdout)
    assert (again["messages"], again["retried"], again["events_inserted"]) == (2, 0, 0)
    assert [s["message"] for s in again["still_parked"]] == ["orders:0:5", "orders:0:7"]
    # even when its row is made to wait again: its event's key exists, so it inserts nothing
    sql.execute("UPDATE listener.queue_parked SET retried_at = NULL WHERE position = '{6}'")
    forced = json.loads(cli(dsn, config, "replay", "--queue", "orders", "--json").stdout)
    assert (forced["retried"], forced["events_inserted"], forced["new_runs"]) == (1, 0, 0)
    assert forced["rules"]["big"] == {"events": 1, "present": 1, "new": 0}
    assert list(events(sql)) == ["big/orders/orders:0:6/0"] and len(runs(sql)) == 1

    # a still-unreadable message's reason is the one of now
    sql.execute("UPDATE listener.queue_parked SET reason = 'an old reason' WHERE position = '{7}'")
    cli(dsn, config, "replay", "--queue", "orders", "--position", "7")
    assert parked_rows(sql)["orders orders:0 7"] == ("the body is not UTF-8 (byte 0)", None)


def test_replay_one_message_after_the_format_is_fixed(sql: Conn, dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    park(dsn, write_setup(path, fixed=False))
    config = write_setup(path, fixed=True)  # notes: `format: text`

    # one message by its label (a Redis entry id); the dry run first
    dry = cli(dsn, config, "replay", "--queue", "notes", "--position", "notes:1700000000000-3", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "1 message(s) would be retried: would make 1 new event(s) and run(s)" in dry.stdout
    assert "dry run: nothing was written" in dry.stdout and events(sql) == {}

    result = cli(
        dsn, config, "replay", "--queue", "notes", "--part", "notes", "--position", "1700000000000-3"
    )
    assert result.exit_code == 0, result.output
    assert "queue notes, message notes:1700000000000-3" in result.stdout
    assert "1 message(s) retried: made 1 new event(s) and run(s)" in result.stdout
    made = events(sql)
    assert list(made) == ["note/notes/notes:1700000000000-3/0"]
    assert made["note/notes/notes:1700000000000-3/0"]["data"] == "remember the milk"
    assert runs(sql) == ["note/notes/notes:1700000000000-3/0"]

    twice = cli(dsn, config, "replay", "--queue", "notes", "--position", "1700000000000-3")
    assert twice.exit_code == 0 and "no parked message waits for a retry: nothing to do" in twice.stdout
    assert len(runs(sql)) == 1

    listed = json_lines(cli(dsn, config, "queues", "parked", "--queue", "notes", "--all", "--json").stdout)
    assert [(r["position"], r["retried_at"] is not None) for r in listed] == [("1700000000000-3", True)]
    assert cli(dsn, config, "queues", "parked", "--queue", "notes").stdout.startswith("no parked messages")
    overview = {q["name"]: q["parked"] for q in json_lines(cli(dsn, config, "queues", "--json").stdout)}
    assert overview == {"orders": 3, "notes": 0}


def test_replay_queue_errors(sql: Conn, dsn: str, tmp_path: Path) -> None:
    park(dsn, write_setup(tmp_path / "listener.yaml", fixed=False))
    config = write_setup(tmp_path / "listener.yaml", fixed=True)
    unknown = cli(dsn, config, "replay", "--queue", "payments")
    assert unknown.exit_code == 2, unknown.output
    assert "error: --queue payments: no queue named 'payments'" in unknown.stderr
    assert "its queues: orders, notes" in unknown.stderr and "fix:" in unknown.stderr
    bad = cli(dsn, config, "replay", "--queue", "notes", "--position", "12x")
    assert bad.exit_code == 2 and "--position '12x' is not a position" in bad.stderr
    assert "fix: e.g. --position 1700000000000-0" in bad.stderr
    missing = cli(dsn, config, "replay", "--queue", "orders", "--position", "orders:1:5")
    assert missing.exit_code == 2 and "queue 'orders' has no parked message at orders:1:5" in missing.stderr
    part_alone = cli(dsn, config, "replay", "--queue", "orders", "--part", "orders:0")
    assert part_alone.exit_code == 2 and "--part orders:0 needs --position" in part_alone.stderr
    mixed = cli(dsn, config, "replay", "--queue", "orders", "--since", "1h")
    assert mixed.exit_code == 2 and "--queue retries parked messages: it takes no --from-time" in mixed.stderr
    neither = cli(dsn, config, "replay")
    assert neither.exit_code == 2 and "Missing option '--from-time'" in neither.stderr
    assert events(sql) == {} and all(r[1] is None for r in parked_rows(sql).values())
