"""The queue sources' tests' view of each real broker (tests/brokers.py): publish a message, say how far the
broker counts it acknowledged, and move the broker's own position back behind listener's back.  Shared by
tests/integration/test_queue_sources.py and tests/chaos/test_queue_kill9.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from listener.ingest.brokers import Broker, Message
from listener.queue.store import StateStore
from tests.brokers import KAFKA_FAST_GROUP, KafkaMock

BROKERS = ("redis_stream", "jetstream", "kafka")
# A Kafka group's session in these tests (the queue's `session_timeout:`): the mock makes a join wait
# this long minus 1 s after a member left or died (tests/brokers.py).
KAFKA_SESSION = "1.5s"
WAIT_S = 30.0


@dataclass(frozen=True)
class Sent:
    """Where a broker put a published message."""

    part: str  # queue_positions.part: the stream, or "topic:partition"
    position: tuple[int, ...]
    label: str  # as in event keys: "stream:1700000000000-0", "stream:12", "topic:0:11"


class Bus:
    """One test's stream (topic, subject) and group (durable) on a session's broker."""

    kind: str
    topic: str  # what a rule's `topic` is for the messages published here
    keys = False  # whether messages carry a key
    binary_headers = False  # whether a header value may be any bytes

    def entry(self) -> dict[str, Any]:
        """The broker part of a ``queues:`` entry."""
        raise NotImplementedError

    async def send(self, body: bytes, *, key: bytes | None = None, headers: Mapping[str, bytes] = {}) -> Sent:
        raise NotImplementedError

    async def acknowledged(self, last: Sent) -> bool:
        """Whether the broker counts every message up to ``last`` acknowledged, and none waiting."""
        raise NotImplementedError

    async def move_back(self) -> None:
        """Set the group (durable consumer) back to the stream's beginning, as an operator might."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class RedisBus(Bus):
    kind = "redis_stream"
    binary_headers = True

    def __init__(self, url: str, name: str) -> None:
        self.url, self.stream, self.group = url, name, name
        self.topic = name
        self.client: Any = aioredis.from_url(url)

    def entry(self) -> dict[str, Any]:
        return {"redis_stream": {"url": self.url, "stream": self.stream, "group": self.group}}

    async def send(self, body: bytes, *, key: bytes | None = None, headers: Mapping[str, bytes] = {}) -> Sent:
        assert key is None, "a Redis stream entry has no key"
        entry = (await self.client.xadd(self.stream, {"body": body, **headers})).decode()
        ms, _, seq = entry.partition("-")
        return Sent(self.stream, (int(ms), int(seq)), f"{self.stream}:{entry}")

    async def acknowledged(self, last: Sent) -> bool:
        groups = {g["name"].decode(): g for g in await self.client.xinfo_groups(self.stream)}
        group = groups.get(self.group)
        return (
            group is not None
            and group["pending"] == 0
            and group["last-delivered-id"].decode() == last.label.rpartition(":")[2]
        )

    async def move_back(self) -> None:
        await self.client.xgroup_setid(self.stream, self.group, "0")

    async def close(self) -> None:
        await self.client.aclose()


class JetStreamBus(Bus):
    kind = "jetstream"

    def __init__(self, url: str, name: str) -> None:
        self.url, self.stream, self.durable = url, name, name
        self.topic = f"{name}.orders"
        self.nc: Any = None
        self.js: Any = None

    @classmethod
    async def make(cls, url: str, name: str) -> JetStreamBus:
        bus = cls(url, name)
        bus.nc = await nats.connect(url)
        bus.js = bus.nc.jetstream()
        await bus.js.add_stream(name=name, subjects=[f"{name}.>"])
        return bus

    def entry(self) -> dict[str, Any]:
        return {"jetstream": {"url": self.url, "stream": self.stream, "durable": self.durable}}

    async def send(self, body: bytes, *, key: bytes | None = None, headers: Mapping[str, bytes] = {}) -> Sent:
        assert key is None, "a NATS message has no key"
        text = {name: value.decode() for name, value in headers.items()}  # NATS headers are text
        ack = await self.js.publish(self.topic, body, headers=text or None)
        return Sent(self.stream, (ack.seq,), f"{self.stream}:{ack.seq}")

    async def acknowledged(self, last: Sent) -> bool:
        info = await self.js.consumer_info(self.stream, self.durable)
        return bool(
            info.num_ack_pending == 0
            and info.num_pending == 0
            and info.ack_floor.stream_seq == last.position[0]
        )

    async def move_back(self) -> None:
        await self.js.delete_consumer(self.stream, self.durable)
        config = ConsumerConfig(
            durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL
        )
        await self.js.add_consumer(self.stream, config)

    async def close(self) -> None:
        await self.nc.close()


class KafkaBus(Bus):
    kind = "kafka"
    keys = True
    binary_headers = True

    def __init__(self, bootstrap: str, name: str, partitions: int) -> None:
        self.bootstrap, self.topic, self.group = bootstrap, name, name
        self.partitions = partitions
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap.split(","), linger_ms=5)

    @classmethod
    async def make(cls, mock: KafkaMock, name: str, partitions: int = 1) -> KafkaBus:
        mock.create_topic(name, partitions)
        bus = cls(mock.bootstrap, name, partitions)
        await bus.producer.start()
        return bus

    def entry(self) -> dict[str, Any]:
        servers = self.bootstrap.split(",")
        return {
            "kafka": {
                "brokers": servers,
                "topics": [self.topic],
                "group": self.group,
                "session_timeout": KAFKA_SESSION,
            }
        }

    async def send(
        self,
        body: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, bytes] = {},
        partition: int | None = None,
    ) -> Sent:
        meta = await self.producer.send_and_wait(
            self.topic, body, key=key, headers=list(headers.items()), partition=partition
        )
        part = f"{self.topic}:{meta.partition}"
        return Sent(part, (meta.offset,), f"{part}:{meta.offset}")

    async def committed(self) -> dict[int, int | None]:
        """The group's committed offset of each partition."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap.split(","), group_id=self.group)
        await consumer.start()
        try:
            return {
                p: await consumer.committed(TopicPartition(self.topic, p)) for p in range(self.partitions)
            }
        finally:
            await consumer.stop()

    async def acknowledged(self, last: Sent) -> bool:
        partition = int(last.part.rpartition(":")[2])
        return (await self.committed()).get(partition) == last.position[0] + 1

    async def move_back(self) -> None:
        # as a member of the group (the mock refuses a commit from outside it: UnknownMemberId)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap.split(","),
            group_id=self.group,
            enable_auto_commit=False,
            **KAFKA_FAST_GROUP,
        )
        await consumer.start()
        try:
            consumer.subscribe([self.topic])
            async with asyncio.timeout(WAIT_S):
                while len(consumer.assignment()) < self.partitions:
                    await consumer.getmany(timeout_ms=100, max_records=1)
            await consumer.commit(dict.fromkeys(consumer.assignment(), 0))
        finally:
            await consumer.stop()
        assert set((await self.committed()).values()) == {0}

    async def close(self) -> None:
        await self.producer.stop()


class Watched:
    """A real broker connection (``listener.ingest.queues.make_broker``) that records what it delivered and
    what it was told to acknowledge, and checks at each acknowledgement that the state database holds the
    message's position already.  ``forget_positions``: it starts as if no position were stored (the
    broker then delivers from its own group's or consumer's position: what an earlier reader acknowledged
    is delivered again).  ``lose_acks``: the acknowledgements never reach the broker (as when the process
    dies between the commit and them)."""

    def __init__(
        self, inner: Broker, queue: str, *, forget_positions: bool = False, lose_acks: bool = False
    ) -> None:
        self.inner = inner
        self.queue = queue
        self.forget_positions = forget_positions
        self.lose_acks = lose_acks
        self.store: StateStore | None = None
        self.started_at: dict[str, tuple[int, ...]] = {}
        self.fetched: list[Message] = []
        self.acked: list[Message] = []
        self.early: list[tuple[str, tuple[int, ...] | None]] = []  # acknowledged before stored

    async def start(self, positions: Mapping[str, tuple[int, ...]]) -> None:
        self.started_at = dict(positions)
        await self.inner.start({} if self.forget_positions else positions)

    async def fetch(self, limit: int, wait_s: float) -> list[Message]:
        messages = await self.inner.fetch(limit, wait_s)
        self.fetched += messages
        return messages

    async def ack(self, messages: Sequence[Message]) -> None:
        assert self.store is not None
        stored = await self.store.queue_positions(self.queue)
        self.early += [(m.label, stored.get(m.part)) for m in messages if stored.get(m.part, ()) < m.position]
        self.acked += messages
        if not self.lose_acks:
            await self.inner.ack(messages)

    async def extend(self, messages: Sequence[Message]) -> None:
        await self.inner.extend(messages)

    async def hold(self) -> None:
        await self.inner.hold()

    async def close(self) -> None:
        await self.inner.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def made_bus(
    kind: str, request: pytest.FixtureRequest, name: str, partitions: int = 1
) -> AsyncIterator[Bus]:
    """A :class:`Bus` of broker ``kind`` on the session's broker (its fixture got from ``request``)."""
    made: Bus
    if kind == "redis_stream":
        made = RedisBus(request.getfixturevalue("redis_db"), name)
    elif kind == "jetstream":
        made = await JetStreamBus.make(request.getfixturevalue("nats_url"), name)
    else:
        made = await KafkaBus.make(request.getfixturevalue("kafka_mock"), name, partitions)
    try:
        yield made
    finally:
        await made.close()
