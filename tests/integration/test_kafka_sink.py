"""`sink: kafka:` on a Kafka-protocol broker (librdkafka's mock cluster, tests/brokers.py): the slot's events
published in Kafka transactions that carry the checkpoint, resumed from what Kafka committed
(listener.ingest.kafka_sink).  The mock writes transaction markers whose CRC aiokafka refuses, so the
sink's `check_crcs: false` and the readers' check_crcs=False; it does not filter aborted transactions for
read_committed readers, which these tests therefore do not rely on (no transaction is aborted here)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg

from listener.pg.lsn import parse_lsn
from listener.queue.batches import EventBatch
from tests.kafka_log import read_committed
from tests.support import _wait_for, events, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]
RULES: list[dict[str, Any]] = [
    {"name": "paid", "table": "orders", "on": ["insert", "update"],
     "workflow": "listener_examples.tickets:triage", "when": "new.status = 'paid'", "key": "{new.customer}",
     "ordered": True},
    {"name": "any", "table": "orders", "on": ["insert"], "workflow": "listener_examples.onboarding:welcome"},
]  # fmt: skip


def sink_config(bootstrap: str, name: str, *, postgres: bool = True, **settings: Any) -> Any:
    sink = {
        "kafka": {
            "brokers": bootstrap,
            "topic": f"{name}.events",
            "offsets_topic": f"{name}.offsets",
            "check_crcs": False,
        }
    }
    return make_config(RULES, sink={**sink, "postgres": postgres}, **settings)


def keys_of(records: Sequence[Any]) -> list[str]:
    return [dict(r.headers)["idempotency-key"].decode() for r in records]


async def test_each_event_is_published_once_with_its_checkpoint(
    dsn: str, sql: Conn, kafka_bootstrap: str, broker_name: str
) -> None:
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY, customer text, status text)")
    config = sink_config(kafka_bootstrap, broker_name)
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO orders VALUES (1, 'ann', 'new'), (2, 'bob', 'paid'), (3, 'ann', 'paid')")
        sql.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
        await wait_caught_up(run, dsn)
        checkpoint = run.ingest.durable_lsn
    in_postgres = events(dsn)
    records = (await read_committed(kafka_bootstrap, f"{broker_name}.events")).committed
    assert sorted(keys_of(records)) == sorted(e["idempotency_key"] for e in in_postgres)
    assert len(records) == 6  # 3 inserts for `any`, 2 paid inserts and 1 paid update for `paid`
    by_key = {e["idempotency_key"]: e for e in in_postgres}
    for record in records:
        value = json.loads(record.value)
        event = by_key[value["idempotency_key"]]
        assert value["payload"] == event["payload"] and value["rule"] == event["rule"]
        assert value["commit_lsn"] == event["commit_lsn"] and value["table"] == "public.orders"
        # gated rule: keyed by the flow-control key, so one customer's runs share a partition, in order
        assert record.key == (
            f"paid:{value['payload']['new']['customer']}".encode() if value["rule"] == "paid" else None
        )
    ann = [r for r in records if r.key == b"paid:ann"]
    assert len({r.partition for r in ann}) == 1 and [
        json.loads(r.value)["payload"]["new"]["id"] for r in ann
    ] == [3, 1]
    offsets = (await read_committed(kafka_bootstrap, f"{broker_name}.offsets")).committed
    assert offsets and offsets[-1].key == b"listener_test"
    assert parse_lsn(json.loads(offsets[-1].value)["lsn"]) == checkpoint


async def test_a_crash_between_the_two_commits_publishes_nothing_twice_and_loses_nothing(
    dsn: str, sql: Conn, kafka_bootstrap: str, broker_name: str
) -> None:
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY, customer text, status text)")
    config = sink_config(kafka_bootstrap, broker_name)
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO orders VALUES (1, 'ann', 'paid')")
        await wait_caught_up(run, dsn)
        # the next batch is in Kafka, then its Postgres transaction fails (a lost connection): the session
        # starts again from the state database's checkpoint, which trails Kafka's
        write_batch = run.store.write_batch
        failed: list[int] = []

        async def lost_once(batch: EventBatch, offer: Any = None) -> int:
            if batch.payload and not failed:
                failed.append(len(batch))
                raise ConnectionError("the state database went away (injected)")
            return await write_batch(batch, offer)

        run.store.write_batch = lost_once  # type: ignore[method-assign]
        sql.execute("INSERT INTO orders VALUES (2, 'bob', 'new')")
        await _wait_for(lambda: bool(failed), "the injected failure")
        sql.execute("INSERT INTO orders VALUES (3, 'cy', 'paid')")
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.reconnects >= 1
    records = (await read_committed(kafka_bootstrap, f"{broker_name}.events")).committed
    keys = keys_of(records)
    assert len(keys) == len(set(keys)) == 5  # ann: paid + any; bob: any; cy: paid + any
    assert sorted(keys) == sorted(e["idempotency_key"] for e in events(dsn))
    # and a second `listener run` reads Kafka's checkpoint back: it publishes nothing again
    async with running_ingest(dsn, config, init=False) as run:
        assert run.ingest.sink is not None and run.ingest.sink.checkpoint is not None
        await wait_caught_up(run, dsn)
    assert sorted(
        keys_of((await read_committed(kafka_bootstrap, f"{broker_name}.events")).committed)
    ) == sorted(keys)


async def test_a_transaction_larger_than_a_batch_is_one_kafka_transaction(
    dsn: str, sql: Conn, kafka_bootstrap: str, broker_name: str
) -> None:
    """batch_events: 4 cuts a 10-row transaction into batches: the Kafka transaction stays open across
    them, and neither the checkpoint nor the slot moves until it commits.  A failure in the middle makes
    the whole source transaction be read and sent again, and a read_committed reader sees it once."""
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY, customer text, status text)")
    config = sink_config(kafka_bootstrap, broker_name, ingest={"batch_events": 4})
    async with running_ingest(dsn, config) as run:
        write_batch = run.store.write_batch
        seen: list[tuple[int, int | None]] = []  # (events, checkpoint) of each batch written

        async def second_fails(batch: EventBatch, offer: Any = None) -> int:
            seen.append((len(batch), batch.checkpoint))
            if len(seen) == 2:
                raise ConnectionError("the state database went away (injected)")
            return await write_batch(batch, offer)

        run.store.write_batch = second_fails  # type: ignore[method-assign]
        sql.execute(
            "INSERT INTO orders SELECT g, 'c' || g, CASE WHEN g % 2 = 0 THEN 'paid' END "
            "FROM generate_series(1, 10) g"
        )
        await wait_caught_up(run, dsn)
    assert seen[0][0] == 4 and seen[0][1] is None  # mid-transaction: its checkpoint is held back
    log = await read_committed(kafka_bootstrap, f"{broker_name}.events")
    keys = keys_of(log.committed)
    assert len(keys) == len(set(keys)) == 15  # 10 for `any`, 5 paid
    assert sorted(keys) == sorted(e["idempotency_key"] for e in events(dsn))
    assert len(keys_of(log.aborted + log.open)) >= 4  # the first try's records, aborted


async def test_kafka_only_makes_no_runs_in_postgres(
    dsn: str, sql: Conn, kafka_bootstrap: str, broker_name: str
) -> None:
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY, customer text, status text)")
    config = sink_config(kafka_bootstrap, broker_name, postgres=False)
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO orders VALUES (1, 'ann', 'paid'), (2, 'bob', 'new')")
        await wait_caught_up(run, dsn)
        checkpoint = run.ingest.durable_lsn
    assert events(dsn) == []
    assert sql.execute("SELECT count(*) FROM listener.runs").fetchone() == (0,)
    assert len((await read_committed(kafka_bootstrap, f"{broker_name}.events")).committed) == 3
    stored = sql.execute("SELECT lsn::text FROM listener.checkpoints").fetchone()
    assert stored is not None and parse_lsn(str(stored[0])) == checkpoint


def test_postgres_false_without_kafka_is_refused() -> None:
    import pytest

    from listener.errors import ConfigError

    with pytest.raises(ConfigError, match="would go nowhere"):
        make_config(RULES, sink={"postgres": False})
