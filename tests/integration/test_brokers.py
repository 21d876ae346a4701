"""What the test brokers of tests/brokers.py support, through the clients the queue sources use: aiokafka
against librdkafka's mock cluster, redis.asyncio against redis-server, nats-py against nats-server.
Each limit named in tests/brokers.py's notes is asserted here too, so a new release that lifts it shows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CorruptRecordException
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tests.brokers import KAFKA_FAST_GROUP, BrokerError, KafkaMock

WAIT_S = 10.0

# --- Kafka: librdkafka's mock cluster through aiokafka


@asynccontextmanager
async def started(client: Any) -> AsyncIterator[Any]:
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def read_all(bootstrap: str, topic: str, **settings: Any) -> list[tuple[int, bytes]]:
    """Every message of partition 0, read without a group up to its end offset."""
    tp = TopicPartition(topic, 0)
    async with started(AIOKafkaConsumer(bootstrap_servers=bootstrap, **settings)) as consumer:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        got: list[tuple[int, bytes]] = []
        async with asyncio.timeout(WAIT_S):
            while await consumer.position(tp) < end:
                batches = await consumer.getmany(tp, timeout_ms=200)
                got += [(m.offset, m.value) for m in batches.get(tp, [])]
        return got


async def partition_counts(bootstrap: str, *topics: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(list(topics))}
    finally:
        await admin.close()


async def test_kafka_topics_are_made_by_the_mock_not_by_create_topics(
    kafka_mock: KafkaMock, kafka_bootstrap: str, broker_name: str
) -> None:
    kafka_mock.create_topic(f"{broker_name}-six", 6)
    with pytest.raises(BrokerError, match="already exists"):
        kafka_mock.create_topic(f"{broker_name}-six", 2)
    # the mock has no CreateTopics: aiokafka's admin fails before sending (the metadata names no controller)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        with pytest.raises(AttributeError, match="nodeId"):
            await admin.create_topics([NewTopic(f"{broker_name}-admin", 2, 1)])
    finally:
        await admin.close()
    # a topic produced to before it exists is auto-created, with the mock's 4 partitions
    async with started(AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)) as producer:
        await producer.send_and_wait(f"{broker_name}-auto", b"x")
    counts = await partition_counts(kafka_bootstrap, f"{broker_name}-six", f"{broker_name}-auto")
    assert counts == {f"{broker_name}-six": 6, f"{broker_name}-auto": 4}


async def test_kafka_produce_and_consume_keys_headers_partitions_seek(
    kafka_mock: KafkaMock, kafka_bootstrap: str, broker_name: str
) -> None:
    kafka_mock.create_topic(broker_name, 3)
    async with started(AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)) as producer:
        for i in range(4):
            sent = await producer.send_and_wait(
                broker_name, f"v{i}".encode(), key=f"k{i}".encode(), partition=2, headers=[("n", b"%d" % i)]
            )
            assert (sent.partition, sent.offset) == (2, i)
    tp = TopicPartition(broker_name, 2)
    async with started(AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)) as consumer:
        consumer.assign([tp])
        consumer.seek(tp, 2)
        first = await asyncio.wait_for(consumer.getone(), WAIT_S)
        assert (first.offset, first.key, first.value, list(first.headers)) == (2, b"k2", b"v2", [("n", b"2")])
        consumer.seek(tp, 0)
        again = await asyncio.wait_for(consumer.getone(), WAIT_S)
        assert (again.offset, again.value) == (0, b"v0")
        assert (await consumer.end_offsets([tp]))[tp] == 4


async def test_kafka_group_commit_then_a_second_member_resumes(
    kafka_mock: KafkaMock, kafka_bootstrap: str, broker_name: str
) -> None:
    kafka_mock.create_topic(broker_name, 1)
    tp = TopicPartition(broker_name, 0)
    async with started(AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)) as producer:
        for i in range(5):
            await producer.send_and_wait(broker_name, b"m%d" % i)
    settings: dict[str, Any] = dict(
        bootstrap_servers=kafka_bootstrap,
        group_id=broker_name,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **KAFKA_FAST_GROUP,
    )
    async with started(AIOKafkaConsumer(broker_name, **settings)) as first:
        assert [(await asyncio.wait_for(first.getone(), WAIT_S)).offset for _ in range(3)] == [0, 1, 2]
        await first.commit()
        assert await first.committed(tp) == 3
    async with started(AIOKafkaConsumer(broker_name, **settings)) as second:
        resumed = await asyncio.wait_for(second.getone(), WAIT_S)
        assert (resumed.offset, resumed.value) == (3, b"m3")


async def test_kafka_transactions_commit_and_abort_but_read_committed_does_not_filter(
    kafka_mock: KafkaMock, kafka_bootstrap: str, broker_name: str
) -> None:
    out, source = f"{broker_name}-out", f"{broker_name}-in"
    kafka_mock.create_topic(out, 1)
    kafka_mock.create_topic(source, 1)
    group_tp = TopicPartition(source, 0)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=broker_name)
    async with started(producer):
        await producer.begin_transaction()
        await producer.send_and_wait(out, b"committed-1")
        await producer.send_offsets_to_transaction({group_tp: 7}, broker_name)
        await producer.commit_transaction()
        await producer.begin_transaction()
        await producer.send_and_wait(out, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(out, b"committed-2")
    # each transaction's marker takes an offset: 0 c1, 1 marker, 2 aborted, 3 marker, 4 c2, 5 marker
    expected = [(0, b"committed-1"), (2, b"aborted"), (4, b"committed-2")]
    # the mock's markers fail aiokafka's CRC check
    with pytest.raises(CorruptRecordException, match="Invalid CRC"):
        await read_all(kafka_bootstrap, out)
    # limits: read_committed sees the aborted message (no aborted-transactions list, no LSO from the mock)
    assert (
        await read_all(kafka_bootstrap, out, check_crcs=False, isolation_level="read_committed") == expected
    )
    assert await read_all(kafka_bootstrap, out, check_crcs=False) == expected
    # and the offsets sent to the transaction were not stored
    async with started(AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=broker_name)) as reader:
        assert await reader.committed(group_tp) is None


# --- Redis Streams: redis-server through redis.asyncio
# redis-py types its replies as the union of RESP2's and RESP3's shapes; the client speaks RESP2.


def entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XREADGROUP's reply for its one stream: ``[[stream, [(id, fields), ...]]]``."""
    return [(entry_id, fields) for entry_id, fields in reply[0][1]]


async def pending_entries(client: aioredis.Redis, stream: str, group: str) -> dict[Any, dict[str, Any]]:
    """XPENDING's extended form, by entry id: consumer, time_since_delivered (ms), times_delivered."""
    rows: Any = await client.xpending_range(stream, group, "-", "+", 100)
    return {row["message_id"]: row for row in rows}


async def test_redis_stream_group_read_ack_claim(redis_db: str, broker_name: str) -> None:
    client = aioredis.Redis.from_url(redis_db)
    stream, group = broker_name, "workers"
    try:
        ids = [await client.xadd(stream, {"n": str(i)}) for i in range(4)]
        await client.xgroup_create(stream, group, id="0")
        read = entries(await client.xreadgroup(group, "a", {stream: ">"}, count=3))
        assert [entry_id for entry_id, _ in read] == ids[:3]
        assert read[0][1] == {b"n": b"0"}
        assert await client.xack(stream, group, ids[0]) == 1
        pending = await client.xpending(stream, group)
        assert (pending["pending"], pending["min"], pending["max"]) == (2, ids[1], ids[2])

        # XCLAIM by the same consumer with min idle 0 resets the entry's idle time: a lease extension
        await asyncio.sleep(0.15)
        await client.xclaim(stream, group, "a", 0, [ids[1]], justid=True)
        pending_now = await pending_entries(client, stream, group)
        assert (
            pending_now[ids[1]]["time_since_delivered"] < 100 <= pending_now[ids[2]]["time_since_delivered"]
        )

        # XAUTOCLAIM hands entries idle for 100 ms or more to another consumer
        claimed = await client.xautoclaim(stream, group, "b", 100, "0-0", justid=True)
        assert claimed == [ids[2]]
        owners = {
            entry_id: row["consumer"]
            for entry_id, row in (await pending_entries(client, stream, group)).items()
        }
        assert owners == {ids[1]: b"a", ids[2]: b"b"}

        # XGROUP SETID moves the group's cursor: ">" reads from after it
        await client.xgroup_setid(stream, group, ids[0])
        again = entries(await client.xreadgroup(group, "c", {stream: ">"}))
        assert [entry_id for entry_id, _ in again] == ids[1:]
    finally:
        await client.aclose()


async def test_redis_db_is_emptied_for_each_test(redis_db: str) -> None:
    client = aioredis.Redis.from_url(redis_db)
    try:
        assert await client.dbsize() == 0
        await client.set("left-behind", "1")
    finally:
        await client.aclose()


# --- NATS JetStream: nats-server -js through nats-py


async def test_nats_durable_pull_consumer_from_a_sequence_ack_and_progress(
    nats_url: str, broker_name: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        subject = f"{broker_name}.events"
        await js.add_stream(name=broker_name, subjects=[f"{broker_name}.>"])
        for i in range(1, 6):
            ack = await js.publish(subject, b"e%d" % i)
            assert (ack.stream, ack.seq) == (broker_name, i)
        config = ConsumerConfig(
            durable_name="worker",
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=3,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=0.5,
        )
        sub = await js.pull_subscribe(subject, durable="worker", stream=broker_name, config=config)
        first = await sub.fetch(2, timeout=WAIT_S)
        assert [(m.metadata.sequence.stream, m.data) for m in first] == [(3, b"e3"), (4, b"e4")]
        await first[0].ack()

        # in_progress (AckProgress) restarts ack_wait: e4 is not redelivered while it is renewed
        for _ in range(3):
            await asyncio.sleep(0.3)
            await first[1].in_progress()
        third = await sub.fetch(1, timeout=WAIT_S)
        assert [(m.metadata.sequence.stream, m.metadata.num_delivered) for m in third] == [(5, 1)]
        await third[0].ack()
        # without progress, ack_wait runs out and e4 comes again
        redelivered = await sub.fetch(1, timeout=WAIT_S)
        assert [(m.data, m.metadata.num_delivered) for m in redelivered] == [(b"e4", 2)]
        await redelivered[0].ack_sync()

        info = await js.consumer_info(broker_name, "worker")
        assert (info.num_ack_pending, info.delivered.stream_seq, info.ack_floor.stream_seq) == (0, 5, 5)
    finally:
        await nc.close()
