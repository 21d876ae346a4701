"""The writer: commits each batch of the sources' events with its position, then lets the source
acknowledge it (invariant 1: acknowledge after durable; the seam is :mod:`listener.ingest.source`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from listener import metrics
from listener.ingest.source import BatchQueue
from listener.ingest.state import IngestState
from listener.supervise import shielded


async def write_batches(ingest: IngestState, queue: BatchQueue) -> None:
    """Commit the batches of ``queue`` one by one (events + position, one state-database transaction),
    each followed by its source's ``committed``; return at the end marker."""
    retention = ingest.retention
    stats = ingest.stats
    while True:
        item = await queue.get()
        if item is None:
            return
        batch, source = item
        del item
        if ingest.sink is not None and source.name == "pgoutput":
            # Kafka first, in a transaction with the checkpoint; it may hold the
            # batch's checkpoint back (listener.ingest.kafka_sink)
            await shielded(ingest.sink.publish(batch))
            if not ingest.to_postgres:
                batch.drop_events()
        # With a retention window a history row goes with a checkpoint every ``history_interval``.
        history_due = (
            retention is not None
            and batch.checkpoint is not None
            and time.monotonic() - ingest.history_at >= ingest.history_interval
        )
        if history_due:
            batch.retention = retention
        # The local workers' free slots, when they have nothing else to do (listener.queue.handoff).
        handoff = ingest.handoff
        offer = handoff.offer() if handoff is not None and batch.payload else None
        try:
            # shielded: a cancelled ingest still commits the batch it is writing (or rolls it back), cleanly
            inserted = await shielded(ingest.store.write_batch(batch, offer))
        except BaseException:
            if offer is not None:
                assert handoff is not None
                handoff.withdraw(offer)
            raise
        if handoff is not None and (offer is not None or batch.left_pending):
            handoff.hand(offer, batch.handed, left_pending=batch.left_pending)
            batch.handed = []
        queue.written(batch)
        stats.batches += 1
        stats.events_inserted += inserted
        if batch.checkpoint_time is not None:
            stats.measured(max(0.0, (datetime.now(UTC) - batch.checkpoint_time).total_seconds()))
        metrics.record_batch(batch, writer="stream")
        if history_due:
            ingest.history_at = time.monotonic()
        source.committed(batch)
        if ingest.on_batch is not None:
            ingest.on_batch(batch, inserted)
        # not held while waiting for the next one: its payloads may be a huge row's (invariant 6)
        del batch, source
