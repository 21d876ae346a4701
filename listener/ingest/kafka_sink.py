"""Kafka as the event log (``sink: kafka:``): the slot's events published in Kafka transactions that also
carry the replication checkpoint, so that Kafka receives each event exactly once.

Each batch of the slot (listener.ingest.writer) is one Kafka transaction of a transactional producer
(id ``listener.<slot>`` unless ``transactional_id:`` says otherwise):

- one record per event on ``topic``: the event as JSON (idempotency key, rule, workflow, source, op,
  table, LSN, commit LSN, xid, commit time, payload), keyed by its flow-control key (gated rules: runs of
  one key land on one partition, in commit order), with the idempotency key in the ``idempotency-key``
  header;
- one record on ``offsets_topic`` (compacted), keyed by the slot: the batch's checkpoint.

The transaction commits before the batch's Postgres transaction, and the slot is confirmed only after
both.  At the start of each session, the producer is started again (which fences an earlier one with the
same id and aborts its open transaction) and the slot's last checkpoint is read back from the offsets topic
(read committed).  Streaming starts at the lower of the Postgres and the Kafka checkpoints: the Postgres
queue inserts nothing twice (idempotency keys), and the sink publishes only events of transactions
committed after Kafka's checkpoint.  A consumer reading ``topic`` with ``isolation_level=read_committed``
therefore sees every event of the slot once.

Scope: the slot's events (table and ``message:`` rules) of live streaming.  Events below Kafka's
checkpoint (a `listener rewind`, a restart's re-read) are not published again; backfill chunks, webhooks,
schedules, queue sources and NOTIFY write to Postgres only.  Compact storage is off with a Kafka sink
(every event is built at ingest).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from listener.defaults import KAFKA_SINK_TIMEOUT_S, KAFKA_TRANSACTION_TIMEOUT_MS, QUEUE_CONNECT_TIMEOUT_S
from listener.logs import fields
from listener.pg.lsn import format_lsn, parse_lsn
from listener.queue.batches import EventBatch
from listener.rules.config.models import KafkaSinkSettings

logger = logging.getLogger(__name__)

_IN_WAL = ("cdc", "message")  # event sources whose events carry an LSN: the slot's
_READ_POLL_MS = 200


class KafkaSink:
    """The slot's events into Kafka, exactly once (see the module)."""

    def __init__(self, settings: KafkaSinkSettings, slot: str) -> None:
        self.settings = settings
        self.slot = slot
        self.transactional_id = settings.transactional_id or f"listener.{slot}"
        self.checkpoint: int | None = None  # the last checkpoint Kafka committed
        self.published = 0  # events published since start (for logs and tests)
        self._producer: Any = None
        # while a Kafka transaction is open: the highest commit LSN of the events sent in it
        self._open_upto: int | None = None

    async def start(self) -> int | None:
        """Start the transactional producer (fencing an earlier one with this id) and read the slot's
        last committed checkpoint from the offsets topic; return it (None: Kafka has none)."""
        await self.close()
        await self._ensure_offsets_topic()
        producer = AIOKafkaProducer(
            bootstrap_servers=list(self.settings.brokers),
            client_id=f"listener-sink-{self.slot}",
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
            request_timeout_ms=int(KAFKA_SINK_TIMEOUT_S * 1000),
            # a source transaction larger than one batch keeps its Kafka transaction open across batches:
            # the brokers' default limit (transaction.max.timeout.ms), not the client's 60 s
            transaction_timeout_ms=KAFKA_TRANSACTION_TIMEOUT_MS,
        )
        await producer.start()  # InitProducerId: an earlier producer's open transaction is aborted
        self._producer = producer
        numbers = await producer.partitions_for(self.settings.offsets_topic)
        self.checkpoint = await self._read_checkpoint(sorted(numbers))
        logger.info(
            "kafka sink: publishing slot %s to topic %s (transactional id %s), Kafka's checkpoint %s",
            self.slot,
            self.settings.topic,
            self.transactional_id,
            format_lsn(self.checkpoint) if self.checkpoint is not None else "none yet",
            extra=fields(slot=self.slot),
        )
        return self.checkpoint

    async def _ensure_offsets_topic(self) -> None:
        """Create the offsets topic, compacted, if the brokers let us (else it is made on first use)."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=list(self.settings.brokers),
            request_timeout_ms=int(QUEUE_CONNECT_TIMEOUT_S * 1000),
        )
        try:
            await admin.start()
            brokers = len((await admin.describe_cluster())["brokers"])
            topic = NewTopic(
                self.settings.offsets_topic,
                1,
                min(3, brokers),  # replicated as far as the cluster allows
                topic_configs={"cleanup.policy": "compact", "min.insync.replicas": str(min(2, brokers))},
            )
            await admin.create_topics([topic])
        except TopicAlreadyExistsError:
            pass
        except (KafkaError, AttributeError) as exc:  # a broker without CreateTopics (the mock cluster)
            logger.info("kafka sink: the offsets topic was not created (%s): created on first use", exc)
        finally:
            await admin.close()

    def _consumer(self, isolation: str) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=list(self.settings.brokers),
            enable_auto_commit=False,
            isolation_level=isolation,
            auto_offset_reset="earliest",
            check_crcs=self.settings.check_crcs,
            request_timeout_ms=int(KAFKA_SINK_TIMEOUT_S * 1000),
        )

    async def _read_checkpoint(self, numbers: list[int]) -> int | None:
        """The last checkpoint of this slot committed to partitions ``numbers`` of the offsets topic, read
        committed, up to the high watermarks: the producer was just started, so no transaction of this
        sink is open any more, and everything before them is decided."""
        topic = self.settings.offsets_topic
        partitions = [TopicPartition(topic, n) for n in numbers]
        if not partitions:
            return None
        marks = self._consumer("read_uncommitted")
        await marks.start()
        try:
            ends = await marks.end_offsets(partitions)
        finally:
            await marks.stop()
        consumer = self._consumer("read_committed")
        await consumer.start()
        try:
            consumer.assign(partitions)
            for tp, first in (await consumer.beginning_offsets(partitions)).items():
                consumer.seek(tp, first)  # not seek_to_beginning: position() may still answer the old place
            found: int | None = None
            slot = self.slot.encode()
            while True:
                behind = [tp for tp in partitions if await consumer.position(tp) < ends[tp]]
                if not behind:
                    return found
                batches = await consumer.getmany(*behind, timeout_ms=_READ_POLL_MS)
                for records in batches.values():
                    for record in records:
                        if record.key == slot and record.value:
                            found = parse_lsn(json.loads(record.value)["lsn"])
        finally:
            await consumer.stop()

    async def publish(self, batch: EventBatch) -> None:
        """Send the slot's events of ``batch`` committed after Kafka's checkpoint into the open Kafka
        transaction (one is begun if none is), and commit it with the batch's checkpoint once every event
        sent belongs to a transaction that the checkpoint covers.

        A batch cut in the middle of a source transaction (``batch_events:``) leaves the Kafka transaction
        open, to be committed by the batch that completes it, and loses its checkpoint: the state database
        and the slot do not move past what Kafka has committed.  A crash meanwhile aborts the Kafka
        transaction (the next producer fences it), and the source transaction is read and sent again."""
        producer = self._producer
        assert producer is not None, "start the sink first"
        after = self.checkpoint if self.checkpoint is not None else -1
        # each group's commit LSN, parsed once (-1: a group of no slot transaction)
        commits = [parse_lsn(g[4]) if g[11] in _IN_WAL else -1 for g in batch.groups]
        fresh = [i for i, g in enumerate(batch.group) if commits[g - 1] > after]
        checkpoint = batch.checkpoint if batch.checkpoint is not None and batch.checkpoint > after else None
        if not fresh and checkpoint is None:
            return
        if self._open_upto is None:
            await producer.begin_transaction()
            self._open_upto = -1
        for index in fresh:
            key = batch.key[index]
            event_key = batch.event_key(index)
            await producer.send(
                self.settings.topic,
                value=self._record(batch, index, event_key).encode(),
                key=key.encode() if key is not None else None,
                headers=[("idempotency-key", event_key.encode())],
            )
            self._open_upto = max(self._open_upto, commits[batch.group[index] - 1])
        self.published += len(fresh)
        if checkpoint is None or checkpoint <= self._open_upto:
            # a source transaction is still open in this Kafka transaction: neither the state database's
            # checkpoint nor the slot may pass Kafka's
            batch.checkpoint = batch.checkpoint_time = None
            return
        value = json.dumps({"slot": self.slot, "lsn": format_lsn(checkpoint)})
        await producer.send(self.settings.offsets_topic, value=value.encode(), key=self.slot.encode())
        await producer.commit_transaction()
        self._open_upto = None
        self.checkpoint = checkpoint

    @staticmethod
    def _record(batch: EventBatch, index: int, event_key: str) -> str:
        rule, workflow, op, table, commit, xid, at, *_, source = batch.groups[batch.group[index] - 1]
        about = json.dumps(
            {
                "idempotency_key": event_key,
                "rule": rule,
                "workflow": workflow,
                "source": source,
                "op": op,
                "table": table,
                "lsn": format_lsn(batch.lsn[index]),
                "commit_lsn": commit,
                "xid": xid,
                "commit_time": at.isoformat() if at is not None else None,
            }
        )
        return f'{about[:-1]}, "payload": {batch.payload[index]}}}'

    async def close(self) -> None:
        self._open_upto = None  # an open transaction is aborted by the next producer's start
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()
