"""Ingest: the replication stream → workflow events, committed with the checkpoint, then acknowledged.

One reader task decodes messages and builds batches; one writer task commits each batch (events +
checkpoint, one state-db transaction) and only then moves the flush LSN reported to the server
(invariant 1).  A bounded queue between them (``WRITE_QUEUE_BATCHES``) lets decoding overlap the write
while keeping memory bounded: a batch holds at most ``batch_events`` events, and a huge source
transaction is cut into such chunks (their events commit without moving the checkpoint; after a crash
the transaction is re-sent and the unique idempotency keys drop what was already written).

On restart, transactions whose commit LSN is below the checkpoint are skipped.  Every lost connection
(source or state database) restarts the session from the durable checkpoint, with backoff.

With a retention window (``retain:``), the flush LSN trails the checkpoint: the writer records the
checkpoint's history (``lsn_history``) every few seconds and confirms the newest history position older
than the window, so the server keeps that WAL for ``listener rewind``.  A recorded rewind (``rewinds``)
restarts the session from its start: transactions committed in its range are evaluated again (existing
idempotency keys insert nothing), the ones after it up to the checkpoint are skipped as on a restart.  The
choice is made once per transaction (two comparisons at its Begin); the per-change path is unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import math
import secrets
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import psycopg

from listener.errors import (
    ConfigError,
    ListenerError,
    ProtocolError,
    ReloadDeferred,
    ReplicationEnded,
    SlotInUseError,
    is_transient,
)
from listener.ingest.backfill import PREFIX as BACKFILL_PREFIX
from listener.ingest.backfill import Backfills
from listener.ingest.expand import Expander
from listener.ingest.journal import JournalBuffer, JournalPolicy, prune_forever
from listener.pg import pgoutput as po
from listener.pg.changes import (
    Assembler,
    Change,
    TxnBegin,
    TxnCommit,
    TypeRegistry,
)
from listener.pg.conninfo import asyncpg_params, connect_async
from listener.pg.lsn import format_lsn, parse_lsn
from listener.pg.publications import streamed_publications
from listener.pg.replication import READ_BATCH_BYTES, ReplicationSession
from listener.queue.store import (
    EventBatch,
    RawChunk,
    Retention,
    RewindPlan,
    StateStore,
    control_channel,
)
from listener.rules.compile import CompiledRule, RuleSet, compile_rules
from listener.rules.config import Config
from listener.rules.events import (
    append_change_events,
    append_message_events,
    append_notify_events,
    append_truncate_events,
)
from listener.supervise import ConnectionWatch, sleep_unless, spawn, supervised, task_group

logger = logging.getLogger(__name__)

WRITE_QUEUE_BATCHES = 2
# Memory is bounded in bytes (invariant 6): a batch is submitted once its payloads, chunks and journal
# rows reach BATCH_BYTES, the queue to the writer holds at most WRITE_QUEUE_BYTES (always one batch, however
# big its single huge row), a compact chunk closes at CHUNK_BYTES, and NOTIFYs waiting for the writer
# take at most NOTIFY_BUFFER_BYTES (more are dropped: NOTIFY is at most once).
BATCH_BYTES = 16 << 20
WRITE_QUEUE_BYTES = 32 << 20
CHUNK_BYTES = 16 << 20
NOTIFY_BUFFER_BYTES = 16 << 20
SLOT_BUSY_RETRY_S = 15.0
SLOT_BUSY_WAIT_S = 1.0  # ... looking again this often
# A checkpoint that no event needs -- the server's position while idle, or the end of a transaction that
# made no event (PostgreSQL 14 streams an empty Begin/Commit for every transaction in the database, 15+ one
# for changes that no rule matches) -- is written at most this often; in between it waits for the next
# batch that has events.  Each such write is WAL itself (when the state database is the source), which would
# otherwise feed a loop of one write per transaction.
IDLE_CHECKPOINT_INTERVAL_S = 10.0
# With a retention window: at most one lsn_history row per this many seconds (the precision of
# `listener rewind --to-time`, and how often the confirmed position can move).
HISTORY_INTERVAL_S = 5.0
# A running ingest looks for recorded rewinds this often when no NOTIFY arrives (invariant 7).
REWIND_POLL_S = 5.0
WATCHER_EXIT_S = 5.0  # how long a stopping ingest waits for the rewind watcher to let go of its connection

RELOAD_PREFIX = "listener.reload"  # the logical decoding message that marks where new rules apply
# With the change journal on, a huge transaction's full journal rows (about 1 MB each) go to the state
# database this many at a time (between them, memory holds at most this many).
JOURNAL_BATCH_ROWS = 8
_NOTHING = memoryview(b"")
_ROW_CHANGES = frozenset(b"IUD")  # Insert, Update, Delete: their relation OID follows the type byte
_unpack_oid = struct.Struct(">I").unpack_from
_pack_head = struct.Struct(">QI").pack  # a change in a chunk: its LSN and its message's length

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


# Brings the source's publications up to what a new config needs, keeping what ``keep`` needs as well
# (None: exactly the new config's): `listener init`'s work, which the service hands to ``Ingest.reload``.
Prepare = Callable[[Config, Config | None], object]


@dataclass(slots=True)
class IngestStats:
    changes: int = 0
    events_inserted: int = 0
    transactions: int = 0
    batches: int = 0
    reconnects: int = 0
    checkpoint: int | None = None
    rewound: int = 0  # transactions re-read by rewinds
    rewinds: int = 0  # rewinds finished
    notifies_dropped: int = 0  # NOTIFYs that arrived while NOTIFY_BUFFER_BYTES were waiting


class BatchQueue(asyncio.Queue["EventBatch | None"]):
    """Batches on their way to the writer, bounded in count (``WRITE_QUEUE_BATCHES``) and in bytes: a put
    waits while the batches queued or being written hold ``max_bytes`` (one is always let through, however
    big).  The writer calls :meth:`written` when it is done with a batch; ``None`` ends the writer."""

    def __init__(self, max_batches: int = WRITE_QUEUE_BATCHES, max_bytes: int = WRITE_QUEUE_BYTES) -> None:
        super().__init__(maxsize=max_batches)
        self.max_bytes = max_bytes
        self.held = 0  # bytes of the batches put and not yet written
        self._room = asyncio.Event()

    async def put(self, item: EventBatch | None) -> None:
        size = item.nbytes if item is not None else 0
        while self.held and self.held + size > self.max_bytes:
            self._room.clear()
            await self._room.wait()
        self.held += size
        await super().put(item)

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


class Ingest:
    """Streams ``slot`` and writes the events of ``rules`` to the state store."""

    def __init__(
        self,
        *,
        source_dsn: str,
        store: StateStore,
        rules: RuleSet | None,
        slot: str,
        publication: str,
        batch_events: int = 5000,
        batch_delay: float = 0.005,
        status_interval: float = 10.0,
        compact_after: int = 0,
        compact_chunk_changes: int = 20000,
        expand_ahead: int = 20000,
        retention: Retention | None = None,
        journal: JournalPolicy | None = None,
        on_batch: Callable[[EventBatch, int], None] | None = None,
        config: Config | None = None,
    ) -> None:
        self.source_dsn = source_dsn
        self.config = config  # with rules=None: compiled against the catalog when a session starts
        self.store = store
        self.rules = rules or RuleSet(())
        self._compile = rules is None
        self._pending_rules: dict[str, tuple[Config | None, RuleSet]] = {}
        self.reloads: list[int] = []  # LSNs at which new rules took effect
        self.slot = slot
        self.publication = publication
        self.batch_events = batch_events
        self.batch_delay = batch_delay
        self.status_interval = status_interval
        self.compact_after = compact_after
        self.compact_chunk_changes = compact_chunk_changes
        self.expand_ahead = expand_ahead
        self.idle_checkpoint_interval = IDLE_CHECKPOINT_INTERVAL_S  # following the server's position
        self.empty_checkpoint_interval = IDLE_CHECKPOINT_INTERVAL_S  # after transactions with no event
        self.retention = retention
        self.journal = journal  # the change journal (listener.journal): None when off
        self.history_interval = HISTORY_INTERVAL_S
        self.rewind_poll_interval = REWIND_POLL_S
        self.rewind: RewindPlan | None = None  # the rewind the current session re-reads, until finished
        self.on_batch = on_batch
        self.stats = IngestStats()
        self.types = TypeRegistry()
        self.expander = Expander(store, self.types, self.resolve_types, ahead=expand_ahead)
        self.backfills = Backfills(self)  # snapshot backfills: a task per session, hooks in the reader
        self.durable_lsn = 0
        self.streaming = asyncio.Event()  # set once a session is streaming
        self.listening = asyncio.Event()  # set while LISTEN is issued on every rule channel
        self._session: ReplicationSession | None = None
        self._catalog: psycopg.AsyncConnection[Any] | None = None
        self._catalog_lock = (
            asyncio.Lock()
        )  # a reload uses the session's catalog connection: not closed meanwhile
        self._restart = asyncio.Event()  # end the session and start a new one (a rewind was recorded)
        self._rewinds_changed = asyncio.Event()  # wakes the rewind watcher
        self._history_at = -math.inf

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        source_dsn: str,
        store: StateStore,
        on_batch: Callable[[EventBatch, int], None] | None = None,
    ) -> Ingest:
        """An Ingest with the slot, publication, rules and batching of ``config``."""
        return cls(
            source_dsn=source_dsn,
            store=store,
            rules=None,
            config=config,
            slot=config.slot,
            publication=config.publication,
            batch_events=config.ingest.batch_events,
            batch_delay=config.ingest.batch_delay_ms / 1000,
            status_interval=config.ingest.status_interval_s,
            compact_after=config.ingest.compact_after,
            compact_chunk_changes=config.ingest.compact_chunk_changes,
            expand_ahead=config.ingest.expand_ahead,
            retention=Retention(config.retain.duration_s, config.retain.size_bytes)
            if config.retain.enabled
            else None,
            journal=JournalPolicy(config.journal.keep_s) if config.journal.keep_s is not None else None,
            on_batch=on_batch,
        )

    # -- supervision --------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until ``stop`` is set; reconnect with backoff after any connection loss.  The rewind
        watcher and the journal's pruner run beside the stream, supervised: when one fails for good, ingest
        stops (invariant 9)."""
        done = asyncio.Event()
        async with task_group() as tg:
            background = [spawn(tg, "ingest-rewinds", lambda: self._watch_rewinds(done), stop=done)]
            if self.journal is not None:
                journal = self.journal
                prune = functools.partial(prune_forever, self.store, journal, done)
                background.append(spawn(tg, "ingest-journal", prune, stop=done))
            try:
                await supervised("ingest", lambda: self._sessions(stop), stop=stop, retry=self._retry)
            finally:
                done.set()  # the watcher ends by itself, releasing its connection
                _, late = await asyncio.wait(background, timeout=WATCHER_EXIT_S)
                for task in late:
                    task.cancel()

    async def _sessions(self, stop: asyncio.Event) -> None:
        """One session after the other (a recorded rewind or a reload restarts it) until ``stop``."""
        busy_since: float | None = None
        while not stop.is_set():
            try:
                await self._run_session(stop)
                busy_since = None
            except SlotInUseError as exc:
                # Right after a crash the server may hold the old walsender a moment longer: wait a little,
                # saying so once, then stop with one line naming the holder and the fix.
                holder = await slot_holder(self.source_dsn, self.slot)
                if busy_since is None:
                    busy_since = time.monotonic()
                    logger.warning(
                        "replication slot %r is in use by %s; waiting up to %.0fs for it to be released",
                        self.slot,
                        holder,
                        SLOT_BUSY_RETRY_S,
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
        self.streaming.clear()
        return True

    async def _run_session(self, stop: asyncio.Event) -> None:
        self.streaming.clear()
        self._restart.clear()
        self.rewind = None
        self.backfills.reset()
        checkpoint = await self.store.read_checkpoint() or 0
        await self.store.start_journal(enabled=self.journal is not None)
        self.durable_lsn = checkpoint
        self.stats.checkpoint = checkpoint
        session = await ReplicationSession.connect(self.source_dsn, slot=self.slot)
        self._session = session
        self._catalog = await connect_async(self.source_dsn)
        await self._compile_rules()
        queue = BatchQueue()
        tasks: list[asyncio.Task[Any]] = []
        try:
            session.status_interval = self.status_interval
            confirmed = await self._slot_confirmed()
            rewind = await self._next_rewind(confirmed)
            start = checkpoint if rewind is None else rewind.start_lsn
            # Without retention (and no rewind) the server is told the checkpoint at once, as it always
            # was; otherwise the flush position starts where the slot is, so starting at the checkpoint
            # (or a rewind's start) confirms nothing the window keeps.
            flush = confirmed if self.retention is not None or rewind is not None else None
            if self.retention is not None and confirmed is not None:
                await self.store.seed_history(confirmed)
            # the config's publication and, where the server has row filters, the filtered one
            publications = await streamed_publications(self._catalog, self.publication)
            await session.start(publication=publications, start_lsn=start, flush_lsn=flush)
            if flush is not None:
                # Now that this session holds the slot, its confirmed position can no longer move under
                # us: a rewind must start at or after it, or the server started elsewhere without a word.
                confirmed = await self._slot_confirmed()
                if confirmed is not None:
                    session.confirm(confirmed)
                if rewind is not None and confirmed is not None and confirmed > rewind.start_lsn:
                    problem = _moved_past(confirmed, rewind)
                    logger.error("rewind %d refused: %s", rewind.id, problem)
                    await self.store.fail_rewind(rewind.id, problem)
                    self._restart.set()
                    return
            if rewind is not None:
                await self.store.start_rewind(rewind.id)
                logger.warning(
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
            writer = asyncio.create_task(self._writer(queue, session), name="ingest-writer")
            reader = asyncio.create_task(
                self._reader(queue, session, checkpoint, rewind), name="ingest-reader"
            )
            stopper = asyncio.create_task(stop.wait(), name="ingest-stop")
            restarter = asyncio.create_task(self._restart.wait(), name="ingest-restart")
            expander = asyncio.create_task(self.expander.run(), name="ingest-expander")
            backfill = asyncio.create_task(self.backfills.run(), name="ingest-backfill")
            watched = [expander, backfill]  # they only end by raising
            if self.rules.channels:
                listen = functools.partial(self._listen, queue)
                watched.append(asyncio.create_task(supervised("ingest-notify", listen), name="ingest-notify"))
            tasks += [writer, reader, stopper, restarter, *watched]
            done, _ = await asyncio.wait(
                {writer, reader, stopper, restarter, *watched}, return_when=asyncio.FIRST_COMPLETED
            )
            for background in watched:
                if background in done:
                    background.result()
            if stopper in done or reader in done or restarter in done:
                # Stop reading; let the writer commit what is queued (a clean stop loses no work), then
                # report the final flush position.
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await queue.end(writer)
                await session.send_status()
            for task in (reader, writer):
                exc = task.exception() if task.done() and not task.cancelled() else None
                if exc is not None:
                    raise exc
            if not stop.is_set() and not self._restart.is_set():
                raise ReplicationEnded("the replication stream ended")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await session.close()
            self.streaming.clear()
            async with self._catalog_lock:  # a reload under way finishes with the catalog first
                if self._catalog is not None:
                    await self._catalog.close()
                    self._catalog = None
            self._session = None
            self.expander.free.set()  # a bulk transaction cut short by a lost session holds nothing

    # -- rewinds -----------------------------------------------------------------------------------------

    async def _slot_confirmed(self) -> int | None:
        """The slot's confirmed_flush_lsn now (None when there is no such slot)."""
        assert self._catalog is not None
        cur = await self._catalog.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [self.slot]
        )
        row = await cur.fetchone()
        return parse_lsn(str(row[0])) if row is not None and row[0] is not None else None

    async def _next_rewind(self, confirmed: int | None) -> RewindPlan | None:
        """The oldest recorded rewind this session can carry out; those it cannot are ended, saying why."""
        names = {rule.name for rule in self.rules.rules}
        while (rewind := await self.store.next_rewind()) is not None:
            missing = [name for name in rewind.rules if name not in names]
            if missing:
                problem = (
                    f"this listener does not run rule(s) {', '.join(missing)} of the configuration that "
                    "asked for the rewind; restart `listener run` with that configuration, then rewind again"
                )
            elif confirmed is not None and confirmed > rewind.start_lsn:
                # the server would silently start at its confirmed position instead (CreateDecodingContext)
                problem = _moved_past(confirmed, rewind)
            else:
                return rewind
            logger.error("rewind %d refused: %s", rewind.id, problem)
            await self.store.fail_rewind(rewind.id, problem)
        return None

    async def _watch_rewinds(self, stop: asyncio.Event) -> None:
        """Restart a session that is not re-reading a rewind when one is recorded: woken by NOTIFY on the
        rewind channel, and polling every ``rewind_poll_interval`` should one be lost (invariant 7).  The
        backfill channel's NOTIFY wakes the backfill task (which reads the rows itself).  Runs supervised:
        a lost connection raises, and the supervisor listens again after a backoff."""
        changed = self._rewinds_changed
        channels = {
            control_channel(self.store.schema, "rewind"): lambda *_: changed.set(),
            control_channel(self.store.schema, "backfill"): lambda *_: self.backfills.wake.set(),
        }
        conn = await self.store.pool.acquire()
        try:
            with ConnectionWatch(conn, changed, "rewind watcher's LISTEN") as lost:
                for channel, callback in channels.items():
                    await conn.add_listener(channel, callback)
                while not stop.is_set():
                    lost.check()
                    changed.clear()
                    if self.streaming.is_set() and self.rewind is None and not self._restart.is_set():
                        pending = await self.store.next_rewind()
                        if pending is not None:
                            logger.info("rewind %d recorded: restarting the stream", pending.id)
                            self._restart.set()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.rewind_poll_interval):
                            await first_of(changed.wait(), stop.wait())
        finally:  # shielded: a cancellation must not leave the pool unable to close
            await asyncio.shield(self._release_listener(conn, channels))

    async def _release_listener(self, conn: Any, channels: dict[str, Callable[..., None]]) -> None:
        for channel, callback in channels.items():
            with contextlib.suppress(Exception):
                await conn.remove_listener(channel, callback)
        with contextlib.suppress(Exception):
            await self.store.pool.release(conn)

    async def count_rewind(self, rewind: RewindPlan, count: Callable[[EventBatch], Awaitable[None]]) -> None:
        """Re-read a rewind's range as it would be, handing each batch to ``count`` instead of writing it
        (``listener rewind --dry-run``).  Streams a temporary copy of the slot, made on the walsender
        connection and dropped with it: the slot itself, and a running ingest on it, are not touched."""
        copy = f"{self.slot[:40]}_dry_{secrets.token_hex(4)}"
        session = await ReplicationSession.connect(self.source_dsn, slot=copy)
        self._catalog = await connect_async(self.source_dsn)
        queue = BatchQueue()
        reader: asyncio.Task[None] | None = None
        try:
            confirmed = await session.copy_slot(self.slot)
            if confirmed > rewind.from_lsn:
                raise ListenerError(
                    f"the slot has confirmed {format_lsn(confirmed)} meanwhile, "
                    f"past {format_lsn(rewind.from_lsn)}",
                    hint="rewind to a later position; `listener status` shows the rewindable range",
                )
            await self._compile_rules()
            publications = await streamed_publications(self._catalog, self.publication)
            await session.start(publication=publications, start_lsn=rewind.from_lsn)

            async def read() -> None:
                try:
                    await self._reader(queue, session, rewind.up_to, rewind, until_rewound=True)
                finally:
                    await queue.put(None)

            reader = asyncio.create_task(read(), name="dry-run-reader")
            while (batch := await queue.get()) is not None:
                await count(batch)
                queue.written(batch)
            await reader
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            await session.close()
            await self._catalog.close()
            self._catalog = None

    # -- writer -------------------------------------------------------------------------------------------

    async def _writer(self, queue: BatchQueue, session: ReplicationSession) -> None:
        retention = self.retention
        while True:
            batch = await queue.get()
            if batch is None:
                return
            history_due = (
                retention is not None
                and batch.checkpoint is not None
                and time.monotonic() - self._history_at >= self.history_interval
            )
            if history_due:
                batch.retention = retention
            inserted = await self.store.write_batch(batch)
            queue.written(batch)
            self.stats.batches += 1
            self.stats.events_inserted += inserted
            if batch.backfill:
                self.backfills.committed(batch.backfill)
            if batch.chunks or batch.backfill:
                self.expander.wake.set()
            if history_due:
                self._history_at = time.monotonic()
            if batch.checkpoint is not None:
                self.durable_lsn = batch.checkpoint
                self.stats.checkpoint = batch.checkpoint
                # only now may the server forget this WAL; with a retention window, only what lies
                # beyond the window (batch.confirm trails the checkpoint)
                if retention is None:
                    session.confirm(batch.checkpoint)
                elif batch.confirm is not None:
                    session.confirm(batch.confirm)
            if batch.rewind_done and batch.rewind is not None:
                self.stats.rewinds += 1
                logger.warning("rewind %d finished", batch.rewind.id)
                self.rewind = None
                self._rewinds_changed.set()  # another one may be waiting
            if self.on_batch is not None:
                self.on_batch(batch, inserted)
            # not held while waiting for the next one: its payloads may be a huge row's (invariant 6)
            del batch

    # -- reader -------------------------------------------------------------------------------------------

    async def _reader(
        self,
        queue: BatchQueue,
        session: ReplicationSession,
        resume_lsn: int,
        rewind: RewindPlan | None = None,
        *,
        until_rewound: bool = False,
    ) -> None:
        """Decode, match and batch.  Transactions committed below ``rewind.up_to`` are re-read (every rule
        evaluated again), then those below ``resume_lsn`` are skipped; with ``until_rewound`` return once
        the rewind's range is passed."""
        decoder = po.Decoder(session.protocol_version)
        assembler = Assembler(self.types)
        decode = decoder.decode
        decode_in_place = decoder.decode_in_place
        feed = assembler.feed
        rules_by_oid: dict[int, dict[str, tuple[CompiledRule, ...]]] = {}
        huge = False  # the message being handled is megabytes (see READ_BATCH_BYTES)
        rewind_end = rewind.up_to if rewind is not None else 0  # re-read what commits below this
        rewinding = False  # the open transaction is re-read for the rewind
        batch = EventBatch(rewind=rewind)
        batch_started = time.monotonic()
        submitted_checkpoint = resume_lsn
        skipping = False
        # checkpoints that no event needs wait (see IDLE_CHECKPOINT_INTERVAL_S): when a checkpoint was last
        # submitted, and the end and commit time of the newest transaction since then that made no event
        last_checkpoint = time.monotonic()
        deferred: tuple[int, datetime] | None = None
        txn_submitted = False  # part of the open transaction went out in an earlier batch
        stats = self.stats
        events = batch.payload  # its length is the batch's size
        # compact storage of bulk transactions (see sql/0002_event_chunks.sql)
        compact_after = self.compact_after
        chunk_changes = self.compact_chunk_changes
        compact_by_oid: dict[int, str | None] = {}  # table -> its chunks' rules JSON, None: not compactable
        # the change journal (sql/0006_journal.sql): every row change not skipped, raw, per table
        journal = JournalBuffer(session.protocol_version) if self.journal is not None else None
        raw_relations: dict[int, bytes] = {}  # table -> its latest Relation message, as sent
        txn_events: dict[int, int] = {}  # table -> events made in the open transaction
        raw_oids: set[int] = set()  # tables whose changes in the open transaction go raw into chunks
        chunks: dict[int, RawChunk] = {}  # their open chunks
        fast = False  # whether row changes may bypass the decoder: skipping, or raw tables exist
        message_ordinals: dict[str, int] = {}  # prefix -> messages with it in the open transaction
        watched = self.backfills.watched  # tables with an open backfill window: their keys are noted

        def close_chunk(oid: int) -> None:
            """End the open chunk of ``oid``: into the batch, the assembler's ordinal count after it."""
            chunk = chunks.pop(oid)
            batch.chunks.append(chunk)
            batch.nbytes += len(chunk.data)
            assembler.set_next_ordinal(oid, chunk.first_ordinal + chunk.changes)

        async def submit() -> None:
            nonlocal batch, events, batch_started, submitted_checkpoint, deferred, txn_submitted
            nonlocal last_checkpoint
            if batch.checkpoint is None and deferred is not None and _has_content(batch):
                batch.checkpoint, batch.checkpoint_time = deferred  # it rides with a batch that is written
            if batch.checkpoint is not None:
                submitted_checkpoint = batch.checkpoint
                last_checkpoint = time.monotonic()
                deferred = None
            txn_submitted = assembler.in_transaction
            await queue.put(batch)
            batch = EventBatch(rewind=rewind if rewind_end else None)
            events = batch.payload
            batch_started = time.monotonic()

        while True:
            if queue.held >= queue.max_bytes:
                # Huge rows wait for the writer: let go of the last message and its change first, so
                # memory holds such a row once (being written), not also half-decoded beside it.
                messages, payload = [], _NOTHING
                msg = item = None
                await queue.room()
            # With a batch ready to go, only look at what is already buffered: once libpq's buffer is
            # drained the batch is submitted, never held until the next message or status timeout.
            ready = _has_work(batch) and not assembler.in_transaction
            wait_s = None  # a deferred checkpoint falls due at the end of the interval: wake up then
            if deferred is not None and not assembler.in_transaction:
                wait_s = max(last_checkpoint + self.empty_checkpoint_interval - time.monotonic(), 0.0)
            messages = await session.read(block=not ready, wait_s=wait_s)
            if not messages:
                since = time.monotonic() - last_checkpoint
                follow = (
                    session.keepalive_lsn > submitted_checkpoint and since >= self.idle_checkpoint_interval
                )
                if ready:
                    await submit()
                elif rewind_end and not assembler.in_transaction and session.keepalive_lsn >= rewind_end:
                    # the server has sent every transaction committed before the range's end
                    rewind_end = 0
                    batch.rewind_done = True
                    await submit()
                    if until_rewound:
                        return
                elif (
                    # Idle: nothing of ours is in flight, so every transaction before the server's
                    # position was sent and handled; let the checkpoint follow it (otherwise the slot
                    # pins WAL forever), but not too often (see IDLE_CHECKPOINT_INTERVAL_S).
                    not assembler.in_transaction
                    and (follow or (deferred is not None and since >= self.empty_checkpoint_interval))
                ):
                    if deferred is not None and (not follow or deferred[0] >= session.keepalive_lsn):
                        batch.checkpoint, batch.checkpoint_time = deferred
                    else:
                        batch.checkpoint = session.keepalive_lsn
                    await submit()
                continue
            for lsn, payload in messages:
                if journal is not None and not skipping and payload[0] in _ROW_CHANGES:
                    full = journal.add(lsn, payload, assembler, raw_relations)
                    if full is not None:  # a huge transaction: its journal goes in rows of CHUNK_BYTES
                        batch.journal.append(full)
                        batch.nbytes += len(full.data)
                        if len(batch.journal) >= JOURNAL_BATCH_ROWS or batch.nbytes >= BATCH_BYTES:
                            await submit()
                if fast and payload[0] in _ROW_CHANGES:
                    # the compact path: bulk changes of raw tables stay bytes (and skipped ones are dropped)
                    if skipping:
                        continue
                    oid = _unpack_oid(payload, 1)[0]
                    chunk = chunks.get(oid) if oid in raw_oids else None
                    if chunk is None and oid in raw_oids:
                        # A new chunk (the first, or after a Relation message -- which the server re-sends
                        # after any invalidation of the table, even mid-transaction -- or a reload): look
                        # again whether the table's rules still allow compact storage.
                        plan = self._chunk_rules(assembler, oid, compact_by_oid)
                        if plan is None or oid not in raw_relations:
                            raw_oids.discard(oid)
                            fast = skipping or bool(raw_oids)
                        else:
                            # the chunk's changes take consecutive ordinals from here: the assembler's
                            # count is brought up to date when the chunk closes (close_chunk)
                            chunk = chunks[oid] = self._new_chunk(
                                assembler, oid, assembler.next_ordinal(oid), raw_relations[oid], plan
                            )
                    if chunk is not None:
                        if oid in watched:
                            self.backfills.note_raw(bytes(payload), decoder, assembler.relations)
                        data = chunk.data
                        data += _pack_head(lsn, len(payload))
                        data += payload
                        chunk.changes += 1
                        stats.changes += 1
                        if chunk.changes >= chunk_changes or len(data) >= CHUNK_BYTES:
                            close_chunk(oid)
                            await submit()
                        continue
                huge = len(payload) >= READ_BATCH_BYTES
                try:
                    msg = decode_in_place(payload) if huge else decode(payload)
                except ProtocolError as exc:
                    # never skipped: the service stops, naming the message; nothing is acknowledged
                    raise exc.at_lsn(lsn) from exc
                if huge:
                    # A huge row (always the last of its read): let go of libpq's copy of the message now
                    # that its values are decoded, rather than while they are rendered and written.
                    messages.clear()
                    payload = _NOTHING
                if chunks and type(msg) is po.Truncate:
                    for open_oid in list(chunks):  # its ordinals follow the chunks' changes
                        close_chunk(open_oid)
                item = feed(lsn, msg)
                if item is None:
                    if type(msg) is po.Message:
                        assert isinstance(msg, po.Message)
                        if msg.prefix == RELOAD_PREFIX and not msg.transactional:
                            if self._apply_reload(msg.content.decode(errors="replace"), msg.lsn):
                                rules_by_oid.clear()
                                compact_by_oid.clear()
                            continue
                        if msg.prefix == BACKFILL_PREFIX and not msg.transactional:
                            backfilled = self.backfills.mark(msg)
                            if backfilled is not None:  # a high watermark: its chunk commits now
                                batch.backfill.append(backfilled)
                                await submit()
                            continue
                        matched_messages = self.rules.message_rules(msg.prefix)
                        if matched_messages and not skipping and msg.lsn >= resume_lsn:
                            begin = assembler.begin if msg.transactional else None
                            ordinal = message_ordinals.get(msg.prefix, 0)
                            if begin is not None:
                                message_ordinals[msg.prefix] = ordinal + 1
                            append_message_events(batch, msg, begin, ordinal, matched_messages)
                            stats.changes += 1
                            # not part of a transaction: no commit will submit it
                            if begin is None or batch.nbytes >= BATCH_BYTES:
                                await submit()
                        continue
                    if type(msg) is po.Relation:
                        await self._relation(assembler, msg)
                        rules_by_oid.pop(msg.oid, None)
                        compact_by_oid.pop(msg.oid, None)
                        raw_relations[msg.oid] = bytes(payload)
                        if msg.oid in chunks:  # the table changed shape: later changes go in a new chunk
                            close_chunk(msg.oid)
                        if journal is not None and (ended := journal.close(msg.oid)) is not None:
                            batch.journal.append(ended)  # and in a new journal row
                    continue
                if type(item) is Change:
                    if skipping:
                        continue
                    stats.changes += 1
                    oid = item.relation.oid  # type: ignore[union-attr]
                    if oid in watched:
                        self.backfills.note(item)
                    by_op = rules_by_oid.get(oid)
                    if by_op is None:
                        rel = item.relation
                        assert rel is not None
                        by_op = rules_by_oid[oid] = self.rules.for_table(rel.schema, rel.name)
                    if item.op == "truncate":
                        append_truncate_events(batch, item, self.rules)
                        if journal is not None:  # it took an ordinal: later changes start new rows
                            batch.journal += filter(None, (journal.close(r.oid) for r, _ in item.truncated))
                    else:
                        matched = by_op.get(item.op, ())
                        if matched:
                            append_change_events(batch, item, matched, huge=huge)
                            if compact_after and not rewinding:  # a rewind re-reads event by event (reruns)
                                seen = txn_events[oid] = txn_events.get(oid, 0) + 1
                                compact = seen >= compact_after
                                if compact and self._chunk_rules(assembler, oid, compact_by_oid) is not None:
                                    raw_oids.add(oid)
                                    fast = True
                                    self.expander.free.clear()
                    if len(events) >= self.batch_events or batch.nbytes >= BATCH_BYTES:
                        await submit()
                elif type(item) is TxnBegin:
                    if item.commit_lsn < rewind_end:
                        rewinding, skipping = True, False  # re-read for the rewind: every rule again
                    else:
                        if rewind_end:  # the first transaction past the rewind's range: it is complete
                            rewind_end = 0
                            batch.rewind_done = True
                            if until_rewound:
                                await submit()
                                return
                        # Already durable before a restart: its commit LSN lies below the checkpoint.
                        rewinding, skipping = False, item.commit_lsn < resume_lsn
                    fast = skipping
                    txn_submitted = False
                elif type(item) is TxnCommit:
                    if rewinding:
                        stats.rewound += 1
                        batch.rewind_position = item.end_lsn
                        if item.end_lsn >= rewind_end:
                            # it ends where the range does: no transaction committed below can follow
                            rewind_end = 0
                            batch.rewind_done = True
                            if until_rewound:
                                await submit()
                                return
                    elif not skipping:
                        stats.transactions += 1
                        if (
                            txn_submitted
                            or _has_content(batch)
                            # it made no event, but no checkpoint was written for a while: move on
                            or time.monotonic() - last_checkpoint >= self.empty_checkpoint_interval
                        ):
                            batch.checkpoint = item.end_lsn
                            batch.checkpoint_time = item.commit_time
                        else:
                            deferred = (item.end_lsn, item.commit_time)
                    if chunks:
                        batch.chunks.extend(chunks.values())
                        chunks.clear()
                    if journal is not None and journal.open:
                        batch.journal += journal.take()
                    raw_oids.clear()
                    txn_events.clear()
                    self.expander.free.set()
                    message_ordinals.clear()
                    skipping = rewinding = fast = False
            if (
                _has_work(batch)
                and not assembler.in_transaction
                and (
                    len(events) >= self.batch_events
                    or session.drained  # caught up with the server: do not hold events back
                    or time.monotonic() - batch_started >= self.batch_delay
                )
            ):
                await submit()

    # -- reload -------------------------------------------------------------------------------------------

    async def reload(self, config: Config, *, prepare: Prepare) -> int:
        """Switch to ``config``'s rules at a precise point of the stream; return that LSN.

        The new rules are compiled against the catalog first (an invalid config raises and the old rules
        keep running), the publications are brought up to date by ``prepare`` (the service passes
        `listener init`'s), then a non-transactional logical decoding message ``listener.reload`` is
        written: transactions committed before it were matched by the old rules, those after it by the new
        ones, and none is lost or matched twice on the way."""
        for key in ("slot", "publication", "state_schema", "dsn", "state_dsn"):
            if getattr(config, key) != getattr(self.config, key) and self.config is not None:
                raise ConfigError(
                    f"reload cannot change `{key}:`",
                    hint="restart listener to change it",
                    file=config.source_path,
                )
        async with self._catalog_lock:  # a session ending meanwhile waits to close the connection
            catalog = self._catalog
            if catalog is None or not self.streaming.is_set():
                raise ReloadDeferred("ingest is not streaming")
            return await self._reload(config, catalog, prepare)

    async def _reload(self, config: Config, catalog: psycopg.AsyncConnection[Any], prepare: Prepare) -> int:
        rules = await compile_rules(config, catalog)  # raises ConfigError: the old rules stay
        # The publications first carry what either set of rules needs; only after the marker (in WAL order)
        # do they narrow to the new rules, so no change that the rules in force would match is filtered.
        await asyncio.to_thread(prepare, config, self.config)
        token = f"{self.slot}/{uuid.uuid4()}"
        self._pending_rules[token] = (config, rules)
        cur = await catalog.execute(
            "SELECT (pg_logical_emit_message(false, %s, %s) - '0/0')::int8", [RELOAD_PREFIX, token]
        )
        row = await cur.fetchone()
        assert row is not None
        await asyncio.to_thread(prepare, config, None)
        return int(row[0])

    def _apply_reload(self, token: str, lsn: int) -> bool:
        """At the reload message: the new rules from here on.  False when the token is not ours (another
        process's reload, or one from before a restart: its rules are the file's, loaded at start)."""
        pending = self._pending_rules.pop(token, None)
        if pending is None:
            return False
        self.config, self.rules = pending
        self.reloads.append(lsn)
        logger.warning(
            "rules reloaded: %d rule(s) apply from LSN %s on", len(self.rules.rules), format_lsn(lsn)
        )
        return True

    async def _listen(self, queue: BatchQueue) -> None:
        """NOTIFY on the rules' channels → events, at most once: a notification sent while no session
        listens is gone (the server keeps none), and so is one that arrives while ``NOTIFY_BUFFER_BYTES``
        of them wait for the writer (counted in ``stats.notifies_dropped`` and logged).  Keys name this
        listening session and a counter.  Runs supervised: a lost connection raises, and the supervisor
        listens again after a backoff."""
        conn = await asyncpg.connect(**asyncpg_params(self.source_dsn))
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
                self.stats.notifies_dropped += 1
                return
            buffered += len(data)
            received.append((pid, channel, data))
            arrived.set()

        try:
            with ConnectionWatch(conn, arrived, "NOTIFY listener's") as lost:
                for channel in self.rules.channels:
                    await conn.add_listener(channel, on_notify)
                self.listening.set()
                counter = 0
                while True:
                    await arrived.wait()
                    arrived.clear()
                    lost.check()
                    batch = EventBatch()
                    while received and len(batch) < self.batch_events and batch.nbytes < BATCH_BYTES:
                        pid, channel, data = received.popleft()
                        buffered -= len(data)
                        append_notify_events(
                            batch, channel, data, pid, f"notify/{session}", counter, self.rules
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
                        await queue.put(batch)
        finally:
            self.listening.clear()
            await conn.close()

    def _chunk_rules(self, assembler: Assembler, oid: int, cache: dict[int, str | None]) -> str | None:
        """The rules JSON for a compact chunk of table ``oid`` (None: its rules need the row)."""
        if oid not in cache:
            rel = assembler.relations.get(oid)
            cache[oid] = self.rules.compact_rules(rel.schema, rel.name) if rel is not None else None
        return cache[oid]

    def _new_chunk(
        self, assembler: Assembler, oid: int, ordinal: int, relation: bytes, rules: str | None
    ) -> RawChunk:
        begin = assembler.begin
        assert begin is not None and self._session is not None and rules is not None
        return RawChunk(
            commit_lsn=begin.final_lsn,
            relation_oid=oid,
            first_ordinal=ordinal,
            xid=begin.xid,
            commit_time=begin.commit_time,
            table_name=assembler.relations[oid].qualified,
            protocol=self._session.protocol_version,
            relation=relation,
            rules=rules,
        )

    async def _relation(self, assembler: Assembler, msg: po.Relation) -> None:
        unknown = self.types.unknown(c.type_oid for c in msg.columns)
        if unknown:
            await self.resolve_types(unknown)
            assembler.relation(msg)  # rebuild with the resolved loaders

    async def _compile_rules(self) -> None:
        """Compile the config's rules against the catalog, once (the first session)."""
        if self._compile:
            assert self.config is not None and self._catalog is not None
            self.rules = await compile_rules(self.config, self._catalog)
            self._compile = False

    async def resolve_types(self, oids: Sequence[int]) -> None:
        assert self._catalog is not None
        await self.types.resolve(self._catalog, oids)


def _moved_past(confirmed: int, rewind: RewindPlan) -> str:
    return (
        f"the slot had already confirmed {format_lsn(confirmed)}, past the rewind's start "
        f"{format_lsn(rewind.start_lsn)}, before it began; rewind to a later position, or keep more "
        "with `retain:`"
    )


def _has_work(batch: EventBatch) -> bool:
    """Whether a batch holds anything to commit: events, a checkpoint, or a rewind's progress."""
    return batch.checkpoint is not None or _has_content(batch)


def _has_content(batch: EventBatch) -> bool:
    """Whether a batch holds anything to commit besides a checkpoint."""
    return bool(
        batch.payload
        or batch.chunks
        or batch.journal
        or batch.rewind_position is not None
        or batch.rewind_done
        or batch.backfill
    )


async def slot_holder(dsn: str, slot: str) -> str:
    """Who reads ``slot`` now, for a message: its PID and what pg_stat_activity says about it."""
    try:
        conn = await connect_async(dsn, connect_timeout=10)
        try:
            cur = await conn.execute(
                "SELECT s.active_pid, a.application_name, a.usename, host(a.client_addr),"
                " to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'"
                " FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid"
                " WHERE s.slot_name = %s",
                [slot],
            )
            row = await cur.fetchone()
        finally:
            await conn.close()
    except (psycopg.Error, ListenerError):
        row = None
    if row is None or row[0] is None:
        return "another process"
    pid, app, user, addr, since = row
    details = [f"application_name {app!r}" if app else "", f"role {user}" if user else "",
               f"from {addr}" if addr else "", f"since {since}" if since else ""]  # fmt: skip
    extra = ", ".join(d for d in details if d)
    return f"PID {pid}" + (f" ({extra})" if extra else "")


async def first_of(*waits: Awaitable[Any]) -> None:
    """Wait until the first of ``waits`` completes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["EventBatch", "Ingest", "IngestStats", "ListenerError"]
