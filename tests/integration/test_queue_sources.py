"""Queue sources end to end, against real brokers (tests/brokers.py: redis-server, nats-server with JetStream,
librdkafka's mock Kafka) and a real state database: messages become events keyed by their broker position,
stored with that position before the broker is acknowledged; a restart resumes from the stored position,
whatever the broker says; unreadable messages are parked; back-pressure stops fetching
(listener.ingest.queues and listener.ingest.brokers)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis

from listener.errors import ConfigError
from listener.ingest import Ingest
from listener.ingest.queues import QueueSource, make_broker
from listener.rules.config import Config, load_config
from tests.queue_buses import BROKERS, Bus, Sent, Watched, eventually, made_bus
from tests.support import running_ingest, write_config

Conn = psycopg.Connection[tuple[object, ...]]
WORKFLOW = "listener_examples.tickets:triage"
QUEUE = "jobs"


@pytest.fixture(params=BROKERS)
async def bus(request: pytest.FixtureRequest, broker_name: str) -> AsyncIterator[Bus]:
    async with made_bus(request.param, request, broker_name) as made:
        yield made


def rule(name: str, **settings: Any) -> dict[str, Any]:
    return {"name": name, "queue": QUEUE, "workflow": WORKFLOW, **settings}


def config(
    tmp_path: Path, bus: Bus, rules: Sequence[dict[str, Any]], name: str = "c", **queue: Any
) -> Config:
    entry = {"name": QUEUE, **bus.entry(), **queue}
    return write_config(tmp_path / f"{name}.yaml", rules, queues=[entry])


@asynccontextmanager
async def reading(
    sql: Conn, cfg: Config, *, forget_positions: bool = False, lose_acks: bool = False
) -> AsyncIterator[Watched]:
    """An ingest reading the config's queue through a :class:`Watched` broker (no workers)."""
    settings = cfg.queues[0]
    watched = Watched(
        make_broker(settings), settings.name, forget_positions=forget_positions, lose_acks=lose_acks
    )
    source = QueueSource(settings, broker=watched)

    def attach(ingest: Ingest) -> None:
        source.attach(ingest)
        watched.store = ingest.store

    async with running_ingest(sql.info.dsn, cfg, attach=[attach]):
        yield watched
    assert watched.early == [], f"acknowledged before their position was stored: {watched.early}"


def events(sql: Conn, rule: str | None = None) -> list[dict[str, Any]]:
    """The queue's events in insertion order, with their runs."""
    rows = sql.execute(
        "SELECT e.idempotency_key, e.rule, e.source, e.payload, r.status, r.gated, r.key"
        " FROM listener.events e JOIN listener.runs r ON r.event_key = e.idempotency_key"
        " WHERE e.source = 'queue' AND (%s::text IS NULL OR e.rule = %s) ORDER BY e.seq",
        [rule, rule],
    ).fetchall()
    names = ("key", "rule", "source", "payload", "status", "gated", "run_key")
    return [dict(zip(names, row, strict=True)) for row in rows]


def count(sql: Conn, table: str) -> int:
    row = sql.execute(f"SELECT count(*) FROM listener.{table}").fetchone()
    assert row is not None
    return int(str(row[0]))


def positions(sql: Conn) -> dict[str, tuple[int, ...]]:
    rows = sql.execute("SELECT part, position FROM listener.queue_positions WHERE queue = %s", [QUEUE])
    return {str(part): tuple(position) for part, position in rows}  # type: ignore[arg-type]


async def read_up_to(sql: Conn, bus: Bus, last: Sent, events_: int | None = None) -> None:
    """Wait until ``last`` is stored and acknowledged (and the queue has ``events_`` events)."""

    async def done() -> bool:
        stored = positions(sql).get(last.part, ())
        if stored < last.position or (events_ is not None and count(sql, "events") < events_):
            return False
        return await bus.acknowledged(last)

    await eventually(done, f"{last.label} stored and acknowledged")


def body(n: int, **more: Any) -> bytes:
    return json.dumps({"n": n, **more}).encode()


async def test_each_message_is_one_event_keyed_by_its_position_and_stored_with_it(
    sql: Conn, tmp_path: Path, bus: Bus
) -> None:
    cfg = config(tmp_path, bus, [rule("r")])
    key = b"cust-7" if bus.keys else None
    sent = [await bus.send(body(n, kind="order"), key=key, headers={"tenant": b"acme"}) for n in range(3)]
    async with reading(sql, cfg) as watched:
        await read_up_to(sql, bus, sent[-1], 3)
    found = events(sql)
    assert [e["key"] for e in found] == [f"r/{QUEUE}/{s.label}/0" for s in sent]
    for n, (event, s) in enumerate(zip(found, sent, strict=True)):
        assert event["rule"] == "r" and event["source"] == "queue"
        assert event["status"] == "pending" and not event["gated"] and event["run_key"] is None
        payload = event["payload"]
        assert payload["data"] == {"n": n, "kind": "order"}
        message = payload["message"]
        assert message.pop("sent_at") is not None
        assert message == {
            "queue": QUEUE,
            "topic": bus.topic,
            "position": s.label,
            "key": "cust-7" if bus.keys else None,
            "headers": {"tenant": "acme"},
        }
    assert positions(sql) == {sent[-1].part: sent[-1].position}
    # acknowledged (every acknowledgement checked in Watched.ack: after its position was stored)
    assert [m.label for m in watched.acked] == [s.label for s in sent]
    assert count(sql, "queue_parked") == 0


# Each `when:` over the message's columns: body and headers (jsonb), key and topic (text).
WHEN = {
    "by_body": "body->>'kind' = 'order' AND (body->>'amount')::numeric > 10",
    "by_header": "headers->>'tenant' = 'acme' AND NOT headers ? 'test'",
    "by_key": "key LIKE 'cust-%'",
    "no_key": "key IS NULL",
    "by_topic": "topic = '{topic}'",
    "not_topic": "topic <> '{topic}'",
    "nested": 'body @> \'{{"items": [{{"sku": "A1"}}]}}\' OR body->\'items\'->>2 IS NOT NULL',
}
MESSAGES: list[tuple[dict[str, Any], bytes | None, dict[str, bytes]]] = [
    ({"kind": "order", "amount": 12.5}, b"cust-1", {"tenant": b"acme"}),
    ({"kind": "order", "amount": 9}, b"cust-2", {"tenant": b"acme", "test": b"1"}),
    ({"kind": "refund", "amount": 50}, b"other", {"tenant": b"globex"}),
    ({"kind": "order", "items": [{"sku": "A1", "qty": 2}]}, None, {}),
    ({"items": [1, 2, 3]}, b"cust-", {"tenant": b"ACME"}),
    ({"kind": "order", "amount": "11"}, b"", {"tenant": b"acme"}),
]


async def test_when_filters_over_body_headers_key_and_topic_as_postgres_evaluates_it(
    sql: Conn, tmp_path: Path, bus: Bus
) -> None:
    whens = {name: text.format(topic=bus.topic) for name, text in WHEN.items()}
    cfg = config(tmp_path, bus, [rule(name, when=text) for name, text in whens.items()])
    sent = []
    for n, (data, key, headers) in enumerate(MESSAGES):
        sent.append(await bus.send(body(n, **data), key=key if bus.keys else None, headers=headers))
    async with reading(sql, cfg):
        await read_up_to(sql, bus, sent[-1])
    made = {(e["rule"], e["payload"]["data"]["n"]) for e in events(sql)}
    # what PostgreSQL itself says of each `when:` over the same values
    expected = set()
    for n, (data, key, headers) in enumerate(MESSAGES):
        values = [
            json.dumps({"n": n, **data}),
            json.dumps({name: value.decode() for name, value in headers.items()}),
            key.decode() if bus.keys and key is not None else None,
            bus.topic,
        ]
        for name, text in whens.items():
            row = sql.execute(
                f"SELECT coalesce(({text.replace('%', '%%')}), false) FROM (SELECT %s::jsonb AS body,"
                " %s::jsonb AS headers, %s::text AS key, %s::text AS topic) AS m",
                values,
            ).fetchone()
            assert row is not None
            if row[0]:
                expected.add((name, n))
    assert made == expected
    assert ("by_body", 0) in made and ("by_body", 1) not in made and ("nested", 3) in made  # not vacuous
    assert {n for name, n in made if name == "by_topic"} == set(range(len(MESSAGES)))
    assert not any(name == "not_topic" for name, _ in made)
    assert count(sql, "queue_parked") == 0


async def test_payload_and_key_pick_parts_of_the_message(sql: Conn, tmp_path: Path, bus: Bus) -> None:
    payload = {
        "customer": "body.customer.id",
        "first": "body.items.0",
        "tenant": "headers.tenant",
        "topic": "topic",
    }
    if bus.keys:
        payload["key"] = "key"
    picked = rule("picked", payload=payload, key="{body.customer.id}/{headers.tenant}", key_concurrency=1)
    cfg = config(tmp_path, bus, [picked])
    data = {"customer": {"id": "c-9", "name": "Ann"}, "items": [{"sku": "A1"}, {"sku": "B2"}]}
    last = await bus.send(
        json.dumps(data).encode(), key=b"k-1" if bus.keys else None, headers={"tenant": b"acme"}
    )
    async with reading(sql, cfg):
        await read_up_to(sql, bus, last, 1)
    [event] = events(sql)
    expected: dict[str, Any] = {
        "customer": "c-9",
        "first": {"sku": "A1"},
        "tenant": "acme",
        "topic": bus.topic,
    }
    if bus.keys:
        expected["key"] = "k-1"
    assert event["payload"]["data"] == expected
    assert event["payload"]["message"]["position"] == last.label
    assert event["gated"] and event["run_key"] == "picked:c-9|acme"  # the fields, scoped by the rule


async def test_a_restart_resumes_from_the_stored_position_not_the_broker_s(
    sql: Conn, tmp_path: Path, bus: Bus
) -> None:
    """The broker's group (consumer) is moved back to the beginning while listener is down: the restart
    has it deliver only what comes after the stored position.  A second rule, added for the restart, would
    make an event of any message read again."""
    first = [await bus.send(body(n)) for n in range(5)]
    async with reading(sql, config(tmp_path, bus, [rule("r")])):
        await read_up_to(sql, bus, first[-1], 5)
    stored = positions(sql)
    assert stored == {first[-1].part: first[-1].position}
    await bus.move_back()
    again = config(tmp_path, bus, [rule("r"), rule("again")], "again")
    async with reading(sql, again) as watched:
        later = [await bus.send(body(n)) for n in range(5, 7)]
        await read_up_to(sql, bus, later[-1], 5 + 2 * 2)
    assert watched.started_at == stored
    assert [m.label for m in watched.fetched] == [s.label for s in later]  # none delivered twice
    assert [e["payload"]["data"]["n"] for e in events(sql, "again")] == [5, 6]
    assert [e["payload"]["data"]["n"] for e in events(sql, "r")] == list(range(7))
    assert positions(sql) == {later[-1].part: later[-1].position}


async def test_a_message_delivered_again_at_or_below_the_stored_position_makes_nothing(
    sql: Conn, tmp_path: Path, bus: Bus
) -> None:
    """The broker is moved back and the restart does not tell it the stored position (as if a seek or a
    SETID were lost): it delivers every message again; each one already stored is acknowledged, not read
    (the rule added for the restart makes events of the new messages only)."""
    first = [await bus.send(body(n)) for n in range(5)]
    async with reading(sql, config(tmp_path, bus, [rule("r")])):
        await read_up_to(sql, bus, first[-1], 5)
    await bus.move_back()
    again = config(tmp_path, bus, [rule("r"), rule("again")], "again")
    async with reading(sql, again, forget_positions=True) as watched:
        later = [await bus.send(body(n)) for n in range(5, 7)]
        await read_up_to(sql, bus, later[-1], 5 + 2 * 2)
    labels = [s.label for s in first + later]
    assert [m.label for m in watched.fetched] == labels  # the old ones were delivered again ...
    assert sorted(m.label for m in watched.acked) == sorted(labels)  # ... and acknowledged
    assert [e["payload"]["data"]["n"] for e in events(sql, "again")] == [5, 6]  # ... but not read
    assert count(sql, "events") == 9
    assert positions(sql) == {later[-1].part: later[-1].position}


async def test_acknowledgements_lost_after_the_commit_are_made_again_after_a_restart(
    sql: Conn, tmp_path: Path, bus: Bus
) -> None:
    """The first reader's acknowledgements never reach the broker (it died right after its commits): the
    next one leaves nothing unacknowledged at the broker, and reads nothing twice."""
    first = [await bus.send(body(n)) for n in range(5)]
    cfg = config(tmp_path, bus, [rule("r")])
    async with reading(sql, cfg, lose_acks=True):
        await eventually(
            lambda: asyncio.sleep(0, positions(sql) == {first[-1].part: first[-1].position}), "stored"
        )
    assert not await bus.acknowledged(first[-1])
    async with reading(sql, cfg):
        later = [await bus.send(body(n)) for n in range(5, 7)]
        await read_up_to(sql, bus, later[-1], 7)
    assert [e["payload"]["data"]["n"] for e in events(sql)] == list(range(7))


UNREADABLE = [
    (b"\xff\xfe{}", re.escape("the body is not UTF-8 (byte 0)")),
    (b'{"n": ', "not JSON|JSON"),
    (b'{"n": "a\\u0000b"}', "NUL|\\\\u0000"),
    (b'{"n": "x"}', r"rule 'cast': `when:` failed on this message: .*integer"),
]


async def test_unreadable_messages_are_parked_with_their_bytes_and_the_stream_goes_on(
    sql: Conn, tmp_path: Path, bus: Bus
) -> None:
    cfg = config(tmp_path, bus, [rule("cast", when="(body->>'n')::int >= 0")])
    sent = [await bus.send(body(1))]
    for raw, _ in UNREADABLE:
        sent.append(await bus.send(raw, headers={"h": b"v"}))
    sent.append(await bus.send(body(2)))
    async with reading(sql, cfg) as watched:
        await read_up_to(sql, bus, sent[-1])
    assert [e["payload"]["data"]["n"] for e in events(sql)] == [1, 2]
    parked = sql.execute(
        "SELECT part, position, topic, reason, body, headers, retried_at FROM listener.queue_parked"
        " WHERE queue = %s ORDER BY position",
        [QUEUE],
    ).fetchall()
    assert len(parked) == len(UNREADABLE)
    for row, s, (raw, reason) in zip(parked, sent[1:-1], UNREADABLE, strict=True):
        part, position, topic, why, stored_body, headers, retried_at = row
        assert (part, tuple(position), topic) == (s.part, s.position, bus.topic)  # type: ignore[arg-type]
        assert bytes(stored_body) == raw  # type: ignore[call-overload]
        assert re.search(reason, str(why)), (why, reason)
        assert headers == {"h": "v"} and retried_at is None
    assert positions(sql) == {sent[-1].part: sent[-1].position}
    assert sorted(m.label for m in watched.acked) == sorted(s.label for s in sent)


async def test_legal_extremes_become_events_and_what_jsonb_refuses_is_parked(
    sql: Conn, tmp_path: Path, bus: Bus
) -> None:
    """Deep JSON, numbers at the edge of numeric's range, a 400 kB body and a lone surrogate escape: what
    PostgreSQL's jsonb stores becomes an event exactly; what it refuses (or Python cannot parse) is parked
    with the reason, and the stream goes on."""
    deep = "[" * 500 + "1" + "]" * 500
    big = json.dumps({"n": 3, "text": "x" * 400_000})
    readable = [
        f'{{"n": 0, "deep": {deep}}}',
        '{"n": 1, "edge": 1e131071, "tiny": 1e-16383}',
        '{"n": 2, "pair": "\\ud83d\\ude00"}',  # an escaped surrogate pair: one character
        big,
    ]
    unreadable = [
        ("[" * 100_000 + "]" * 100_000, "nests too deeply"),
        ('{"n": 1e131072}', "beyond PostgreSQL's numeric range"),
        ('{"n": "\\ud800"}', "lone UTF-16 surrogate"),
        ('{"n": Infinity}', "Infinity is not JSON"),
    ]
    cfg = config(tmp_path, bus, [rule("all")])
    sent = [await bus.send(text.encode()) for text in readable]
    sent += [await bus.send(text.encode()) for text, _ in unreadable]
    sent.append(await bus.send(body(4)))
    async with reading(sql, cfg):
        await read_up_to(sql, bus, sent[-1])
    # (read as text: jsonb writes 1e131071 out in 131,072 digits, more than Python's int() takes by default)
    rows = sql.execute(
        "SELECT payload->'data'->>'n', (payload->'data') - 'edge'::text - 'tiny'::text FROM listener.events"
        " WHERE source = 'queue' ORDER BY seq"
    ).fetchall()
    assert [str(n) for n, _ in rows] == ["0", "1", "2", "3", "4"]
    data: list[Any] = [d for _, d in rows]
    assert data[0]["deep"] == json.loads(deep) and data[2]["pair"] == "\U0001f600"
    assert data[3] == json.loads(big)
    edge = sql.execute(
        "SELECT payload->'data'->'edge' = '1e131071'::jsonb, payload->'data'->'tiny' = '1e-16383'::jsonb"
        " FROM listener.events WHERE payload->'data'->>'n' = '1'"
    ).fetchone()
    assert edge == (True, True)
    reasons = [str(r) for (r,) in sql.execute("SELECT reason FROM listener.queue_parked ORDER BY position")]
    assert len(reasons) == len(unreadable)
    for reason, (_, says) in zip(reasons, unreadable, strict=True):
        assert says in reason, (reason, says)


@pytest.mark.parametrize("bus", ["redis_stream"], indirect=True)  # a server that can cut its clients
async def test_a_dropped_broker_connection_restarts_the_source_and_loses_nothing(
    sql: Conn, tmp_path: Path, bus: Bus
) -> None:
    cfg = config(tmp_path, bus, [rule("all")])
    sent = [await bus.send(body(n)) for n in range(50)]
    async with reading(sql, cfg):
        await read_up_to(sql, bus, sent[-1])
        killer = aioredis.from_url(bus.entry()["redis_stream"]["url"])
        try:
            assert await killer.client_kill_filter(_type="normal", skipme=True) >= 1
        finally:
            await killer.aclose()
        sent += [await bus.send(body(n)) for n in range(50, 100)]
        await read_up_to(sql, bus, sent[-1], events_=100)
    assert sorted(e["payload"]["data"]["n"] for e in events(sql)) == list(range(100))
    assert count(sql, "queue_parked") == 0


async def test_format_text_makes_the_body_a_json_string(sql: Conn, tmp_path: Path, bus: Bus) -> None:
    cfg = config(tmp_path, bus, [rule("t", when="body <> '\"skip\"'")], format="text")
    bodies = [b"hello", "caf\u00e9 \u2603".encode(), b'{"not": "parsed"}', b"skip", b"a\x00b", b"\xc3"]
    sent = [await bus.send(raw) for raw in bodies]
    async with reading(sql, cfg):
        await read_up_to(sql, bus, sent[-1])
    assert [e["payload"]["data"] for e in events(sql)] == ["hello", "caf\u00e9 \u2603", '{"not": "parsed"}']
    reasons = [str(r[0]) for r in sql.execute("SELECT reason FROM listener.queue_parked ORDER BY position")]
    assert len(reasons) == 2 and "NUL" in reasons[0] and "not UTF-8" in reasons[1], reasons


@pytest.mark.parametrize("bus", ["redis_stream", "kafka"], indirect=True)  # NATS headers are text
async def test_binary_headers_are_kept_as_base64(sql: Conn, tmp_path: Path, bus: Bus) -> None:
    raw = b"\xff\x00\x01"
    cfg = config(tmp_path, bus, [rule("r", when="headers->'bin' ? 'base64'")])
    last = await bus.send(body(1), headers={"bin": raw, "nul": b"a\x00b", "txt": "\u00e9".encode()})
    async with reading(sql, cfg):
        await read_up_to(sql, bus, last, 1)
    [event] = events(sql)
    assert event["payload"]["message"]["headers"] == {
        "bin": {"base64": base64.b64encode(raw).decode()},
        "nul": {"base64": base64.b64encode(b"a\x00b").decode()},
        "txt": "\u00e9",
    }


async def test_back_pressure_stops_fetching_over_max_backlog_and_resumes_when_runs_finish(
    sql: Conn, tmp_path: Path, bus: Bus
) -> None:
    backlog, fetch, total = 5, 2, 30
    cfg = config(tmp_path, bus, [rule("r")], max_backlog=backlog, fetch=fetch)
    sent = [await bus.send(body(n)) for n in range(total)]
    async with reading(sql, cfg):
        await eventually(lambda: asyncio.sleep(0, count(sql, "events") > backlog), "the backlog to fill")
        await asyncio.sleep(2.5)  # two rounds of QUEUE_BACKLOG_POLL_S: nothing more is fetched
        held = count(sql, "events")
        assert backlog < held <= backlog + fetch, held
        await asyncio.sleep(1.0)
        assert count(sql, "events") == held
        assert not await bus.acknowledged(sent[-1])
        # the workers catch up: fetching goes on, a backlog at a time
        for _ in range(total):
            sql.execute("UPDATE listener.runs SET status = 'done' WHERE status = 'pending'")
            if count(sql, "events") == total:
                break
            await asyncio.sleep(0.2)
        await read_up_to(sql, bus, sent[-1], total)
    assert [e["payload"]["data"]["n"] for e in events(sql)] == list(range(total))


# -- configuration errors: what is wrong, and where


def error_of(tmp_path: Path, text: str) -> tuple[str, Callable[[str], int]]:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = text.splitlines()

    def line_of(fragment: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if fragment in line)

    return str(info.value), line_of


HEAD = "slot: s\npublication: s\n"


def test_a_rule_naming_an_unknown_queue_is_refused_with_its_line(tmp_path: Path) -> None:
    text = HEAD + (
        "queues:\n"
        "  - name: jobs\n"
        "    redis_stream: {url: 'redis://127.0.0.1:6379/0', stream: s, group: g}\n"
        "rules:\n"
        "  - name: r\n"
        "    queue: job\n"
        f"    workflow: {WORKFLOW}\n"
    )
    message, line_of = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}:{line_of('queue: job')}"), message
    assert "queue 'job'" in message and "`queues:` does not define" in message


def test_a_queue_with_two_brokers_is_refused_with_its_line(tmp_path: Path) -> None:
    text = HEAD + (
        "queues:\n"
        "  - name: jobs\n"
        "    redis_stream: {url: 'redis://127.0.0.1:6379/0', stream: s, group: g}\n"
        "    kafka: {brokers: 'k:9092', topics: t, group: g}\n"
        "rules: []\n"
    )
    message, line_of = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}:{line_of('name: jobs')}"), message
    assert "has kafka and redis_stream: pick one" in message


@pytest.mark.parametrize(
    ("broker", "url"), [("redis_stream", "http://127.0.0.1:6379"), ("jetstream", "redis://127.0.0.1:4222")]
)
def test_a_broker_url_of_the_wrong_scheme_is_refused_with_its_line(
    tmp_path: Path, broker: str, url: str
) -> None:
    more = "group: g" if broker == "redis_stream" else "durable: d"
    text = (
        HEAD + f"queues:\n  - name: jobs\n    {broker}:\n      url: '{url}'\n      stream: s\n      {more}\n"
    )
    message, line_of = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}:{line_of('url:')}"), message
    assert url.split(":")[0] in message
