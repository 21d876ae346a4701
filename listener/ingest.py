"""Ingest: the replication stream → workflow events, committed with the checkpoint, then acknowledged.

One reader task decodes messages and builds batches; one writer task commits each batch (events +
checkpoint, one state-db transaction) and only then moves the flush LSN reported to the server
(invariant 1).  A bounded queue between them (``WRITE_QUEUE_BATCHES``) lets decoding overlap the write
while keeping memory bounded: a batch holds at most ``batch_events`` events, and a huge source
transaction is cut into such chunks (their events commit without moving the checkpoint; after a crash
the transaction is re-sent and the unique idempotency keys drop what was already written).

On restart, transactions whose commit LSN is below the checkpoint are skipped.  Every lost connection
(source or state database) restarts the session from the durable checkpoint, with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg

from listener import pgoutput as po
from listener.catalog import read_tables_async
from listener.changes import Assembler, Change, TxnBegin, TxnCommit, TypeRegistry
from listener.config import Config
from listener.errors import (
    ConfigError,
    DatabaseError,
    ListenerError,
    PrerequisiteError,
    ProtocolError,
    SlotInUseError,
)
from listener.expand import Expander
from listener.lsn import format_lsn
from listener.predicate import EvaluationError, MissingValue
from listener.replication import ReplicationEnded, ReplicationSession
from listener.rules import CompiledRule, RuleSet
from listener.store import EventBatch, RawChunk, StateStore, asyncpg_params

logger = logging.getLogger(__name__)

WRITE_QUEUE_BATCHES = 2
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 30.0
SLOT_BUSY_RETRY_S = 15.0  # after a crash, the server may hold the old walsender a moment longer
# While no rule table changes, the checkpoint follows the server's position at most this often: each
# checkpoint write is WAL itself (when the state database is the source), which would otherwise feed a
# keepalive-write loop.
IDLE_CHECKPOINT_INTERVAL_S = 10.0

RELOAD_PREFIX = "listener.reload"  # the logical decoding message that marks where new rules apply
_ROW_CHANGES = frozenset(b"IUD")  # Insert, Update, Delete: their relation OID follows the type byte
_unpack_oid = struct.Struct(">I").unpack_from
_pack_head = struct.Struct(">QI").pack  # a change in a chunk: its LSN and its message's length

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


@dataclass(slots=True)
class IngestStats:
    changes: int = 0
    events_inserted: int = 0
    transactions: int = 0
    batches: int = 0
    reconnects: int = 0
    checkpoint: int | None = None


# SQLSTATE classes worth retrying: connection exception, transaction rollback (serialization, deadlock),
# insufficient resources (disk full, too many connections), operator intervention (shutdown), system error;
# and a read-only transaction (the state database failing over).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")


def transient(exc: BaseException) -> bool:
    """Whether reconnecting may help: lost connections and server-side conditions that pass."""
    if isinstance(exc, (ReplicationEnded, OSError, asyncpg.InterfaceError, psycopg.OperationalError)):
        return True
    if isinstance(exc, DatabaseError) and not isinstance(exc, PrerequisiteError):
        return True  # could not connect: the server may come back
    sqlstate = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "diag", None), "sqlstate", None)
    return isinstance(sqlstate, str) and (
        sqlstate.startswith(_TRANSIENT_SQLSTATE_CLASSES) or sqlstate == "25006"
    )


def event_key(rule: str, commit_lsn: int, ordinal: int) -> str:
    """The idempotency key of a CDC event: rule + commit LSN + ordinal of the change among the changes to
    its table in that transaction.  Counting per table keeps keys stable when the publication gains or
    loses other tables."""
    return f"{rule}/{format_lsn(commit_lsn)}/{ordinal}"


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
        self.idle_checkpoint_interval = IDLE_CHECKPOINT_INTERVAL_S
        self.on_batch = on_batch
        self.stats = IngestStats()
        self.types = TypeRegistry()
        self.expander = Expander(store, self.types, self._resolve_types, ahead=expand_ahead)
        self.durable_lsn = 0
        self.streaming = asyncio.Event()  # set once a session is streaming
        self._session: ReplicationSession | None = None
        self._catalog: psycopg.AsyncConnection[Any] | None = None

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
            on_batch=on_batch,
        )

    # -- supervision --------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until ``stop`` is set; reconnect with backoff after any connection loss."""
        delay = RECONNECT_MIN_S
        busy_since: float | None = None
        while not stop.is_set():
            try:
                await self._run_session(stop)
                return
            except SlotInUseError:
                busy_since = busy_since or time.monotonic()
                if time.monotonic() - busy_since > SLOT_BUSY_RETRY_S:
                    raise
                logger.info("slot %s busy, retrying", self.slot)
            except Exception as exc:
                if not transient(exc):
                    raise  # a bug or a refusal that retrying cannot fix: stop loudly, acknowledge nothing
                logger.warning("replication interrupted (%s); reconnecting in %.1fs", exc, delay)
                busy_since = None
            self.stats.reconnects += 1
            self.streaming.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay * (0.5 + random.random()))
            delay = min(RECONNECT_MAX_S, delay * 2)

    async def _run_session(self, stop: asyncio.Event) -> None:
        checkpoint = await self.store.read_checkpoint() or 0
        self.durable_lsn = checkpoint
        self.stats.checkpoint = checkpoint
        session = await ReplicationSession.connect(self.source_dsn, slot=self.slot)
        self._session = session
        self._catalog = await psycopg.AsyncConnection.connect(self.source_dsn, autocommit=True)
        if self._compile:
            assert self.config is not None
            self.rules = await compile_rules(self.config, self._catalog)
            self._compile = False
        queue: asyncio.Queue[EventBatch | None] = asyncio.Queue(maxsize=WRITE_QUEUE_BATCHES)
        tasks: list[asyncio.Task[Any]] = []
        try:
            session.status_interval = self.status_interval
            from listener import setup

            # the config's publication and, where the server has row filters, the filtered one
            publications = await setup.streamed_publications(self._catalog, self.publication)
            await session.start(publication=publications, start_lsn=checkpoint)
            logger.info(
                "streaming slot %s from %s (pgoutput v%d)",
                self.slot,
                format_lsn(checkpoint),
                session.protocol_version,
            )
            self.streaming.set()
            writer = asyncio.create_task(self._writer(queue, session), name="ingest-writer")
            reader = asyncio.create_task(self._reader(queue, session, checkpoint), name="ingest-reader")
            stopper = asyncio.create_task(stop.wait(), name="ingest-stop")
            expander = asyncio.create_task(self.expander.run(), name="ingest-expander")
            tasks += [writer, reader, stopper, expander]
            if self.rules.channels:
                tasks.append(asyncio.create_task(self._listen(queue), name="ingest-notify"))
            done, _ = await asyncio.wait(
                {writer, reader, stopper, expander}, return_when=asyncio.FIRST_COMPLETED
            )
            if expander in done:
                expander.result()  # it only ends by raising
            if stopper in done or reader in done:
                # Stop reading; let the writer commit what is queued (a clean stop loses no work), then
                # report the final flush position.
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                if writer not in done:
                    await queue.put(None)
                    await writer
                await session.send_status()
            for task in (reader, writer):
                exc = task.exception() if task.done() and not task.cancelled() else None
                if exc is not None:
                    raise exc
            if not stop.is_set():
                raise ReplicationEnded("the replication stream ended")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await session.close()
            if self._catalog is not None:
                await self._catalog.close()
            self._session = None

    # -- writer -------------------------------------------------------------------------------------------

    async def _writer(self, queue: asyncio.Queue[EventBatch | None], session: ReplicationSession) -> None:
        while True:
            batch = await queue.get()
            if batch is None:
                return
            inserted = await self.store.write_batch(batch)
            self.stats.batches += 1
            self.stats.events_inserted += inserted
            if batch.chunks:
                self.expander.wake.set()
            if batch.checkpoint is not None:
                self.durable_lsn = batch.checkpoint
                self.stats.checkpoint = batch.checkpoint
                session.confirm(batch.checkpoint)  # only now may the server forget this WAL
            if self.on_batch is not None:
                self.on_batch(batch, inserted)

    # -- reader -------------------------------------------------------------------------------------------

    async def _reader(
        self, queue: asyncio.Queue[EventBatch | None], session: ReplicationSession, resume_lsn: int
    ) -> None:
        decoder = po.Decoder(session.protocol_version)
        assembler = Assembler(self.types)
        decode = decoder.decode
        feed = assembler.feed
        rules_by_oid: dict[int, dict[str, tuple[CompiledRule, ...]]] = {}
        batch = EventBatch()
        batch_started = time.monotonic()
        submitted_checkpoint = resume_lsn
        skipping = False
        last_idle_checkpoint = time.monotonic()
        stats = self.stats
        events = batch.payload  # its length is the batch's size
        # compact storage of bulk transactions (see sql/0002_event_chunks.sql)
        compact_after = self.compact_after
        chunk_changes = self.compact_chunk_changes
        compact_by_oid: dict[int, str | None] = {}  # table -> its chunks' rules JSON, None: not compactable
        raw_relations: dict[int, bytes] = {}  # table -> its latest Relation message, as sent
        txn_events: dict[int, int] = {}  # table -> events made in the open transaction
        raw_oids: set[int] = set()  # tables whose changes in the open transaction go raw into chunks
        chunks: dict[int, RawChunk] = {}  # their open chunks
        fast = False  # whether row changes may bypass the decoder: skipping, or raw tables exist
        message_ordinals: dict[str, int] = {}  # prefix -> messages with it in the open transaction

        async def submit() -> None:
            nonlocal batch, events, batch_started, submitted_checkpoint
            if batch.checkpoint is not None:
                submitted_checkpoint = batch.checkpoint
            await queue.put(batch)
            batch = EventBatch()
            events = batch.payload
            batch_started = time.monotonic()

        while True:
            # With a batch ready to go, only look at what is already buffered: once libpq's buffer is
            # drained the batch is submitted, never held until the next message or status timeout.
            ready = bool(events or batch.checkpoint is not None) and not assembler.in_transaction
            messages = await session.read(block=not ready)
            if not messages:
                if ready:
                    await submit()
                elif (
                    # Idle: nothing of ours is in flight, so every transaction before the server's
                    # position was sent and handled; let the checkpoint follow it (otherwise the slot
                    # pins WAL forever), but not too often (see IDLE_CHECKPOINT_INTERVAL_S).
                    not assembler.in_transaction
                    and session.keepalive_lsn > submitted_checkpoint
                    and time.monotonic() - last_idle_checkpoint >= self.idle_checkpoint_interval
                ):
                    batch.checkpoint = session.keepalive_lsn
                    last_idle_checkpoint = time.monotonic()
                    await submit()
                continue
            for lsn, payload in messages:
                if fast and payload[0] in _ROW_CHANGES:
                    # the compact path: bulk changes of raw tables stay bytes (and skipped ones are dropped)
                    if skipping:
                        continue
                    oid = _unpack_oid(payload, 1)[0]
                    if oid in raw_oids:
                        ordinal = assembler.next_ordinal(oid)
                        chunk = chunks.get(oid)
                        if chunk is None:
                            chunk = chunks[oid] = self._new_chunk(
                                assembler, oid, ordinal, raw_relations[oid], compact_by_oid[oid]
                            )
                        data = chunk.data
                        data += _pack_head(lsn, len(payload))
                        data += payload
                        chunk.changes += 1
                        stats.changes += 1
                        if chunk.changes >= chunk_changes:
                            batch.chunks.append(chunks.pop(oid))
                            await submit()
                        continue
                try:
                    msg = decode(payload)
                except ProtocolError as exc:
                    # never skipped: the service stops, naming the message; nothing is acknowledged
                    raise exc.at_lsn(lsn) from exc
                item = feed(lsn, msg)
                if item is None:
                    if type(msg) is po.Message:
                        assert isinstance(msg, po.Message)
                        if msg.prefix == RELOAD_PREFIX and not msg.transactional:
                            if self._apply_reload(msg.content.decode(errors="replace"), msg.lsn):
                                rules_by_oid.clear()
                                compact_by_oid.clear()
                            continue
                        matched_messages = self.rules.message_rules(msg.prefix)
                        if matched_messages and not skipping and msg.lsn >= resume_lsn:
                            begin = assembler.begin if msg.transactional else None
                            ordinal = message_ordinals.get(msg.prefix, 0)
                            if begin is not None:
                                message_ordinals[msg.prefix] = ordinal + 1
                            _append_message_events(batch, msg, begin, ordinal, matched_messages)
                            stats.changes += 1
                            if begin is None:  # not part of a transaction: no commit will submit it
                                await submit()
                        continue
                    if type(msg) is po.Relation:
                        await self._relation(assembler, msg)
                        rules_by_oid.pop(msg.oid, None)
                        compact_by_oid.pop(msg.oid, None)
                        raw_relations[msg.oid] = bytes(payload)
                        if msg.oid in chunks:  # the table changed shape: later changes go in a new chunk
                            batch.chunks.append(chunks.pop(msg.oid))
                    continue
                if type(item) is Change:
                    if skipping:
                        continue
                    stats.changes += 1
                    oid = item.relation.oid  # type: ignore[union-attr]
                    by_op = rules_by_oid.get(oid)
                    if by_op is None:
                        rel = item.relation
                        assert rel is not None
                        by_op = rules_by_oid[oid] = self.rules.for_table(rel.schema, rel.name)
                    if item.op == "truncate":
                        _append_truncate_events(batch, item, self.rules)
                    else:
                        matched = by_op.get(item.op, ())
                        if matched:
                            _append_events(batch, item, matched)
                            if compact_after:
                                seen = txn_events[oid] = txn_events.get(oid, 0) + 1
                                if seen >= compact_after and self._compactable(item, compact_by_oid):
                                    raw_oids.add(oid)
                                    fast = True
                    if len(events) >= self.batch_events:
                        await submit()
                elif type(item) is TxnBegin:
                    # Already durable before a restart: its commit LSN lies below the checkpoint.
                    skipping = item.commit_lsn < resume_lsn
                    fast = skipping
                elif type(item) is TxnCommit:
                    if not skipping:
                        stats.transactions += 1
                        batch.checkpoint = item.end_lsn
                    if chunks:
                        batch.chunks.extend(chunks.values())
                        chunks.clear()
                    raw_oids.clear()
                    txn_events.clear()
                    message_ordinals.clear()
                    skipping = fast = False
            if (
                (events or batch.checkpoint is not None)
                and not assembler.in_transaction
                and (
                    len(events) >= self.batch_events
                    or session.drained  # caught up with the server: do not hold events back
                    or time.monotonic() - batch_started >= self.batch_delay
                )
            ):
                await submit()

    # -- reload -------------------------------------------------------------------------------------------

    async def reload(self, config: Config, *, state_dsn: str | None = None) -> int:
        """Switch to ``config``'s rules at a precise point of the stream; return that LSN.

        The new rules are compiled against the catalog first (an invalid config raises and the old rules
        keep running), the publication is brought up to date, then a non-transactional logical decoding
        message ``listener.reload`` is written: transactions committed before it were matched by the old
        rules, those after it by the new ones, and none is lost or matched twice on the way."""
        if self._catalog is None or not self.streaming.is_set():
            raise ListenerError("cannot reload: ingest is not streaming", hint="try again in a moment")
        for key in ("slot", "publication", "state_schema", "dsn", "state_dsn"):
            if getattr(config, key) != getattr(self.config, key) and self.config is not None:
                raise ConfigError(
                    f"reload cannot change `{key}:`",
                    hint="restart listener to change it",
                    file=config.source_path,
                )
        rules = await compile_rules(config, self._catalog)  # raises ConfigError: the old rules stay
        from listener import setup

        # The publications first carry what either set of rules needs; only after the marker (in WAL order)
        # do they narrow to the new rules, so no change that the rules in force would match is filtered.
        state = state_dsn or self.source_dsn
        await asyncio.to_thread(setup.init, config, self.source_dsn, state, keep=self.config)
        token = f"{self.slot}/{uuid.uuid4()}"
        self._pending_rules[token] = (config, rules)
        cur = await self._catalog.execute(
            "SELECT (pg_logical_emit_message(false, %s, %s) - '0/0')::int8", [RELOAD_PREFIX, token]
        )
        row = await cur.fetchone()
        assert row is not None
        await asyncio.to_thread(setup.init, config, self.source_dsn, state)
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

    async def _listen(self, queue: asyncio.Queue[EventBatch | None]) -> None:
        """NOTIFY on the rules' channels → events, at most once: a notification sent while no session
        listens is gone (the server keeps none).  Keys name this listening session and a counter."""
        conn = await asyncpg.connect(**asyncpg_params(self.source_dsn))
        session = uuid.uuid4().hex[:12]
        received: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()
        try:
            for channel in self.rules.channels:
                await conn.add_listener(
                    channel, lambda _c, pid, ch, data: received.put_nowait((pid, ch, data))
                )
            counter = 0
            while True:
                item = await received.get()
                batch = EventBatch()
                while True:
                    pid, channel, data = item
                    _append_notify_events(batch, channel, data, pid, f"notify/{session}", counter, self.rules)
                    counter += 1
                    if received.empty() or len(batch) >= self.batch_events:
                        break
                    item = received.get_nowait()
                await queue.put(batch)
        finally:
            await conn.close()

    def _compactable(self, change: Change, cache: dict[int, str | None]) -> bool:
        rel = change.relation
        assert rel is not None
        if rel.oid not in cache:
            cache[rel.oid] = self.rules.compact_rules(rel.schema, rel.name)
        return cache[rel.oid] is not None

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
            await self._resolve_types(unknown)
            assembler.relation(msg)  # rebuild with the resolved loaders

    async def _resolve_types(self, oids: Sequence[int]) -> None:
        assert self._catalog is not None
        await self.types.resolve(self._catalog, oids)


async def compile_rules(config: Config, catalog: psycopg.AsyncConnection[Any]) -> RuleSet:
    """The rules of ``config``, checked against their tables' columns in the source catalog."""
    names = [rule.table for rule in config.rules if rule.table is not None]
    tables, collation = await read_tables_async(catalog, dict.fromkeys(names))
    return RuleSet.from_config(config, tables, collation)


def run_key(rule: CompiledRule, change: Change) -> str | None:
    """The flow-control key of a gated rule's run: its key template filled from the row, or by default
    the row's primary key (the replica identity columns: from the new row, or the old key of a delete).
    Scoped by rule.  None when the row has no such values (then the run is limited by workflow only)."""
    if rule.key_fields:
        rows = {"new": change.new_json() or {}, "old": change.old_json() or {}}
        parts = [rows[side].get(column) for side, column in rule.key_fields]
    else:
        rel = change.relation
        assert rel is not None
        row = (change.new_json() if change.op != "delete" else change.old_json()) or {}
        parts = [row.get(column) for column in rel.key_columns]
    if not parts or all(part is None for part in parts):
        return None
    return rule.name + ":" + "|".join("" if part is None else str(part) for part in parts)


def _append_events(batch: EventBatch, change: Change, matched: tuple[CompiledRule, ...]) -> None:
    rel = change.relation
    assert rel is not None
    whole: str | None = None  # the payload of rules without `payload:`, made once
    rows: tuple[Row | None, Row | None] | None = None  # the raw new and old values, by column
    commit = change.commit_text
    for rule in matched:
        if rule.filters or rule.payload:
            if rows is None:
                rows = raw_rows(change)
            if rule.filters and not rule_matches(rule, change, *rows):
                continue
        if rule.payload:
            assert rows is not None
            payload = shaped_payload(rule, change, *rows)
        else:
            if whole is None:
                whole = change.payload_json()
            payload = whole
        batch.group.append(
            batch.group_id(rule, change.op, rel.qualified, commit, change.xid, change.commit_time)
        )
        batch.lsn.append(change.lsn)
        batch.ordinal.append(change.ordinal)
        batch.payload.append(payload)
        batch.key.append(run_key(rule, change) if rule.gated else None)


Row = dict[str, bytes | None]


def raw_rows(change: Change) -> tuple[Row | None, Row | None]:
    """The new and old values the server sent, by column name, as PostgreSQL text (None: SQL NULL).

    What the server did not send is left out, so a predicate that needs it raises instead of guessing:
    an unchanged TOAST value is taken from the old row when that row is whole, and an update without an
    old tuple (replica identity DEFAULT, key unchanged) knows only the key columns' old values."""
    rel = change.relation
    assert rel is not None
    unchanged = po.UNCHANGED_TOAST
    old: Row | None = None
    if change.old is not None:
        key_only = change.old_kind == "K"
        old = {
            c.name: v  # type: ignore[misc]
            for c, v in zip(rel.columns, change.old, strict=False)
            if v is not unchanged and (c.is_key or not key_only)
        }
    elif change.op == "update" and change.new is not None:
        old = {
            c.name: v  # type: ignore[misc]
            for c, v in zip(rel.columns, change.new, strict=False)
            if c.is_key and v is not unchanged
        }
    new: Row | None = None
    if change.new is not None:
        new = {}
        for c, v in zip(rel.columns, change.new, strict=False):
            if v is unchanged:
                if old is not None and c.name in old:
                    new[c.name] = old[c.name]
            else:
                new[c.name] = v  # type: ignore[assignment]
    return new, old


def rule_matches(rule: CompiledRule, change: Change, new: Row | None, old: Row | None) -> bool:
    """Whether ``change`` passes the rule's ``changed:`` and ``when:``; a value the rule needs but the
    server did not send raises :class:`RuleEvaluationError` (never a guess)."""
    if rule.changed and change.op == "update":
        assert new is not None and change.new is not None and change.relation is not None
        differs = False
        positions = change.relation.positions
        for column in rule.changed:
            if change.new[positions[column]] is po.UNCHANGED_TOAST:
                continue  # an unchanged TOAST value is unchanged
            if old is None or column not in old:
                raise RuleEvaluationError(
                    rule, change, f"changed: needs the old value of {column!r}", _FULL_HINT
                )
            if new.get(column) != old[column]:
                differs = True
                break
        if not differs:
            return False
    if rule.predicate is None:
        return True
    try:
        return bool(rule.predicate.matches(new, old, change.commit_time))
    except MissingValue as exc:
        raise RuleEvaluationError(
            rule, change, f"when: needs {exc}, which the server did not send", _FULL_HINT
        ) from exc
    except EvaluationError as exc:
        raise RuleEvaluationError(
            rule, change, f"when: {exc}", "correct `when:` (e.g. cast to bigint or numeric), then restart"
        ) from exc


_FULL_HINT = (
    "ALTER TABLE <table> REPLICA IDENTITY FULL, so updates and deletes carry the whole old row; then restart"
)


def shaped_payload(rule: CompiledRule, change: Change, new: Row | None, old: Row | None) -> str:
    """``{"data": {name: value, ...}, "unchanged_toast": [...]}``: the columns ``payload:`` picks, renamed,
    rendered like the whole-row payload; a value the server did not send is listed, never null."""
    rel = change.relation
    assert rel is not None
    data: dict[str, Any] = {}
    missing: list[str] = []
    for out, side, column in rule.payload:
        row = new if side == "new" else old
        if row is None:
            data[out] = None
        elif column not in row:
            missing.append(out)
        else:
            value = row[column]
            data[out] = None if value is None else rel.columns[rel.positions[column]].render(value)
    return _dumps({"data": data, "unchanged_toast": missing})


def _append_message_events(
    batch: EventBatch,
    msg: po.Message,
    begin: po.Begin | None,
    ordinal: int,
    matched: tuple[CompiledRule, ...],
) -> None:
    """Events of a logical decoding message.  Transactional: keyed by the commit LSN and the message's
    ordinal among its prefix's in the transaction; otherwise by the message's own LSN."""
    try:
        content = msg.content.decode()
    except UnicodeDecodeError:
        content = "\\x" + msg.content.hex()
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    payload = _dumps(
        {"data": data, "content": content, "prefix": msg.prefix, "transactional": msg.transactional}
    )
    commit = format_lsn(begin.final_lsn if begin is not None else msg.lsn)
    xid = begin.xid if begin is not None else msg.xid
    at = begin.commit_time if begin is not None else None
    for rule in matched:
        batch.group.append(batch.group_id(rule, "message", None, commit, xid, at))
        batch.lsn.append(msg.lsn)
        batch.ordinal.append(ordinal)
        batch.payload.append(payload)
        batch.key.append(None)


def _append_notify_events(
    batch: EventBatch, channel: str, content: str, pid: int, session: str, ordinal: int, rules: RuleSet
) -> None:
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    payload = _dumps({"data": data, "content": content, "channel": channel, "pid": pid})
    for rule in rules.channels.get(channel, ()):
        batch.group.append(batch.group_id(rule, "notify", None, session, None, None))
        batch.lsn.append(0)
        batch.ordinal.append(ordinal)
        batch.payload.append(payload)
        batch.key.append(None)


class RuleEvaluationError(ListenerError):
    """A rule could not be evaluated for a change: the service stops there, acknowledging nothing past it."""

    def __init__(self, rule: CompiledRule, change: Change, what: str, hint: str) -> None:
        super().__init__(
            f"rule {rule.name!r} on {change.table} at LSN {format_lsn(change.lsn)} "
            f"(transaction {format_lsn(change.commit_lsn)}): {what}",
            hint=hint.replace("<table>", change.table or "<table>"),
        )


def _append_truncate_events(batch: EventBatch, change: Change, rules: RuleSet) -> None:
    """A truncate of several tables is one change per table: each rule's event uses its table's ordinal."""
    payload = _dumps(
        {
            "new": None,
            "old": None,
            "unchanged_toast": [],
            "tables": [r.qualified for r, _ in change.truncated],
        }
    )
    commit = change.commit_text
    for rel, ordinal in change.truncated:
        for rule in rules.match(rel.schema, rel.name, "truncate"):
            gid = batch.group_id(rule, "truncate", rel.qualified, commit, change.xid, change.commit_time)
            batch.group.append(gid)
            batch.lsn.append(change.lsn)
            batch.ordinal.append(ordinal)
            batch.payload.append(payload)
            batch.key.append(f"{rule.name}:{rel.qualified}" if rule.gated else None)


__all__ = ["EventBatch", "Ingest", "IngestStats", "ListenerError", "event_key"]
