"""A Kafka topic read as a read_committed consumer would see it, worked out by the test itself.

librdkafka's mock cluster (tests/brokers.py) writes transaction markers but does not tell consumers which
transactions were aborted, so a consumer's ``read_committed`` shows aborted records too.  This reader
fetches the whole log with aiokafka (read uncommitted), keeps the control batches (commit and abort
markers) that aiokafka would skip, and keeps a transactional record only when the next marker of its
producer commits it: what a real broker's read_committed delivers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.consumer.fetcher import PartitionRecords


@dataclass(frozen=True, slots=True)
class _Marker:
    offset: int
    producer_id: int
    commit: bool


@dataclass(frozen=True, slots=True)
class _Record:
    offset: int
    producer_id: int | None  # None: not transactional
    record: Any


def _every_batch(self: Any) -> Iterator[Any]:
    """PartitionRecords._unpack_records, keeping the markers and each record's producer."""
    records = self._records
    while records.has_next():
        batch = records.next_batch()
        if batch.is_control_batch:
            yield _Marker(batch.base_offset, batch.producer_id, not self._contains_abort_marker(batch))
            self.next_fetch_offset = batch.next_offset
            continue
        producer = batch.producer_id if batch.is_transactional else None
        for record in batch:
            if record.offset < self.next_fetch_offset:
                continue
            self.next_fetch_offset = record.offset + 1
            yield _Record(record.offset, producer, self._consumer_record(self._tp, record))
        self.next_fetch_offset = batch.next_offset


@dataclass
class CommittedLog:
    """The records of a topic, split by what became of their transactions."""

    committed: list[Any] = field(default_factory=list)
    aborted: list[Any] = field(default_factory=list)
    open: list[Any] = field(default_factory=list)  # of a transaction with no marker yet


async def read_committed(bootstrap: str, topic: str) -> CommittedLog:
    """Every record of ``topic``, sorted by the fate of its transaction, partition by partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        numbers = sorted(await producer.partitions_for(topic))
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_uncommitted",
        auto_offset_reset="earliest",
        check_crcs=False,  # the mock's markers fail aiokafka's CRC check
    )
    original = PartitionRecords._unpack_records
    PartitionRecords._unpack_records = _every_batch
    log = CommittedLog()
    try:
        await consumer.start()
        partitions = [TopicPartition(topic, n) for n in numbers]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp, first in (await consumer.beginning_offsets(partitions)).items():
            # the mock keeps a bounded log per partition, dropping the oldest records beyond it
            assert first == 0, f"{tp} starts at offset {first}: the broker dropped records (write less)"
            consumer.seek(tp, first)
        items: dict[TopicPartition, list[Any]] = {tp: [] for tp in partitions}
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                items[tp].extend(batch)
        for entries in items.values():
            pending: dict[int, list[Any]] = {}
            for item in sorted(entries, key=lambda i: i.offset):
                if isinstance(item, _Marker):
                    fate = log.committed if item.commit else log.aborted
                    fate.extend(pending.pop(item.producer_id, []))
                elif item.producer_id is None:
                    log.committed.append(item.record)
                else:
                    pending.setdefault(item.producer_id, []).append(item.record)
            for records in pending.values():
                log.open.extend(records)
    finally:
        PartitionRecords._unpack_records = original
        await consumer.stop()
    return log
