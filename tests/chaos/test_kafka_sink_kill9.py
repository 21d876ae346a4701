"""kill -9 `listener run` while it publishes the slot's events to Kafka (`sink: kafka:`): every event is in
Kafka exactly once among committed transactions, and once in the Postgres queue (invariants 1, 2).

The broker is librdkafka's mock cluster, whose consumers see aborted transactions too; tests/kafka_log.py
sorts the log by the fate of each transaction, as a real broker's read_committed does."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import yaml

from tests.chaos.test_kill9 import checkpoint, start_listener
from tests.kafka_log import read_committed
from tests.support import emit_marker

Conn = psycopg.Connection[tuple[object, ...]]
KILLS = 4


def test_kill_9_while_publishing_to_kafka_loses_and_duplicates_nothing(
    dsn: str, sql: Conn, tmp_path: Path, kafka_bootstrap: str, broker_name: str
) -> None:
    rng = random.Random(20261207)
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)")
    topic = f"{broker_name}.events"
    config = tmp_path / "listener.yaml"
    rules = [
        {"name": "items_in", "table": "items", "on": ["insert"],
         "workflow": "listener_examples.onboarding:welcome"},
        {"name": "items_up", "table": "items", "on": ["update"], "key": "{new.id}", "ordered": True,
         "workflow": "listener_examples.tickets:escalated"},
    ]  # fmt: skip
    kafka = {
        "brokers": kafka_bootstrap,
        "topic": topic,
        "offsets_topic": f"{broker_name}.offsets",
        "check_crcs": False,  # the mock's transaction markers fail aiokafka's CRC check
    }
    # batch_events: 20 cuts the larger transactions into batches: their Kafka transactions span several
    settings = {
        "slot": "chaos",
        "publication": "chaos",
        "ingest": {"batch_events": 20},
        "sink": {"kafka": kafka},
    }
    config.write_text(yaml.safe_dump({**settings, "rules": rules}))
    log = tmp_path / "listener.log"
    subprocess.run(
        [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config), "init"],
        check=True,
        capture_output=True,
        cwd=Path(__file__).parents[2],
    )
    stop_writing = threading.Event()

    def writer() -> None:
        next_id = 1
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop_writing.is_set():
                size = rng.randint(1, 12)  # the mock keeps a bounded log: a few thousand events in all
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO items (id) SELECT g FROM generate_series(%s::int, %s::int) g",
                        [next_id, next_id + size - 1],
                    )
                    if next_id > 1:
                        conn.execute("UPDATE items SET v = v + 1 WHERE id = %s", [next_id - 1])
                next_id += size
                time.sleep(rng.random() * 0.01)

    thread = threading.Thread(target=writer, name="kafka-chaos-writer")
    proc = start_listener(dsn, config, log, "-v")
    thread.start()
    try:
        for _ in range(KILLS):
            time.sleep(1.0 + rng.random() * 1.5)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc = start_listener(dsn, config, log, "-v")
        stop_writing.set()
        thread.join()
        marker = emit_marker(dsn)
        deadline = time.monotonic() + 120
        while checkpoint(sql) <= marker:  # Postgres commits after Kafka: Kafka has everything before it
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "listener did not catch up:\n" + log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        stop_writing.set()
        thread.join()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    in_postgres = [str(k) for (k,) in sql.execute("SELECT idempotency_key FROM listener.events").fetchall()]
    log_text = log.read_text()
    kafka_log = asyncio.run(read_committed(kafka_bootstrap, topic))
    published = [dict(r.headers)["idempotency-key"].decode() for r in kafka_log.committed]
    duplicated = len(published) - len(set(published))
    lost = set(in_postgres) - set(published)
    assert (duplicated, len(lost)) == (0, 0), (duplicated, sorted(lost)[:3], log_text[-3000:])
    assert set(published) == set(in_postgres) and len(in_postgres) > 1000
    # each record is the event Postgres has under its key
    sample = {json.loads(r.value)["idempotency_key"]: json.loads(r.value) for r in kafka_log.committed[:50]}
    rows = sql.execute(
        "SELECT idempotency_key, payload FROM listener.events WHERE idempotency_key = ANY(%s)", [list(sample)]
    ).fetchall()
    assert len(rows) == len(sample) and all(sample[str(k)]["payload"] == p for k, p in rows)
    print(
        f"kafka sink under kill -9: {len(published)} events, {log_text.count('kafka sink: publishing')} "
        f"starts, {len(kafka_log.aborted) + len(kafka_log.open)} records of aborted transactions"
    )
