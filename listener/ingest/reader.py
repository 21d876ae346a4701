"""The pgoutput source: the replication stream → batches of events, each with its checkpoint.

The reader (:meth:`PgoutputSource.run`) decodes messages and builds batches; the writer
(:mod:`listener.ingest.writer`) commits each batch (events + checkpoint, one state-db transaction) and
only then does :meth:`PgoutputSource.committed` move the flush LSN reported to the server (invariant 1).
A bounded queue between them (:class:`~listener.ingest.source.BatchQueue`) lets decoding overlap the
write while keeping memory bounded: a batch holds at most ``batch_events`` events, and a huge source
transaction is cut into such chunks (their events commit without moving the checkpoint; after a crash
the transaction is re-sent and the unique idempotency keys drop what was already written).

On restart, transactions whose commit LSN is below the checkpoint are skipped.  A recorded rewind
restarts the session from its start: transactions committed in its range are evaluated again (existing
idempotency keys insert nothing), the ones after it up to the checkpoint are skipped as on a restart.  The
choice is made once per transaction (two comparisons at its Begin); the per-change path is unchanged.
"""

from __future__ import annotations

import logging
import struct
import time
from datetime import datetime

from listener.defaults import BATCH_BYTES, COMPACT_CHUNK_BYTES, JOURNAL_BATCH_ROWS, READ_BATCH_BYTES
from listener.errors import ProtocolError
from listener.ingest.backfill_marks import PREFIX as BACKFILL_PREFIX
from listener.ingest.heartbeat import HEARTBEAT_PREFIX, heartbeat_lag
from listener.ingest.journal import JournalBuffer
from listener.ingest.reload import RELOAD_PREFIX, apply_reload
from listener.ingest.source import BatchQueue
from listener.ingest.state import IngestState
from listener.logs import fields
from listener.pg import pgoutput as po
from listener.pg.assembler import Assembler
from listener.pg.changes import Change, TxnBegin, TxnCommit
from listener.pg.replication import ReplicationSession
from listener.queue.batches import EventBatch, RawChunk, RewindPlan
from listener.rules.compile import CompiledRule, RuleSet
from listener.rules.events import (
    append_change_events,
    append_message_events,
    append_truncate_events,
)

logger = logging.getLogger(__name__)

_NOTHING = memoryview(b"")
_ROW_CHANGES = frozenset(b"IUD")  # Insert, Update, Delete: their relation OID follows the type byte
_unpack_oid = struct.Struct(">I").unpack_from
_pack_head = struct.Struct(">QI").pack  # a change in a chunk: its LSN and its message's length


class PgoutputSource:
    """Row changes and logical decoding messages of one streaming session of the slot, as a source.

    Transactions committed below ``rewind.up_to`` are re-read (every rule evaluated again), then those
    below ``resume_lsn`` are skipped; with ``until_rewound`` :meth:`run` returns once the rewind's range
    is passed (``listener rewind --dry-run``)."""

    name = "pgoutput"

    def __init__(
        self,
        ingest: IngestState,
        session: ReplicationSession,
        resume_lsn: int,
        rewind: RewindPlan | None = None,
        *,
        until_rewound: bool = False,
    ) -> None:
        self.ingest = ingest
        self.session = session
        self.resume_lsn = resume_lsn
        self.rewind = rewind
        self.until_rewound = until_rewound

    def committed(self, batch: EventBatch) -> None:
        """The batch is durable: hand its backfill chunks back, wake the expander for its compact chunks,
        and only now tell the server it may forget this WAL; with a retention window, only what lies
        beyond the window (``batch.confirm`` trails the checkpoint)."""
        ingest = self.ingest
        if batch.backfill:
            ingest.backfills.committed(batch.backfill)
        if batch.chunks or batch.backfill:
            ingest.expander.wake.set()
        if batch.checkpoint is not None:
            ingest.durable_lsn = batch.checkpoint
            ingest.stats.checkpoint = batch.checkpoint
            if ingest.retention is None:
                self.session.confirm(batch.checkpoint)
            elif batch.confirm is not None:
                self.session.confirm(batch.confirm)
        if batch.rewind_done and batch.rewind is not None:
            ingest.stats.rewinds += 1
            logger.info(
                "rewind %d finished", batch.rewind.id, extra=fields(slot=ingest.slot, rewind=batch.rewind.id)
            )
            ingest.rewind = None
            ingest.rewinds_changed.set()  # another one may be waiting

    async def run(self, queue: BatchQueue) -> None:
        """Decode, match and batch until the stream ends (or, ``until_rewound``, the rewind's range)."""
        ingest = self.ingest
        session = self.session
        resume_lsn = self.resume_lsn
        rewind = self.rewind
        until_rewound = self.until_rewound
        decoder = po.Decoder(session.protocol_version)
        assembler = Assembler(ingest.types)
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
        stats = ingest.stats
        events = batch.payload  # its length is the batch's size
        # compact storage of bulk transactions (see sql/0002_event_chunks.sql)
        compact_after = ingest.compact_after
        chunk_changes = ingest.compact_chunk_changes
        compact_by_oid: dict[int, str | None] = {}  # table -> its chunks' rules JSON, None: not compactable
        # the change journal (sql/0006_journal.sql): every row change not skipped, raw, per table
        journal = JournalBuffer(session.protocol_version) if ingest.journal is not None else None
        raw_relations: dict[int, bytes] = {}  # table -> its latest Relation message, as sent
        txn_events: dict[int, int] = {}  # table -> events made in the open transaction
        raw_oids: set[int] = set()  # tables whose changes in the open transaction go raw into chunks
        chunks: dict[int, RawChunk] = {}  # their open chunks
        fast = False  # whether row changes may bypass the decoder: skipping, or raw tables exist
        message_ordinals: dict[str, int] = {}  # prefix -> messages with it in the open transaction
        watched = ingest.backfills.watched  # tables with an open backfill window: their keys are noted

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
            await queue.put(batch, self)
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
                wait_s = max(last_checkpoint + ingest.empty_checkpoint_interval - time.monotonic(), 0.0)
            messages = await session.read(block=not ready, wait_s=wait_s)
            if not messages:
                since = time.monotonic() - last_checkpoint
                follow = (
                    session.keepalive_lsn > submitted_checkpoint and since >= ingest.idle_checkpoint_interval
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
                    and (follow or (deferred is not None and since >= ingest.empty_checkpoint_interval))
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
                    if full is not None:  # a huge transaction: its journal goes in rows of JOURNAL_ROW_BYTES
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
                        plan = _chunk_rules(ingest.rules, assembler, oid, compact_by_oid)
                        if plan is None or oid not in raw_relations:
                            raw_oids.discard(oid)
                            fast = skipping or bool(raw_oids)
                        else:
                            # the chunk's changes take consecutive ordinals from here: the assembler's
                            # count is brought up to date when the chunk closes (close_chunk)
                            chunk = chunks[oid] = _new_chunk(
                                session, assembler, oid, assembler.next_ordinal(oid), raw_relations[oid], plan
                            )
                    if chunk is not None:
                        if oid in watched:
                            ingest.backfills.note_raw(bytes(payload), decoder, assembler.relations)
                        data = chunk.data
                        data += _pack_head(lsn, len(payload))
                        data += payload
                        chunk.changes += 1
                        stats.changes += 1
                        if chunk.changes >= chunk_changes or len(data) >= COMPACT_CHUNK_BYTES:
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
                            if apply_reload(ingest, msg.content.decode(errors="replace"), msg.lsn):
                                rules_by_oid.clear()
                                compact_by_oid.clear()
                            continue
                        if msg.prefix == HEARTBEAT_PREFIX and not msg.transactional:
                            lag = heartbeat_lag(msg.content, ingest.slot)
                            if lag is not None:
                                stats.measured(lag)
                            # a position outside any transaction, everything before it handled: the
                            # checkpoint moves to it (the slot's positions follow while rule tables idle)
                            if not assembler.in_transaction and not rewind_end and lsn > submitted_checkpoint:
                                batch.checkpoint, batch.checkpoint_time = lsn, None
                                await submit()
                            continue
                        if msg.prefix == BACKFILL_PREFIX and not msg.transactional:
                            backfilled = ingest.backfills.mark(msg)
                            if backfilled is not None:  # a high watermark: its chunk commits now
                                batch.backfill.append(backfilled)
                                await submit()
                            continue
                        matched_messages = ingest.rules.message_rules(msg.prefix)
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
                        await _relation(ingest, assembler, msg)
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
                        ingest.backfills.note(item)
                    by_op = rules_by_oid.get(oid)
                    if by_op is None:
                        rel = item.relation
                        assert rel is not None
                        by_op = rules_by_oid[oid] = ingest.rules.for_table(rel.schema, rel.name)
                    if item.op == "truncate":
                        append_truncate_events(batch, item, ingest.rules)
                        if journal is not None:  # it took an ordinal: later changes start new rows
                            batch.journal += filter(None, (journal.close(r.oid) for r, _ in item.truncated))
                    else:
                        matched = by_op.get(item.op, ())
                        if matched:
                            append_change_events(batch, item, matched, huge=huge)
                            if compact_after and not rewinding:  # a rewind re-reads event by event (reruns)
                                seen = txn_events[oid] = txn_events.get(oid, 0) + 1
                                compact = seen >= compact_after
                                if (
                                    compact
                                    and _chunk_rules(ingest.rules, assembler, oid, compact_by_oid) is not None
                                ):
                                    raw_oids.add(oid)
                                    fast = True
                                    ingest.expander.free.clear()
                    if len(events) >= ingest.batch_events or batch.nbytes >= BATCH_BYTES:
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
                            or time.monotonic() - last_checkpoint >= ingest.empty_checkpoint_interval
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
                    ingest.expander.free.set()
                    message_ordinals.clear()
                    skipping = rewinding = fast = False
            if (
                _has_work(batch)
                and not assembler.in_transaction
                and (
                    len(events) >= ingest.batch_events
                    or session.drained  # caught up with the server: do not hold events back
                    or time.monotonic() - batch_started >= ingest.batch_delay
                )
            ):
                await submit()


def _chunk_rules(rules: RuleSet, assembler: Assembler, oid: int, cache: dict[int, str | None]) -> str | None:
    """The rules JSON for a compact chunk of table ``oid`` (None: its rules need the row)."""
    if oid not in cache:
        rel = assembler.relations.get(oid)
        cache[oid] = rules.compact_rules(rel.schema, rel.name) if rel is not None else None
    return cache[oid]


def _new_chunk(
    session: ReplicationSession,
    assembler: Assembler,
    oid: int,
    ordinal: int,
    relation: bytes,
    rules: str | None,
) -> RawChunk:
    begin = assembler.begin
    assert begin is not None and rules is not None
    return RawChunk(
        commit_lsn=begin.final_lsn,
        relation_oid=oid,
        first_ordinal=ordinal,
        xid=begin.xid,
        commit_time=begin.commit_time,
        table_name=assembler.relations[oid].qualified,
        protocol=session.protocol_version,
        relation=relation,
        rules=rules,
    )


async def _relation(ingest: IngestState, assembler: Assembler, msg: po.Relation) -> None:
    unknown = ingest.types.unknown(c.type_oid for c in msg.columns)
    if unknown:
        await ingest.resolve_types(unknown)
        assembler.relation(msg)  # rebuild with the resolved loaders


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
