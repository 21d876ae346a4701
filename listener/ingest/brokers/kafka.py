"""Kafka topics read through a consumer group (aiokafka), for :class:`listener.ingest.queues.QueueSource`.

A record's position is its offset in its partition (part ``topic:partition``).  Offsets are committed
to the group by hand, after the commit of their events; whenever partitions are assigned (at start, after
a rebalance), each is sought to the offset after its stored position, so a lost commit of the group's
offset reads nothing twice; a partition without a stored position starts from the group's committed
offset, else from its earliest record.  Records of transactions are read committed only.  While
fetching is stopped (back-pressure), the partitions are paused and the consumer still polls, so it keeps
its place in the group.  ``session_timeout:`` sets how long the group waits for a member that went
silent (a killed process) before its partitions go to another member: aiokafka's 10 s by default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from listener.defaults import QUEUE_CONNECT_TIMEOUT_S
from listener.ingest.brokers import Message, position_label
from listener.rules.config.models import KafkaSettings


def part_of(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


class _SeekStored(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, each partition from after its stored position."""

    def __init__(self, consumer: AIOKafkaConsumer, positions: Mapping[str, tuple[int, ...]]) -> None:
        self.consumer = consumer
        self.positions = positions

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        for tp in assigned:
            stored = self.positions.get(part_of(tp))
            if stored is not None:
                self.consumer.seek(tp, stored[0] + 1)


class KafkaBroker:
    def __init__(self, queue: str, settings: KafkaSettings) -> None:
        self.queue = queue
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self._paused = False

    async def start(self, positions: Mapping[str, tuple[int, ...]]) -> None:
        s = self.settings
        timeouts: dict[str, int] = {}
        if s.session_timeout_ms is not None:
            timeouts = {
                "session_timeout_ms": s.session_timeout_ms,
                "heartbeat_interval_ms": max(1, s.session_timeout_ms // 3),
            }
        consumer = AIOKafkaConsumer(
            bootstrap_servers=list(s.brokers),
            group_id=s.group,
            client_id=f"listener-{self.queue}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            request_timeout_ms=int(QUEUE_CONNECT_TIMEOUT_S * 1000) * 3,
            **timeouts,
        )
        self._consumer = consumer
        await consumer.start()
        consumer.subscribe(list(s.topics), listener=_SeekStored(consumer, positions))

    async def fetch(self, limit: int, wait_s: float) -> list[Message]:
        consumer = self._consumer
        assert consumer is not None
        if self._paused:
            consumer.resume(*consumer.assignment())
            self._paused = False
        batches = await consumer.getmany(timeout_ms=int(wait_s * 1000), max_records=limit)
        messages = []
        for tp, records in batches.items():
            part = part_of(tp)
            for record in records:
                messages.append(
                    Message(
                        part=part,
                        position=(record.offset,),
                        label=position_label(part, (record.offset,)),
                        topic=tp.topic,
                        body=record.value if record.value is not None else b"",
                        key=record.key,
                        headers=list(record.headers or ()),
                        sent_at=datetime.fromtimestamp(record.timestamp / 1000, UTC)
                        if record.timestamp is not None and record.timestamp >= 0
                        else None,
                        token=tp,
                    )
                )
        return messages

    async def ack(self, messages: Sequence[Message]) -> None:
        consumer = self._consumer
        assert consumer is not None
        offsets: dict[TopicPartition, int] = {}
        for message in messages:
            offsets[message.token] = max(offsets.get(message.token, 0), message.position[0] + 1)
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not offsets:
            return
        # rebalanced meanwhile: the stored position, not the group's offset, says where to go on
        with contextlib.suppress(CommitFailedError, IllegalStateError):
            await consumer.commit(offsets)

    async def extend(self, messages: Sequence[Message]) -> None:
        """Kafka has no visibility timeout: the consumer's heartbeats keep its partitions."""

    async def hold(self) -> None:
        """Pause the partitions and poll, so the consumer keeps its place in the group."""
        consumer = self._consumer
        assert consumer is not None
        if not self._paused:
            consumer.pause(*consumer.assignment())
            self._paused = True
        await consumer.getmany(timeout_ms=0)

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
