"""Queue sources: messages per second from each broker into durable events and runs (not a test).

For each broker (the test brokers of tests/brokers.py, started here: redis-server, nats-server with
JetStream, librdkafka's mock Kafka cluster with one partition), ``--messages`` small JSON messages are
published first, then read twice, one after the other, on the same machine:

* **listener**: an ingest in this process (``listener.ingest.Ingest`` with one ``QueueSource`` and one
  rule, no workers) on a fresh database of a fresh embedded PostgreSQL (fsync on): each message becomes an
  event and a pending run, committed with the broker position, then acknowledged to the broker.
* **baseline**: the broker's own client reading the same messages through a new group (consumer) and
  acknowledging each fetch, storing nothing: redis-py XREADGROUP + XACK, nats-py fetch + ack of each
  message, aiokafka getmany + commit.

Both are timed from the first batch's acknowledgement to the last's (the first batch's messages are not
counted), so neither's connection and group join is in the figure.

    python bench/queue_sources.py                       # 20,000 messages, every broker, 1 round
    python bench/queue_sources.py --messages 100000 --brokers kafka --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import psutil
import psycopg
import redis.asyncio as aioredis
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import cpu_model, server  # noqa: E402

from listener import supervise  # noqa: E402
from listener.ingest.queues import QueueSource  # noqa: E402
from listener.queue.batches import EventBatch  # noqa: E402
from listener.rules.config import load_config  # noqa: E402
from tests import brokers  # noqa: E402
from tests.support import running_ingest  # noqa: E402

BROKERS = ("redis_stream", "jetstream", "kafka")
FETCH = 500  # messages per fetch, listener's and the baselines' alike (listener's default)
PUBLISH_CHUNK = 1000


class Clock:
    """When each batch was acknowledged, and how many messages it had."""

    def __init__(self, until: int = 0) -> None:
        self.first = self.last = 0.0
        self.first_count = self.count = 0
        self.until = until
        self.done = asyncio.Event()  # set once ``until`` messages are counted

    def batch(self, messages: int) -> None:
        now = time.perf_counter()
        if not self.count:
            self.first, self.first_count = now, messages
        self.last = now
        self.count += messages
        if self.until and self.count >= self.until:
            self.done.set()

    def rate(self) -> float:
        return (self.count - self.first_count) / (self.last - self.first) if self.last > self.first else 0.0


class TimedSource(QueueSource):
    """A queue source that notes when each batch's commit is done."""

    clock: Clock

    def committed(self, batch: EventBatch) -> None:
        messages = len(self._in_flight.get(id(batch), ()))
        super().committed(batch)
        if messages:
            self.clock.batch(messages)


@contextlib.contextmanager
def started_brokers(wanted: list[str]) -> Iterator[dict[str, Any]]:
    with contextlib.ExitStack() as stack:
        found: dict[str, Any] = {}
        if "redis_stream" in wanted:
            found["redis_stream"] = stack.enter_context(brokers.redis_server())
        if "jetstream" in wanted:
            found["jetstream"] = stack.enter_context(brokers.nats_server())
        if "kafka" in wanted:
            found["kafka"] = stack.enter_context(brokers.kafka_mock())
        yield found


def body(n: int) -> bytes:
    return json.dumps({"type": "order.created", "n": n, "customer": f"c-{n % 997}", "amount": 1200}).encode()


async def publish(kind: str, where: Any, name: str, count: int) -> dict[str, Any]:
    """Publish ``count`` messages; the ``queues:`` entry's broker part that reads them."""
    if kind == "redis_stream":
        client: Any = aioredis.from_url(where)
        for first in range(0, count, PUBLISH_CHUNK):
            async with client.pipeline(transaction=False) as pipe:
                for n in range(first, min(first + PUBLISH_CHUNK, count)):
                    pipe.xadd(name, {"body": body(n)})
                await pipe.execute()
        await client.aclose()
        return {"redis_stream": {"url": where, "stream": name, "group": "listener"}}
    if kind == "jetstream":
        nc = await nats.connect(where)
        js = nc.jetstream()
        await js.add_stream(name=name, subjects=[f"{name}.>"])
        for first in range(0, count, PUBLISH_CHUNK):
            acks = [
                js.publish(f"{name}.orders", body(n)) for n in range(first, min(first + PUBLISH_CHUNK, count))
            ]
            await asyncio.gather(*acks)
        await nc.close()
        return {"jetstream": {"url": where, "stream": name, "durable": "listener"}}
    where.create_topic(name, 1)
    producer = AIOKafkaProducer(bootstrap_servers=where.bootstrap.split(","), linger_ms=5)
    await producer.start()
    try:
        for first in range(0, count, PUBLISH_CHUNK):
            sends = [
                await producer.send(name, body(n)) for n in range(first, min(first + PUBLISH_CHUNK, count))
            ]
            await asyncio.gather(*sends)
    finally:
        await producer.stop()
    servers = where.bootstrap.split(",")
    return {"kafka": {"brokers": servers, "topics": [name], "group": "listener", "session_timeout": "1.5s"}}


async def baseline(kind: str, where: Any, name: str, count: int) -> float:
    """The broker's own client: fetch and acknowledge ``count`` messages through a new group; messages/s."""
    clock = Clock()
    if kind == "redis_stream":
        client: Any = aioredis.from_url(where)
        await client.xgroup_create(name, "baseline", id="0")
        while clock.count < count:
            reply = await client.xreadgroup("baseline", "b", {name: ">"}, count=FETCH, block=1000)
            ids = [entry for _, entries in reply or () for entry, _ in entries]
            if ids:
                await client.xack(name, "baseline", *ids)
                clock.batch(len(ids))
        await client.aclose()
    elif kind == "jetstream":
        nc = await nats.connect(where)
        js = nc.jetstream()
        config = ConsumerConfig(
            durable_name="baseline", ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL
        )
        await js.add_consumer(name, config)
        sub = await js.pull_subscribe_bind("baseline", stream=name)
        while clock.count < count:
            messages = await sub.fetch(FETCH, timeout=1.0)
            for message in messages:
                await message.ack()
            await nc.flush()
            clock.batch(len(messages))
        await nc.close()
    else:
        consumer = AIOKafkaConsumer(
            name,
            bootstrap_servers=where.bootstrap.split(","),
            group_id="baseline",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **brokers.KAFKA_FAST_GROUP,
        )
        await consumer.start()
        try:
            while clock.count < count:
                batches = await consumer.getmany(timeout_ms=1000, max_records=FETCH)
                got = sum(len(records) for records in batches.values())
                if got:
                    await consumer.commit()
                    clock.batch(got)
        finally:
            await consumer.stop()
    return clock.rate()


async def through_listener(admin: str, entry: dict[str, Any], count: int, work: Path) -> tuple[float, int]:
    """Read ``count`` messages into events and runs; (messages/s, events stored)."""
    database = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    dsn = psycopg.conninfo.make_conninfo(admin, dbname=database)
    path = work / f"{database}.yaml"
    rule = {"name": "orders", "queue": "jobs", "workflow": "listener_examples.tickets:triage"}
    queue = {"name": "jobs", **entry, "fetch": FETCH, "max_backlog": count * 2}
    path.write_text(
        yaml.safe_dump({"slot": database, "publication": database, "queues": [queue], "rules": [rule]})
    )
    config = load_config(path)
    source = TimedSource(config.queues[0])
    source.clock = Clock(count)
    async with running_ingest(dsn, config, attach=[source.attach]):
        await source.clock.done.wait()
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM listener.events e JOIN listener.runs r ON r.event_key = e.idempotency_key"
        ).fetchone()
    return source.clock.rate(), int(row[0]) if row else 0


async def main_async(
    args: argparse.Namespace, admin: str, found: dict[str, Any], work: Path
) -> list[dict[str, Any]]:
    results = []
    for round_ in range(1, args.rounds + 1):
        for kind in args.brokers:
            name = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
            entry = await publish(kind, found[kind], name, args.messages)
            base = await baseline(kind, found[kind], name, args.messages)
            rate, stored = await through_listener(admin, entry, args.messages, work)
            if stored != args.messages:
                raise SystemExit(f"{kind}: {stored} events with runs for {args.messages} messages")
            result = {
                "round": round_,
                "broker": kind,
                "messages": args.messages,
                "listener_per_s": rate,
                "baseline_per_s": base,
            }
            results.append(result)
            print(
                f"round {round_} {kind:12} listener {rate:>9,.0f} msg/s   baseline {base:>9,.0f} msg/s"
                f"   ratio {rate / base:.2f}",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a scratch server (default: a fresh embedded PostgreSQL)")
    parser.add_argument("--messages", type=int, default=20_000, help="messages per broker and round")
    parser.add_argument("--brokers", default=",".join(BROKERS), help="comma-separated: " + ", ".join(BROKERS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if any(b not in BROKERS for b in args.brokers):
        parser.error(f"--brokers: choose from {', '.join(BROKERS)}")
    work = Path(tempfile.mkdtemp(prefix="listener-bench-queues-"))
    with (
        server(args.dsn, prefix="listener-bench-queues-") as (admin, _),
        started_brokers(args.brokers) as found,
    ):
        with psycopg.connect(admin, autocommit=True) as conn:
            version = conn.execute("SELECT version()").fetchone()
            settings = conn.execute(
                "SELECT current_setting('fsync'), current_setting('synchronous_commit')"
            ).fetchone()
        loop = supervise.new_event_loop()
        try:
            results = loop.run_until_complete(main_async(args, admin, found, work))
        finally:
            loop.close()
    fsync, synchronous = settings if settings else ("?", "?")
    print()
    print("broker        listener msg/s   baseline msg/s   ratio   (median of rounds)")
    for kind in args.brokers:
        mine = sorted(r["listener_per_s"] for r in results if r["broker"] == kind)
        base = sorted(r["baseline_per_s"] for r in results if r["broker"] == kind)
        l_med, b_med = mine[len(mine) // 2], base[len(base) // 2]
        print(f"{kind:12} {l_med:>15,.0f} {b_med:>16,.0f} {l_med / b_med:>7.2f}")
    print()
    print(
        f"machine     {os.cpu_count()} cores, {psutil.virtual_memory().total / 1e9:.1f} GB RAM, {cpu_model()}"
    )
    print(f"PostgreSQL  {version[0] if version else '?'} (fsync={fsync}, synchronous_commit={synchronous})")
    print(f"python      {platform.python_version()} / {platform.platform()}")
    print(f"load        {args.messages:,} small JSON messages per broker, pre-published; fetch {FETCH}")
    print(f"command     {' '.join([sys.executable, *sys.argv])}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
