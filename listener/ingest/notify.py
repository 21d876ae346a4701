"""LISTEN/NOTIFY on the rules' channels as a source of events (see :mod:`listener.ingest.source`)."""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid

import asyncpg

from listener.defaults import BATCH_BYTES, NOTIFY_BUFFER_BYTES
from listener.ingest.source import BatchQueue
from listener.ingest.state import IngestState
from listener.pg.conninfo import asyncpg_params
from listener.queue.batches import EventBatch
from listener.rules.events import append_notify_events
from listener.supervise import ConnectionWatch

logger = logging.getLogger(__name__)


class NotifySource:
    """NOTIFY → events.  Its batches carry no position: the server keeps no notification for a session
    that is not listening, so there is nothing to resume from and nothing to acknowledge."""

    name = "notify"

    def __init__(self, ingest: IngestState) -> None:
        self.ingest = ingest

    def committed(self, batch: EventBatch) -> None:
        """Nothing to acknowledge (at most once)."""

    async def run(self, out: BatchQueue) -> None:
        """NOTIFY on the rules' channels → events, at most once: a notification sent while no session
        listens is gone (the server keeps none), and so is one that arrives while ``NOTIFY_BUFFER_BYTES``
        of them wait for the writer (counted in ``stats.notifies_dropped`` and logged).  Keys name this
        listening session and a counter.  Runs supervised: a lost connection raises, and the supervisor
        listens again after a backoff."""
        ingest = self.ingest
        conn = await asyncpg.connect(**asyncpg_params(ingest.source_dsn))
        session = uuid.uuid4().hex[:12]
        received: collections.deque[tuple[int, str, str]] = collections.deque()
        arrived = asyncio.Event()
        buffered = 0  # bytes of the payloads in ``received``
        dropped = 0  # since the last report

        def on_notify(_c: object, pid: int, channel: str, data: str) -> None:
            nonlocal buffered, dropped
            if buffered and buffered + len(data) > NOTIFY_BUFFER_BYTES:
                if not dropped:
                    logger.warning(
                        "NOTIFY: %d MB of notifications wait for the writer; dropping more until it "
                        "catches up (NOTIFY is at most once)",
                        NOTIFY_BUFFER_BYTES >> 20,
                    )
                dropped += 1
                ingest.stats.notifies_dropped += 1
                return
            buffered += len(data)
            received.append((pid, channel, data))
            arrived.set()

        try:
            with ConnectionWatch(conn, arrived, "NOTIFY listener's") as lost:
                for channel in ingest.rules.channels:
                    await conn.add_listener(channel, on_notify)
                ingest.listening.set()
                counter = 0
                while True:
                    await arrived.wait()
                    arrived.clear()
                    lost.check()
                    batch = EventBatch()
                    while received and len(batch) < ingest.batch_events and batch.nbytes < BATCH_BYTES:
                        pid, channel, data = received.popleft()
                        buffered -= len(data)
                        append_notify_events(
                            batch, channel, data, pid, f"notify/{session}", counter, ingest.rules
                        )
                        counter += 1
                    if received:
                        arrived.set()
                    elif dropped:
                        logger.warning(
                            "NOTIFY: dropped %d notification(s) while the buffer was full", dropped
                        )
                        dropped = 0
                    if batch:
                        await out.put(batch, self)
        finally:
            ingest.listening.clear()
            await conn.close()
