"""Rewinds: which recorded rewind a session carries out, the watcher that restarts the session when one
is recorded, and the dry run that counts what a rewind would do (``listener rewind --dry-run``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from listener.errors import ListenerError
from listener.ingest.reader import PgoutputSource
from listener.ingest.source import BatchQueue
from listener.ingest.state import IngestState
from listener.pg.conninfo import connect_async
from listener.pg.lsn import format_lsn
from listener.pg.publications import streamed_publications
from listener.pg.replication import ReplicationSession
from listener.queue.batches import EventBatch, RewindPlan
from listener.queue.store import StateStore, control_channel
from listener.supervise import ConnectionWatch, first_of, task_group

logger = logging.getLogger(__name__)


def moved_past(confirmed: int, rewind: RewindPlan) -> str:
    return (
        f"the slot had already confirmed {format_lsn(confirmed)}, past the rewind's start "
        f"{format_lsn(rewind.start_lsn)}, before it began; rewind to a later position, or keep more "
        "with `retain:`"
    )


async def next_rewind(ingest: IngestState, confirmed: int | None) -> RewindPlan | None:
    """The oldest recorded rewind this session can carry out; those it cannot are ended, saying why."""
    names = {rule.name for rule in ingest.rules.rules}
    while (rewind := await ingest.store.next_rewind()) is not None:
        missing = [name for name in rewind.rules if name not in names]
        if missing:
            problem = (
                f"this listener does not run rule(s) {', '.join(missing)} of the configuration that "
                "asked for the rewind; restart `listener run` with that configuration, then rewind again"
            )
        elif confirmed is not None and confirmed > rewind.start_lsn:
            # the server would silently start at its confirmed position instead (CreateDecodingContext)
            problem = moved_past(confirmed, rewind)
        else:
            return rewind
        logger.error("rewind %d refused: %s", rewind.id, problem)
        await ingest.store.fail_rewind(rewind.id, problem)
    return None


async def watch_rewinds(ingest: IngestState, stop: asyncio.Event) -> None:
    """Restart a session that is not re-reading a rewind when one is recorded: woken by NOTIFY on the
    rewind channel, and polling every ``rewind_poll_interval`` should one be lost (invariant 7).  The
    backfill channel's NOTIFY wakes the backfill task (which reads the rows itself).  Runs supervised:
    a lost connection raises, and the supervisor listens again after a backoff."""
    changed = ingest.rewinds_changed
    channels = {
        control_channel(ingest.store.schema, "rewind"): lambda *_: changed.set(),
        control_channel(ingest.store.schema, "backfill"): lambda *_: ingest.backfills.wake.set(),
    }
    conn = await ingest.store.pool.acquire()
    try:
        with ConnectionWatch(conn, changed, "rewind watcher's LISTEN") as lost:
            for channel, callback in channels.items():
                await conn.add_listener(channel, callback)
            while not stop.is_set():
                lost.check()
                changed.clear()
                if ingest.streaming.is_set() and ingest.rewind is None and not ingest.restart.is_set():
                    pending = await ingest.store.next_rewind()
                    if pending is not None:
                        logger.info("rewind %d recorded: restarting the stream", pending.id)
                        ingest.restart.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ingest.rewind_poll_interval):
                        await first_of(changed.wait(), stop.wait())
    finally:  # shielded: a cancellation must not leave the pool unable to close
        await asyncio.shield(_release_listener(ingest.store, conn, channels))


async def _release_listener(store: StateStore, conn: Any, channels: dict[str, Callable[..., None]]) -> None:
    for channel, callback in channels.items():
        with contextlib.suppress(Exception):
            await conn.remove_listener(channel, callback)
    with contextlib.suppress(Exception):
        await store.pool.release(conn)


async def count_rewind(
    ingest: IngestState, rewind: RewindPlan, count: Callable[[EventBatch], Awaitable[None]]
) -> None:
    """Re-read a rewind's range as it would be, handing each batch to ``count`` instead of writing it
    (``listener rewind --dry-run``).  Streams a temporary copy of the slot, made on the walsender
    connection and dropped with it: the slot itself, and a running ingest on it, are not touched."""
    copy = f"{ingest.slot[:40]}_dry_{secrets.token_hex(4)}"
    session = await ReplicationSession.connect(ingest.source_dsn, slot=copy)
    ingest.catalog = await connect_async(ingest.source_dsn)
    queue = BatchQueue()
    try:
        confirmed = await session.copy_slot(ingest.slot)
        if confirmed > rewind.from_lsn:
            raise ListenerError(
                f"the slot has confirmed {format_lsn(confirmed)} meanwhile, "
                f"past {format_lsn(rewind.from_lsn)}",
                hint="rewind to a later position; `listener status` shows the rewindable range",
            )
        await ingest.compile_rules()
        publications = await streamed_publications(ingest.catalog, ingest.publication)
        await session.start(publication=publications, start_lsn=rewind.from_lsn)

        source = PgoutputSource(ingest, session, rewind.up_to, rewind, until_rewound=True)

        async def read() -> None:
            try:
                await source.run(queue)
            finally:
                await queue.put(None)

        async with task_group() as tg:  # counting failing cancels the reader
            tg.create_task(read(), name="dry-run-reader")
            while (item := await queue.get()) is not None:
                batch = item[0]
                await count(batch)
                queue.written(batch)
    finally:
        await session.close()
        await ingest.catalog.close()
        ingest.catalog = None
