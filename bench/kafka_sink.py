"""Kafka as the event log: events per second from CDC into Kafka (``sink: kafka:``), against aiokafka's own
transactional producer on the same machine, in the same run (not a test).

On a fresh embedded PostgreSQL (fsync on) and librdkafka's mock Kafka cluster (tests/brokers.py; one
partition per topic unless the topic exists), ``--rows`` rows are inserted into ``bench_sink`` in
transactions of ``--txn-rows`` rows, with the slot created first; then, one after the other:

* **listener, Kafka only** (``sink: postgres: false``): an ingest in this process reads the slot and
  publishes each row's event in Kafka transactions that carry the checkpoint (the shipped path:
  ``listener.ingest.kafka_sink``), until Kafka's checkpoint covers the last insert;
* **listener, Kafka and Postgres** (the default ``postgres: true``): the same, and each batch's events and
  runs committed to the Postgres queue as well (a second slot and topic, the same WAL);
* **baseline**: aiokafka's transactional producer alone sending as many records of the same size, in
  transactions of ``batch_events`` records (what the sink sends per batch), each with one offsets record.

Each listener figure is timed from the ingest's start (connections, the sink's producer and checkpoint
read) to the commit that covers the last insert.  The mock cluster keeps its log in memory, so its figures
say how much listener costs over the client library, not what a real Kafka cluster takes.

    python bench/kafka_sink.py                     # 20,000 rows in transactions of 10 rows
    python bench/kafka_sink.py --rows 50000 --txn-rows 100 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import psycopg
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import cpu_model, server  # noqa: E402

from listener import install as setup  # noqa: E402
from listener.defaults import BATCH_EVENTS  # noqa: E402
from listener.ingest import Ingest  # noqa: E402
from listener.pg.lsn import parse_lsn  # noqa: E402
from listener.queue.store import StateStore  # noqa: E402
from listener.rules.config import parse_config  # noqa: E402
from tests import brokers  # noqa: E402

# a row's event as the sink publishes it, about: the record's value size for the baseline
_RECORD_BYTES = 420


def config_text(slot: str, bootstrap: str, topic: str, *, postgres: bool) -> str:
    return f"""
slot: {slot}
publication: {slot}
state_schema: {slot}
sink:
  postgres: {str(postgres).lower()}
  kafka: {{brokers: "{bootstrap}", topic: {topic}, offsets_topic: {topic}.offsets, check_crcs: false}}
rules:
  - name: row
    table: bench_sink
    on: [insert]
    workflow: listener_examples.onboarding:welcome
"""


def load(dsn: str, rows: int, txn_rows: int) -> int:
    """Insert the rows; return the WAL position after the last commit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(1, rows + 1, txn_rows):
            end = min(start + txn_rows - 1, rows)
            conn.execute(
                "INSERT INTO bench_sink (id, note) SELECT g, 'row ' || g "
                "FROM generate_series(%s::int, %s::int) g",
                [start, end],
            )
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return parse_lsn(str(row[0]))


async def through_listener(dsn: str, text: str, until: int, rows: int) -> dict[str, float]:
    """Run the ingest of ``text`` until Kafka's checkpoint passes ``until``: seconds, events/s."""
    config = parse_config(text)
    store = await StateStore.connect(dsn, schema=config.state_schema, slot=config.slot)
    ingest = Ingest.from_config(config, source_dsn=dsn, store=store)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(ingest.run(stop))
    try:
        while ingest.sink is None or (ingest.sink.checkpoint or 0) < until:
            if task.done():
                task.result()
                raise RuntimeError("the ingest ended before it caught up")
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - started
        assert ingest.sink is not None
        published = ingest.sink.published
    finally:
        stop.set()
        await task
        await store.close()
    if published != rows:
        raise RuntimeError(f"the sink published {published} events for {rows} rows")
    return {"seconds": seconds, "events_per_s": rows / seconds}


async def baseline(bootstrap: str, topic: str, rows: int, per_txn: int) -> dict[str, float]:
    """aiokafka's transactional producer alone: ``rows`` records, ``per_txn`` (and an offsets record) per
    transaction."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"bench-{uuid.uuid4().hex[:8]}", acks="all"
    )
    await producer.start()
    value = b"x" * _RECORD_BYTES
    try:
        started = time.perf_counter()
        for start in range(0, rows, per_txn):
            async with producer.transaction():
                for n in range(start, min(start + per_txn, rows)):
                    await producer.send(
                        topic, value=value, headers=[("idempotency-key", f"row/{n}".encode())]
                    )
                await producer.send(f"{topic}.offsets", value=b'{"lsn": "0/0"}', key=b"bench")
        seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    return {"seconds": seconds, "events_per_s": rows / seconds}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with brokers.kafka_mock() as kafka, server(args.dsn, prefix="listener-bench-sink-") as (dsn, _):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_sink")
            conn.execute("CREATE TABLE bench_sink (id int PRIMARY KEY, note text)")
        run_id = uuid.uuid4().hex[:8]
        texts = {
            "kafka only": config_text(f"bench_k_{run_id}", kafka.bootstrap, f"k{run_id}", postgres=False),
            "kafka + postgres": config_text(
                f"bench_kp_{run_id}", kafka.bootstrap, f"kp{run_id}", postgres=True
            ),
        }
        for name, text in texts.items():
            topic = parse_config(text).sink.kafka
            assert topic is not None
            kafka.create_topic(topic.topic, 1)
            kafka.create_topic(topic.offsets_topic, 1)
            setup.init(parse_config(text), dsn, dsn)  # the slots exist before the rows are written
            print(f"set up {name}", flush=True)
        until = load(dsn, args.rows, args.txn_rows)
        results: dict[str, Any] = {}
        for name, text in texts.items():
            results[name] = asyncio.run(through_listener(dsn, text, until, args.rows))
            print(f"{name}: {results[name]['events_per_s']:,.0f} events/s", flush=True)
        kafka.create_topic(f"b{run_id}", 1)
        kafka.create_topic(f"b{run_id}.offsets", 1)
        results["aiokafka producer alone"] = asyncio.run(
            baseline(kafka.bootstrap, f"b{run_id}", args.rows, BATCH_EVENTS)
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            for text in texts.values():
                conn.execute("SELECT pg_drop_replication_slot(%s)", [parse_config(text).slot])
    return {
        "rows": args.rows,
        "txn_rows": args.txn_rows,
        "results": results,
        "machine": {
            "cpu": cpu_model(),
            "cores": psutil.cpu_count(),
            "python": platform.python_version(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--txn-rows", type=int, default=10, help="rows per source transaction")
    parser.add_argument("--dsn", help="a scratch server (default: a fresh embedded PostgreSQL)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    base = report["results"]["aiokafka producer alone"]["events_per_s"]
    print(f"\n{args.rows:,} rows in transactions of {args.txn_rows}; {report['machine']}")
    print(f"{'':26} {'events/s':>10} {'vs producer':>12}")
    for name, figures in report["results"].items():
        print(f"{name:26} {figures['events_per_s']:>10,.0f} {figures['events_per_s'] / base:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
