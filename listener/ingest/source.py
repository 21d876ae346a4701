"""The source seam (DESIGN.md, invariant 11): every event source reaches the state store the same way.

A source turns what happens at its origin into :class:`~listener.queue.batches.EventBatch` es and puts them,
each with itself, on the :class:`BatchQueue` of the ingest's one writer.  The writer commits a batch's
events and its position (``batch.checkpoint`` and friends) in one state-database transaction, and only
then calls :meth:`Source.committed`: that is where a source acknowledges to its origin.  Sources served
today:

- :class:`listener.ingest.reader.PgoutputSource`: row changes and logical decoding messages of the
  replication slot (keys ``rule/commit LSN/ordinal``); position: the end LSN of the last complete
  transaction, confirmed to the server in ``committed``.  Backfill chunks ride on it: their watermark
  messages come through the slot, and ``committed`` hands the chunk back to ``listener.ingest.backfill``.
- :class:`listener.ingest.notify.NotifySource`: LISTEN/NOTIFY (keys ``notify/session/counter``); NOTIFY
  has no position the server keeps, so ``committed`` has nothing to acknowledge (at most once).
- :class:`listener.http.webhooks.WebhookSource` (keys ``rule/webhook/delivery id/0``; no position: the
  provider redelivers until answered 2xx) and :class:`listener.ingest.schedules.ScheduleSource` (keys
  ``schedule/NAME/tick/0``; position: each schedule's last tick, in the ``schedules`` table).

How a new source (a webhook receiver, a schedule, a broker consumer) implements it:

1. Build events with the ``append_*_events`` functions of :mod:`listener.rules.events` (or a new one
   there) into an ``EventBatch``; every idempotency key must be a pure function of what the origin sent
   (a delivery id, a tick's time, a broker offset), so that a redelivery inserts nothing new.
2. Put the origin's position where the state transaction carries it (today ``checkpoint`` for the slot;
   a new kind of position is a new field of ``EventBatch`` that ``StateStore.write_batch`` stores in the
   same transaction), then ``await out.put(batch, self)``.  The key's middle part (``commit`` of
   ``group_id``) is an LSN for the slot's events; for events whose source is ``notify`` it is free text
   (``sql/queries/events.sql``, ``insert_events``): a new kind of source names itself in the events'
   ``source`` column the same way (``listener.queue.batches._EVENT_SOURCE`` and that statement).
   The queue is bounded in bytes: a put waits
   while the writer is behind (back-pressure: stop fetching meanwhile).
3. In ``committed(batch)``, acknowledge exactly what ``batch`` carried (answer the HTTP request, ack or
   commit the broker offset).  It runs on the writer's task, after the commit: keep it short and never
   let it raise for a transient reason (the events are durable already; on a restart the source resumes
   from the stored position, not the origin's).
   A source whose batches carry no position, so that their order does not matter, may instead commit
   them itself with ``StateStore.write_batch``, several at once on the writer pool's connections (the
   webhooks do: a request waits for its own commit, not for the slot's batches), acknowledging each
   after its commit all the same.
4. Run it beside the others: append it to ``Ingest.sources`` before ``Ingest.run``.  Each streaming
   session runs ``source.run(queue)`` as a supervised task of its task group, with that session's writer
   queue (a transient failure restarts it after a backoff; a session that ends cancels it, and the next
   session runs it again with its own queue: batches that a failing session leaves uncommitted are never
   acknowledged, so the origin delivers them again, and their keys insert nothing twice).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from listener.defaults import WRITE_QUEUE_BATCHES, WRITE_QUEUE_BYTES
from listener.queue.batches import EventBatch
from listener.supervise import first_of


class Source(Protocol):
    """Something that yields events with deterministic keys and a position that commits in the same
    state transaction as them, acknowledged to its origin only after that commit (see the module)."""

    name: str  # for logs and task names: "pgoutput", "notify", ...

    async def run(self, out: BatchQueue) -> None:
        """Put batches on ``out`` (``await out.put(batch, self)``) until the origin ends or this task is
        cancelled; a lost connection raises (a transient error: the supervisor starts it again)."""

    def committed(self, batch: EventBatch) -> None:
        """``batch`` (one this source put) is durable: acknowledge its position to the origin."""


class BatchQueue:
    """Batches on their way to the writer, each with the source that made it, bounded in count
    (``WRITE_QUEUE_BATCHES``) and in bytes: a put waits while the batches queued or being written hold
    ``max_bytes`` (one is always let through, however big).  The writer calls :meth:`written` when it is
    done with a batch; ``None`` ends the writer."""

    def __init__(self, max_batches: int = WRITE_QUEUE_BATCHES, max_bytes: int = WRITE_QUEUE_BYTES) -> None:
        self._queue: asyncio.Queue[tuple[EventBatch, Source] | None] = asyncio.Queue(maxsize=max_batches)
        self.max_bytes = max_bytes
        self.held = 0  # bytes of the batches put and not yet written
        self._room = asyncio.Event()

    async def put(self, item: EventBatch | None, source: Source | None = None) -> None:
        """Queue ``item`` from ``source`` for the writer (``None``: the end, see :meth:`end`)."""
        if item is None:
            await self._queue.put(None)
            return
        assert source is not None, "a batch goes to the writer with the source to acknowledge it"
        size = item.nbytes
        while self.held and self.held + size > self.max_bytes:
            self._room.clear()
            await self._room.wait()
        self.held += size
        await self._queue.put((item, source))

    async def get(self) -> tuple[EventBatch, Source] | None:
        """The next batch and its source (``None``: the end)."""
        return await self._queue.get()

    def qsize(self) -> int:
        return self._queue.qsize()

    def written(self, batch: EventBatch) -> None:
        self.held -= batch.nbytes
        self._room.set()

    async def room(self) -> None:
        """Wait until the batches queued or being written hold less than ``max_bytes``."""
        while self.held >= self.max_bytes:
            self._room.clear()
            await self._room.wait()

    async def end(self, writer: asyncio.Task[None]) -> None:
        """Let ``writer`` commit what is queued and end; raises what it failed with.  A writer that fails
        meanwhile (its connection lost with the reader's, in a restart) takes nothing more from a full
        queue: waiting for room for the end marker would wait for ever."""
        if not writer.done():
            await first_of(self.put(None), asyncio.shield(writer))
        await writer
