"""Queue sources: Kafka, Redis Streams and NATS JetStream messages as events (listener.ingest.source).

A ``queues:`` entry names one broker to read (:mod:`listener.ingest.brokers` speaks to each); rules name it
with ``queue:``.  Each message is read as the queue's ``format:`` says (JSON, or text), and each rule whose
``when:`` matches it (over ``body``, ``headers`` as jsonb and ``key``, ``topic`` as text) makes one event,
keyed ``rule/queue/position/0``: the message's broker position (``topic:partition:offset``, a Redis
stream's ``stream:entry id``, a JetStream ``stream:sequence``), so a redelivered message inserts nothing.

How it stays exactly once (invariants 2 and 11):

- The position each batch reaches is stored with its events, in the same state transaction
  (``queue_positions``); the broker is acknowledged (offset committed, entry XACKed, message acked) only
  after that commit (:meth:`QueueSource.committed`).
- A (re)start reads the stored positions and has the broker deliver what comes after them, not what the
  broker thinks was acknowledged (an acknowledgement lost in a crash is made again, not re-read as new).
  A message at or before the stored position, delivered again all the same, is acknowledged, not read.
- A message that cannot be read (not UTF-8 or not JSON for ``format: json``, a value jsonb refuses, a
  ``when:`` that fails on it) is *parked*: its raw bytes and the reason go to ``queue_parked`` in the
  transaction that moves the position past it, and the broker is acknowledged.  `listener queues parked`
  lists them, `listener replay --queue NAME` reads them again with the current configuration and makes
  their events (with the keys they would have had: :func:`parked_message` rebuilds each message).

Back-pressure: while more than ``max_backlog:`` ungated runs are pending, the source stops fetching
(messages fetched and not yet acknowledged are kept from redelivery meanwhile: JetStream's in-progress, a
Redis claim that resets the idle time).  The writer's queue is bounded too: a full one makes the
source wait before it fetches again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from listener.defaults import QUEUE_BACKLOG_POLL_S, QUEUE_EXTEND_S, QUEUE_FETCH_WAIT_S
from listener.errors import is_transient
from listener.ingest.brokers import Broker, Message, header_bytes, header_value, position_label
from listener.ingest.source import BatchQueue
from listener.ingest.state import IngestState
from listener.logs import fields
from listener.queue.batches import EventBatch
from listener.queue.store import StateStore, int8_array
from listener.rules.compile import CompiledRule
from listener.rules.config.models import QueueSettings
from listener.rules.parts import RequestParts, Unfit, json_text, matches
from listener.rules.predicate import EvaluationError
from listener.supervise import task_group

logger = logging.getLogger(__name__)


def make_broker(settings: QueueSettings) -> Broker:
    """The broker connection ``settings`` name (its client imported only when a queue uses it)."""
    if settings.kafka is not None:
        from listener.ingest.brokers.kafka import KafkaBroker

        return KafkaBroker(settings.name, settings.kafka)
    if settings.redis_stream is not None:
        from listener.ingest.brokers.redis_stream import RedisStreamBroker

        return RedisStreamBroker(settings.name, settings.redis_stream)
    assert settings.jetstream is not None
    from listener.ingest.brokers.jetstream import JetStreamBroker

    return JetStreamBroker(settings.name, settings.jetstream)


def key_text(key: bytes | None) -> str | None:
    """A message key as text: itself when UTF-8 without NUL, else ``base64:...``."""
    if key is None:
        return None
    value = header_value(key)
    return value if isinstance(value, str) else "base64:" + value["base64"]


def read_body(body: bytes, form: str) -> str:
    """The body as JSON text that jsonb takes: itself (``format: json``), or a JSON string (``text``);
    Unfit says why not."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unfit(f"the body is not UTF-8 (byte {exc.start})") from None
    if form == "text":
        if "\x00" in text:
            raise Unfit("the body holds NUL, which PostgreSQL's jsonb cannot store")
        return json.dumps(text, ensure_ascii=False)
    return json_text(text)


@dataclass(slots=True)
class Read:
    """A message's events, or why it is parked."""

    events: list[tuple[CompiledRule, str, str | None]] = field(default_factory=list)  # rule, payload, key
    parked: str | None = None


def read_message(
    queue: str, form: str, message: Message, rules: Sequence[CompiledRule], now: datetime
) -> Read:
    """What ``message`` makes under ``rules``: (rule, payload JSON, run key) per matching rule, or the
    reason it is parked.  The same live and in `listener replay --queue`."""
    try:
        body = read_body(message.body, form)
    except Unfit as unfit:
        return Read(parked=str(unfit))
    headers = {name: header_value(value) for name, value in message.headers}
    key = key_text(message.key)
    headers_json = json.dumps(headers, ensure_ascii=False)
    columns = {"body": body, "headers": headers_json, "key": key, "topic": message.topic}
    matched = []
    for rule in rules:
        try:
            if matches(rule, columns, now):
                matched.append(rule)
        except EvaluationError as exc:
            return Read(parked=f"rule {rule.name!r}: `when:` failed on this message: {exc}")
    if not matched:
        return Read()
    about = json.dumps(
        {
            "queue": queue,
            "topic": message.topic,
            "position": message.label,
            "key": key,
            "sent_at": message.sent_at.isoformat() if message.sent_at is not None else None,
        },
        ensure_ascii=False,
    )
    about = f'{about[:-1]}, "headers": {headers_json}}}'
    parts = RequestParts(body, {"headers": headers, "key": key, "topic": message.topic}, headers_case=True)
    return Read(
        events=[
            (
                rule,
                f'{{"data": {parts.picked(rule) if rule.payload else body}, "message": {about}}}',
                parts.run_key(rule) if rule.gated else None,
            )
            for rule in matched
        ]
    )


def add_events(batch: EventBatch, queue: str, message: Message, read: Read) -> None:
    """``read``'s events of ``message`` into ``batch`` (keys ``rule/queue/label/0``)."""
    commit = f"{queue}/{message.label}"
    for rule, payload, run_key in read.events:
        group = batch.group_id(rule, None, None, commit, None, message.sent_at)
        batch.add(group, 0, 0, payload, key=run_key)


def park_row(queue: str, message: Message, reason: str) -> tuple[Any, ...]:
    """``message``'s row of ``queue_parked``."""
    headers = json.dumps({name: header_value(value) for name, value in message.headers}, ensure_ascii=False)
    return (
        queue,
        message.part,
        int8_array(message.position),
        message.topic,
        message.sent_at,
        reason,
        message.key,
        headers,
        message.body,
    )


def parked_message(row: Mapping[str, Any]) -> Message:
    """The message a row of ``queue_parked`` holds (:func:`park_row`'s inverse), to read it again: the same
    label, hence the same event keys.  Its headers come back by name (jsonb keeps one value per name, in
    its own order)."""
    position = tuple(row["position"])
    headers = row["headers"]
    if isinstance(headers, str):  # asyncpg hands jsonb over as text
        headers = json.loads(headers)
    return Message(
        part=row["part"],
        position=position,
        label=position_label(row["part"], position),
        topic=row["topic"],
        body=bytes(row["body"]),
        key=bytes(row["msg_key"]) if row["msg_key"] is not None else None,
        headers=[(name, header_bytes(value)) for name, value in headers.items()],
        sent_at=row["sent_at"],
    )


class QueueSource:
    """One ``queues:`` entry, reading into the ingest's writer."""

    def __init__(self, settings: QueueSettings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.queue = settings.name
        self.name = f"queue {settings.name}"
        self.ingest: IngestState | None = None
        self._broker = broker
        self._acks: asyncio.Queue[list[Message]] | None = None
        self._in_flight: dict[int, list[Message]] = {}  # by id(batch): fetched, not yet acknowledged
        self._runs_in_flight: dict[int, int] = {}  # by id(batch): its ungated runs, not yet committed
        self._stored: dict[str, tuple[int, ...]] = {}  # part -> the last position durable
        self.parked = 0  # messages parked since start (for logs and tests)

    def attach(self, ingest: IngestState) -> None:
        """Read into ``ingest``'s writer, with its rules: this source joins its sources."""
        self.ingest = ingest
        ingest.sources.append(self)

    @property
    def store(self) -> StateStore:
        assert self.ingest is not None, "attach the source to an ingest first"
        return self.ingest.store

    # -- the source seam --------------------------------------------------------------------------------

    def committed(self, batch: EventBatch) -> None:
        messages = self._in_flight.pop(id(batch), None)
        self._runs_in_flight.pop(id(batch), None)
        if messages is None:
            return
        for part, position in batch.positions.items():
            if position > self._stored.get(part[1], ()):
                self._stored[part[1]] = position
        if self._acks is not None:
            self._acks.put_nowait(messages)

    async def run(self, out: BatchQueue) -> None:
        """Read from where the state database says this queue stands until cancelled; a lost broker
        raises (transient: the supervisor starts the source again, from the stored positions)."""
        broker = self._broker or make_broker(self.settings)
        self._acks = asyncio.Queue()
        self._in_flight.clear()
        self._runs_in_flight.clear()
        try:
            self._stored.clear()  # in place: the broker reads it whenever partitions are assigned
            self._stored.update(await self.store.queue_positions(self.queue))
            await broker.start(self._stored)
            logger.info(
                "queue %s: reading (%s), after %s",
                self.queue,
                self.settings.broker,
                ", ".join(f"{part} {pos}" for part, pos in self._stored.items()) or "no stored position",
            )
            # supervise.task_group: a lost broker raises as itself (transient), not inside an exception group
            async with task_group() as tasks:
                tasks.create_task(self._acknowledge(broker), name=f"{self.name}-ack")
                tasks.create_task(self._extend(broker), name=f"{self.name}-extend")
                await self._read(broker, out)
        finally:
            self._acks = None
            self._in_flight.clear()
            self._runs_in_flight.clear()
            await broker.close()

    async def _read(self, broker: Broker, out: BatchQueue) -> None:
        settings = self.settings
        while True:
            if settings.max_backlog is not None:
                await self._room_in_backlog(broker, settings.max_backlog)
            await out.room()
            messages = await broker.fetch(settings.fetch, QUEUE_FETCH_WAIT_S)
            if not messages:
                continue
            batch, fresh, old = self._batch(messages)
            if old:
                await broker.ack(old)  # durable before: delivered again after a lost acknowledgement
            if fresh:
                self._in_flight[id(batch)] = fresh
                self._runs_in_flight[id(batch)] = sum(not batch.groups[g - 1][7] for g in batch.group)
                await out.put(batch, self)

    def _batch(self, messages: list[Message]) -> tuple[EventBatch, list[Message], list[Message]]:
        """The batch of ``messages`` not yet durable (the others, to acknowledge again)."""
        assert self.ingest is not None
        rules = self.ingest.rules.queues.get(self.queue, ())
        now = datetime.now(UTC)
        batch = EventBatch()
        fresh, old = [], []
        for message in messages:
            stored = self._stored.get(message.part)
            if stored is not None and message.position <= stored:
                old.append(message)
                continue
            fresh.append(message)
            read = read_message(self.queue, self.settings.format, message, rules, now)
            if read.parked is not None:
                self._park(batch, message, read.parked)
                batch.nbytes += len(message.body)
            else:
                add_events(batch, self.queue, message, read)
            where = (self.queue, message.part)
            if message.position > batch.positions.get(where, ()):
                batch.positions[where] = message.position
        return batch, fresh, old

    def _park(self, batch: EventBatch, message: Message, reason: str) -> None:
        self.parked += 1
        batch.parked.append(park_row(self.queue, message, reason))
        logger.warning(
            "queue %s: message %s parked: %s (`listener queues parked` lists it, `listener replay --queue "
            "%s` makes its events once the cause is fixed)",
            self.queue,
            message.label,
            reason,
            self.queue,
            extra=fields(queue=self.queue),
        )

    async def _room_in_backlog(self, broker: Broker, limit: int) -> None:
        """Wait while more than ``limit`` ungated runs are pending, holding the broker's session (a
        failure to count: the last answer stands for one round).  The runs of batches fetched and not yet
        committed count too: else each fetch while the writer is behind would pass the limit again."""
        full = held = False
        while True:
            try:
                # in flight first: a batch committed while the count runs is counted twice, not missed
                in_flight = sum(self._runs_in_flight.values())
                full = await self.store.runs_ahead(limit + 1) + in_flight > limit
            except Exception as exc:
                if not is_transient(exc):
                    raise
            if not full:
                if held:
                    logger.info("queue %s: the backlog is under %d runs: fetching again", self.queue, limit)
                return
            if not held:
                held = True
                logger.warning(
                    "queue %s: more than %d ungated runs are pending (max_backlog:): not fetching until "
                    "the workers catch up",
                    self.queue,
                    limit,
                    extra=fields(queue=self.queue),
                )
            await broker.hold()
            await asyncio.sleep(QUEUE_BACKLOG_POLL_S)

    async def _acknowledge(self, broker: Broker) -> None:
        """Acknowledge each committed batch's messages, in commit order."""
        assert self._acks is not None
        while True:
            messages = await self._acks.get()
            await broker.ack(messages)

    async def _extend(self, broker: Broker) -> None:
        """Every ``QUEUE_EXTEND_S``, keep the messages fetched and not yet durable from redelivery."""
        while True:
            await asyncio.sleep(QUEUE_EXTEND_S)
            waiting = [m for messages in self._in_flight.values() for m in messages]
            if waiting:
                await broker.extend(waiting)
