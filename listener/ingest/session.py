"""Ingest: the service-level orchestration of the sources, the writer and their helpers.

:class:`Ingest` runs one streaming session of the replication slot after the other (a lost connection of
either database, a recorded rewind or a busy slot restarts it from the durable checkpoint, with backoff).
In a session it runs, in one task group, the sources (:class:`~listener.ingest.reader.PgoutputSource`,
:class:`~listener.ingest.notify.NotifySource`; the seam: :mod:`listener.ingest.source`), the writer
(:mod:`listener.ingest.writer`), the expander of compact chunks and the backfill task; beside the
sessions, the rewind watcher and the journal's pruner.

With a retention window (``retain:``), the flush LSN trails the checkpoint: the writer records the
checkpoint's history (``lsn_history``) every few seconds and confirms the newest history position older
than the window, so the server keeps that WAL for ``listener rewind``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from listener import metrics
from listener.defaults import SLOT_BUSY_RETRY_S, SLOT_BUSY_WAIT_S, WATCHER_EXIT_S
from listener.errors import Deposed, ReplicationEnded, SlotInUseError, is_transient
from listener.ingest import reload as reloading
from listener.ingest import run_retention
from listener.ingest.heartbeat import beat, invalidation_error, slot_invalidated
from listener.ingest.journal import prune_forever
from listener.ingest.leadership import Campaign, Lease
from listener.ingest.notify import NotifySource
from listener.ingest.reader import PgoutputSource
from listener.ingest.reload import Prepare
from listener.ingest.rewinds import count_rewind, moved_past, next_rewind, watch_rewinds
from listener.ingest.slot import slot_ahead, slot_confirmed, slot_holder
from listener.ingest.source import BatchQueue
from listener.ingest.state import IngestState
from listener.ingest.writer import write_batches
from listener.logs import fields
from listener.pg.conninfo import connect_async
from listener.pg.lsn import format_lsn
from listener.pg.publications import streamed_publications
from listener.pg.replication import ReplicationSession
from listener.queue.batches import EventBatch, RewindPlan
from listener.rules.config import Config
from listener.supervise import (
    first_of,
    shielded,
    sleep_unless,
    spawn,
    supervised,
    task_group,
    wait_first,
)

logger = logging.getLogger(__name__)


class Ingest(IngestState):
    """Streams ``slot`` and writes the events of ``rules`` to the state store."""

    async def reload(self, config: Config, *, prepare: Prepare) -> int:
        """Switch to ``config``'s rules at a precise point of the stream; return that LSN (see
        :func:`listener.ingest.reload.reload`)."""
        return await reloading.reload(self, config, prepare=prepare)

    async def count_rewind(self, rewind: RewindPlan, count: Callable[[EventBatch], Awaitable[None]]) -> None:
        """Re-read a rewind's range as it would be, handing each batch to ``count`` instead of writing it
        (see :func:`listener.ingest.rewinds.count_rewind`)."""
        await count_rewind(self, rewind, count)

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until ``stop`` is set, as the slot's leader among the replicas of the service (a standby
        until then: listener.ingest.leadership); reconnect with backoff after any connection loss."""
        campaign = Campaign(self.store.dsn, schema=self.store.schema, slot=self.slot)
        campaign.announce = self.announce
        self.campaign = campaign
        try:
            await supervised("ingest-leadership", lambda: self._campaign(campaign, stop), stop=stop)
        finally:
            await campaign.resign()
            if self.sink is not None:
                await self.sink.close()

    async def _campaign(self, campaign: Campaign, stop: asyncio.Event) -> None:
        """Lead the slot whenever this replica holds its lock, until ``stop``."""
        while not stop.is_set():
            lease = await campaign.lead(stop)
            if lease is None:
                return
            if campaign.stood_by and self.takeover is not None:
                await self.takeover()
            self.store.epoch = lease.epoch
            try:
                await self._lead(campaign, lease, stop)
            finally:
                self.store.epoch = None
            if lease.lost.is_set():
                await campaign.close()  # a new connection campaigns: the old one may hold the lock still

    async def _lead(self, campaign: Campaign, lease: Lease, stop: asyncio.Event) -> None:
        """Stream until ``stop`` or until the lease is lost.  The rewind watcher, the journal's and the
        finished runs' pruners and the lock's watch run beside the stream, supervised: when one fails for
        good, ingest stops (invariant 9)."""
        done = asyncio.Event()  # ``stop`` or the lease lost: the sessions end
        async with task_group() as tg:
            relay = tg.create_task(first_of(stop.wait(), lease.lost.wait()), name="ingest-lease")
            relay.add_done_callback(lambda _: done.set())
            background = [
                spawn(tg, "ingest-rewinds", lambda: watch_rewinds(self, done), stop=done),
                tg.create_task(campaign.hold(lease, done), name="ingest-lock"),
            ]
            if self.journal is not None:
                journal = self.journal
                prune = functools.partial(prune_forever, self.store, journal, done)
                background.append(spawn(tg, "ingest-journal", prune, stop=done))
            if self.run_retention is not None:
                runs = functools.partial(run_retention.prune_forever, self.store, self.run_retention, done)
                background.append(spawn(tg, "ingest-run-retention", runs, stop=done))
            self.lease = lease
            try:
                await supervised("ingest", lambda: self._sessions(done), stop=done, retry=self._retry)
            finally:
                self.lease = None
                done.set()  # the watcher ends by itself, releasing its connection
                relay.cancel()
                _, late = await asyncio.wait(background, timeout=WATCHER_EXIT_S)
                for task in late:
                    task.cancel()

    async def _sessions(self, stop: asyncio.Event) -> None:
        """One session after the other (a recorded rewind or a reload restarts it) until ``stop``."""
        busy_since: float | None = None
        restarted = False  # the last session ended on purpose (a rewind, a reload): its walsender may linger
        while not stop.is_set():
            try:
                await self._run_session(stop)
                busy_since, restarted = None, True
            except Deposed as exc:
                # Another replica leads now (this one's lock connection failed): stand down at once.
                logger.warning(
                    "slot %r: %s; standing by",
                    self.slot,
                    str(exc).splitlines()[0],
                    extra=fields(slot=self.slot, epoch=self.store.epoch),
                )
                if self.lease is not None:
                    self.lease.lost.set()
                return
            except SlotInUseError as exc:
                # Right after a crash the server may hold the old walsender a moment longer: wait a little,
                # saying so once, then stop with one line naming the holder and the fix.
                holder = await slot_holder(self.source_dsn, self.slot)
                if busy_since is None:
                    busy_since = time.monotonic()
                    logger.log(
                        logging.INFO if restarted else logging.WARNING,
                        "replication slot %r is in use by %s; waiting up to %.0fs for it to be released",
                        self.slot,
                        holder,
                        SLOT_BUSY_RETRY_S,
                        extra=fields(slot=self.slot),
                    )
                elif time.monotonic() - busy_since > SLOT_BUSY_RETRY_S:
                    raise SlotInUseError(
                        f"replication slot {self.slot!r} is in use by {holder}: one slot has one reader",
                        hint="stop that process first (one `listener run` per slot), or give this "
                        "configuration a slot of its own: `slot: NAME` in its config file",
                    ) from exc
                self.stats.reconnects += 1
                self.streaming.clear()
                await sleep_unless(stop, SLOT_BUSY_WAIT_S)

    def _retry(self, exc: BaseException) -> bool:
        """Which session failures the supervisor retries (after a backoff): transient ones."""
        if not is_transient(exc):
            return False  # a bug or a refusal that retrying cannot fix: stop loudly, acknowledge nothing
        self.stats.reconnects += 1
        metrics.recorded().reconnects.inc()
        self.streaming.clear()
        return True

    async def _run_session(self, stop: asyncio.Event) -> None:
        self.streaming.clear()
        self.restart.clear()
        self.rewind = None
        self.backfills.reset()
        stored = await self.store.read_checkpoint()
        checkpoint = stored or 0
        if self.sink is not None:
            # Kafka's checkpoint may trail the state database's (a crash between the two commits): start
            # at the lower one; Postgres inserts nothing twice, the sink publishes only what Kafka lacks
            in_kafka = await self.sink.start()
            if in_kafka is not None:
                checkpoint = min(checkpoint, in_kafka) if stored is not None else in_kafka
        await self.store.start_journal(enabled=self.journal is not None)
        self.durable_lsn = checkpoint
        self.stats.checkpoint = checkpoint
        session = await ReplicationSession.connect(self.source_dsn, slot=self.slot)
        self.session = session
        queue = BatchQueue()
        try:  # from here on, a failure or a cancellation (a helper failing at once) closes the connections
            self.catalog = await connect_async(self.source_dsn)
            await self.compile_rules()
            invalidated = await slot_invalidated(self.catalog, self.slot)
            if invalidated is not None:  # never a silent new start from "now"
                raise invalidation_error(self.slot, invalidated)
            session.status_interval = self.status_interval
            confirmed = await slot_confirmed(self.catalog, self.slot)
            if stored is not None and confirmed is not None and confirmed > stored:
                raise slot_ahead(self.slot, confirmed, stored, self.store.schema)  # never a silent gap
            rewind = await next_rewind(self, confirmed)
            start = checkpoint if rewind is None else rewind.start_lsn
            # Without retention (and no rewind) the server is told the checkpoint at once, as it always
            # was; otherwise the flush position starts where the slot is, so starting at the checkpoint
            # (or a rewind's start) confirms nothing the window keeps.
            flush = confirmed if self.retention is not None or rewind is not None else None
            if self.retention is not None and confirmed is not None:
                await self.store.seed_history(confirmed)
            # the config's publication and, where the server has row filters, the filtered one
            publications = await streamed_publications(self.catalog, self.publication)
            await session.start(publication=publications, start_lsn=start, flush_lsn=flush)
            if flush is not None:
                # Now that this session holds the slot, its confirmed position can no longer move under
                # us: a rewind must start at or after it, or the server started elsewhere without a word.
                confirmed = await slot_confirmed(self.catalog, self.slot)
                if confirmed is not None:
                    session.confirm(confirmed)
                if rewind is not None and confirmed is not None and confirmed > rewind.start_lsn:
                    problem = moved_past(confirmed, rewind)
                    logger.error("rewind %d refused: %s", rewind.id, problem)
                    await self.store.fail_rewind(rewind.id, problem)
                    self.restart.set()
                    return
            if rewind is not None:
                await self.store.start_rewind(rewind.id)
                logger.info(
                    "rewind %d: re-reading slot %s from %s up to %s%s",
                    rewind.id,
                    self.slot,
                    format_lsn(start),
                    format_lsn(rewind.up_to),
                    f", rerunning rule {rewind.rerun_rule}" if rewind.rerun_rule else "",
                )
            logger.info(
                "streaming slot %s from %s (pgoutput v%d)",
                self.slot,
                format_lsn(start),
                session.protocol_version,
            )
            self.rewind = rewind
            self.streaming.set()
            await self._stream(stop, session, queue, PgoutputSource(self, session, checkpoint, rewind))
        finally:
            await session.close()
            self.streaming.clear()
            async with self.catalog_lock:  # a reload under way finishes with the catalog first
                if self.catalog is not None:
                    await self.catalog.close()
                    self.catalog = None
            self.session = None
            self.expander.free.set()  # a bulk transaction cut short by a lost session holds nothing

    async def _stream(
        self, stop: asyncio.Event, session: ReplicationSession, queue: BatchQueue, source: PgoutputSource
    ) -> None:
        """The session's tasks, in one task group: the reader (the slot's source), the writer, the
        expander, the backfill task and, with channel rules, the NOTIFY source.  Until ``stop``, a recorded
        rewind (``restart``), the end of the reader or a failure: a failure of the writer or a helper
        cancels the others and is raised; a stop lets the writer commit what is queued (a clean stop loses
        no work), then reports the final flush position; a reader's failure is raised after that."""

        async def read() -> BaseException | None:
            try:
                await source.run(queue)
            except Exception as exc:  # raised below, once the writer committed what is queued
                return exc
            return None

        async with task_group() as tg:
            writer = tg.create_task(write_batches(self, queue), name="ingest-writer")
            reader = tg.create_task(read(), name="ingest-reader")
            helpers = [  # they only end by raising
                tg.create_task(self.expander.run(), name="ingest-expander"),
                tg.create_task(self.backfills.run(), name="ingest-backfill"),
                spawn(tg, "ingest-heartbeat", functools.partial(beat, self, session)),
            ]
            # the other sources, each a supervised task putting its batches on the writer's queue
            for other in [*([NotifySource(self)] if self.rules.channels else []), *self.sources]:
                helpers.append(spawn(tg, f"ingest-{other.name}", functools.partial(other.run, queue)))
            await wait_first(stop, self.restart, reader, writer)
            if not writer.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await queue.end(writer)
                await shielded(session.send_status())
            for helper in helpers:
                helper.cancel()
            failure = reader.result() if reader.done() and not reader.cancelled() else None
            if failure is not None:
                raise failure
            if not stop.is_set() and not self.restart.is_set():
                raise ReplicationEnded("the replication stream ended")
