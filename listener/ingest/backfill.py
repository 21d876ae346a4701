"""Snapshot backfill: give a rule the rows that already exist, while the live stream goes on.

`listener backfill --rule R [--where SQL]` checks the request and records it (a row of ``backfills``, see
sql/0005_backfill.sql; :mod:`listener.backfill_requests`), then wakes the running ingest through the
control channel, like a rewind.  The
ingest's backfill task (:class:`Backfills`) reads the table in primary-key order, ``chunk_rows`` rows at a
time (keyset pagination on the whole primary key), with the watermark algorithm of DBLog and Debezium's
incremental snapshots:

1. write a non-transactional logical decoding message ``listener.backfill`` ``<id>:<n>:<session>:low``;
2. read the chunk: ``COPY (SELECT ... WHERE key > last [AND where] ORDER BY key LIMIT n) TO STDOUT``;
3. write ``...:high`` (flushed, so the walsender sends it at once).

The reader sees both marks in stream order.  Between them it records the primary keys of the live
changes to the table (the operations the rule listens to, and deletes); at the high mark it drops those
rows from the chunk -- a live change delivered, or is about to deliver, a state at least as new -- and
hands the rest to the writer, with the backfill's progress, in one state-db transaction.  A row's state in
the chunk is therefore never older than one a workflow received before it: transactions committed before
the low mark are visible to the chunk's snapshot, those committed after the high mark come after it in the
stream, and those in between are exactly the ones whose keys are dropped.

Rows are kept as the COPY text lines (the same text the stream sends, since the connection pins the
stream's output settings) in ``backfill_chunks``; the expander turns them into events and runs ahead of
the workers.  A rule that needs the row at ingest (``when:``, ``payload:``, a flow-control key) gets its
events made at the high mark instead, in stream order.  Event keys are ``<rule>/backfill/<id>/<key>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import psycopg
from psycopg import sql

from listener.defaults import (
    BACKFILL_CANCEL_CHECK_S,
    BACKFILL_CHUNK_ROWS,
    BACKFILL_IN_FLIGHT,
    BACKFILL_LOCK_RETRY_MAX_S,
    BACKFILL_LOCK_RETRY_MIN_S,
    BACKFILL_LOCK_TIMEOUT_MS,
    BACKFILL_POLL_S,
    BACKFILL_RETRY_S,
)
from listener.errors import BackfillFailed, ListenerError, is_transient
from listener.pg import pgoutput as po
from listener.pg.changes import Change
from listener.pg.conninfo import asyncpg_params, connect_async
from listener.pg.copytext import Key, line_key
from listener.pg.lsn import parse_lsn
from listener.pg.relations import RelationInfo, relation_info
from listener.pg.types import TypeRegistry
from listener.queue import queries
from listener.queue.batches import BackfillChunk
from listener.queue.store import StateStore
from listener.rules.catalog import TableInfo, read_tables_async
from listener.rules.events import chunk_events

if TYPE_CHECKING:
    from listener.rules.compile import CompiledRule, RuleSet
    from listener.rules.config import Config


class Stream(Protocol):
    """What a backfill needs of the ingest it runs inside: the slot's stream, its rules and store."""

    config: Config | None
    slot: str
    source_dsn: str
    rules: RuleSet
    types: TypeRegistry
    store: StateStore

    async def resolve_types(self, oids: Sequence[int]) -> None:
        """Look up types the registry does not know yet (the expander's types are shared)."""


logger = logging.getLogger(__name__)

PREFIX = "listener.backfill"  # the watermark messages
OPEN = ("pending", "running")


def _last_line(data: bytes | bytearray) -> bytes:
    end = len(data) - 1  # data ends with a newline
    return bytes(data[data.rfind(b"\n", 0, end) + 1 : end])


# ---------------------------------------------------------------------------------------------------------
# The table, as the backfill reads it


@dataclass(frozen=True, slots=True)
class TableShape:
    """A table's published columns (in order) and its primary key (in index order)."""

    oid: int
    schema: str
    name: str
    columns: tuple[tuple[str, int, int, str], ...]  # name, type OID, type modifier, format_type
    key_columns: tuple[str, ...]

    @property
    def key_positions(self) -> list[int]:
        names = [c[0] for c in self.columns]
        return [names.index(k) for k in self.key_columns]

    def relation(self) -> po.Relation:
        keys = set(self.key_columns)
        cols = tuple(po.Column(c[0] in keys, c[0], c[1], c[2]) for c in self.columns)
        return po.Relation(None, self.oid, self.schema, self.name, "d", cols)


SHAPE = """
SELECT c.oid::int8, n.nspname, c.relname,
       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
       (SELECT array_agg(a.atttypid::int8 ORDER BY a.attnum) FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
       (SELECT array_agg(a.atttypmod ORDER BY a.attnum) FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
       (SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
       (SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = c.oid AND i.indisprimary)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)
"""


def check_where(where: str, table: TableInfo, collation: str) -> str:
    """``--where``: what a rule's ``when:`` allows -- one immutable boolean expression over the table's
    columns (a bare column, or ``new.<column>``, is the row's), compiled by :mod:`listener.predicate`,
    which knows every operator and function it accepts, none with a side effect.  Returns the expression
    as PostgreSQL deparses it over bare columns: the only text of the user's that reaches the server.
    Checked when the request is made and again when the service reads it from ``backfills``."""
    from listener.rules.predicate import PredicateError, compile_predicate

    def refuse(why: str, hint: str | None = None) -> ListenerError:
        allowed = (
            "--where allows what `when:` allows: one immutable boolean expression over the columns of "
            f'{table.name} ({", ".join(table.columns)}), e.g. --where "id > 1000"'
        )
        return ListenerError(f"--where {where!r}: {why}", hint=f"{hint}; {allowed}" if hint else allowed)

    try:
        predicate = compile_predicate(where, table.columns, collation=collation)
    except PredicateError as exc:
        raise refuse(exc.message, exc.hint) from None
    old = sorted(column for side, column in predicate.references if side == "old")
    if old:
        raise refuse(f"old.{old[0]}: a backfill reads rows as they are, which have no old values")
    if predicate.stable is not None:
        raise refuse(f"the expression is not immutable: {predicate.stable}")
    return predicate.bare_sql()


_EMIT = "SELECT pg_logical_emit_message(false, %s, %s)"


def _high_mark(content: str, *, flush: bool) -> str:
    """The high mark, ending the chunk's transaction in the same round trip.  ``content`` is our own token
    ([0-9a-z:]), so it can be written into the statement."""
    assert re.fullmatch(r"[0-9a-z:]+", content)
    return (
        f"SELECT pg_logical_emit_message(false, '{PREFIX}', '{content}'{', true' if flush else ''}); COMMIT"
    )


def table_shape(row: Sequence[Any] | None) -> TableShape | None:
    if row is None:
        return None
    oid, schema, name, names, oids, mods, types, keys = row
    columns = tuple(zip(names or (), oids or (), mods or (), types or (), strict=True))
    return TableShape(int(oid), schema, name, columns, tuple(keys or ()))


# ---------------------------------------------------------------------------------------------------------
# Turning chunk rows into events (at the high mark, or in the expander)


def chunk_from_row(row: Any) -> tuple[BackfillChunk, TableShape]:
    """A ``backfill_chunks`` row as the expander sees it."""
    columns = tuple((str(c[0]), int(c[1]), -1, "") for c in json.loads(row["columns"]))
    key_positions = list(row["key_columns"])
    shape = TableShape(0, "", row["table_name"], columns, tuple(columns[p][0] for p in key_positions))
    chunk = BackfillChunk(
        backfill_id=row["backfill_id"], seq=row["seq"], rule=row["rule"], workflow=row["workflow"],
        priority=row["priority"], gated=False, key_limit=None, ordered=False, table_name=row["table_name"],
        columns=row["columns"], key_positions=key_positions, lsn=parse_lsn(row["lsn"]),
        read_at=row["read_at"], last_key=[], rows_read=0, rows_dropped=0, final=False, data=row["data"],
        rows=row["rows"],
    )  # fmt: skip
    return chunk, shape


# ---------------------------------------------------------------------------------------------------------
# The running ingest's side


@dataclass(slots=True)
class Plan:
    """An open row of ``backfills``."""

    id: int
    rule: str
    table_name: str
    where_sql: str | None
    last_key: list[str] | None
    chunks: int


@dataclass(slots=True)
class Window:
    """One chunk between its watermarks: the keys of the live changes seen there, and the chunk's rows."""

    token: str
    plan: Plan
    rule: CompiledRule
    shape: TableShape
    info: RelationInfo
    ops: frozenset[str]  # live operations that supersede a chunk row
    seq: int
    positions: dict[int, list[int]] = field(default_factory=dict)  # relation OID -> key positions
    seen: set[Key] = field(default_factory=set)
    data: bytes = b""
    rows: int = 0
    last_key: list[str] | None = None
    final: bool = False
    read_at: datetime | None = None
    durable: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


@dataclass(slots=True)
class BackfillClock:
    """Where the backfill task's time went (wall clock, summed over chunks): for the benchmark."""

    low_mark_s: float = 0.0  # SHARE lock, snapshot export and import, the low mark
    copy_s: float = 0.0  # COPY of the chunk into memory
    high_mark_s: float = 0.0
    waiting_s: float = 0.0  # for chunks in flight to become durable (reader and writer behind)


class Backfills:
    """Carries out recorded backfills inside a running ingest, and gives the reader its watermark hooks."""

    def __init__(self, ingest: Stream, *, chunk_rows: int | None = None) -> None:
        self.ingest = ingest
        config = ingest.config
        self.chunk_rows = chunk_rows or (config.ingest.backfill_chunk_rows if config else BACKFILL_CHUNK_ROWS)
        self.poll_interval = BACKFILL_POLL_S
        self.wake = asyncio.Event()
        self.windows: dict[str, Window] = {}  # token -> window, from before its low mark to its high mark
        self.watched: dict[int, list[Window]] = {}  # relation OID -> windows open in the stream
        self.session = secrets.token_hex(4)
        self.rows_read = 0
        self._pending: dict[tuple[int, int], Window] = {}  # chunks handed to the writer, by (id, seq)
        self.clock = BackfillClock()

    @property
    def store(self) -> StateStore:
        return self.ingest.store

    def reset(self) -> None:
        """A new replication session: marks written for the old one are ignored."""
        self.windows.clear()
        self.watched.clear()
        self._pending.clear()
        self.session = secrets.token_hex(4)

    # -- reader hooks (synchronous, in the reader's loop) --------------------------------------------------

    def note(self, change: Change) -> None:
        """A live change of a table with an open window: remember its key (new and old)."""
        rel = change.relation
        assert rel is not None
        for window in self.watched.get(rel.oid, ()):
            if change.op not in window.ops:
                continue
            positions = window.positions.get(rel.oid)
            if positions is None:
                positions = window.positions[rel.oid] = [rel.positions[k] for k in window.shape.key_columns]
            for values in (change.new, change.old):
                if values is not None:
                    window.seen.add(tuple(values[p] for p in positions))  # type: ignore[misc]

    def note_raw(self, payload: bytes, decoder: po.Decoder, relations: dict[int, RelationInfo]) -> None:
        """The same for a change the reader keeps raw (compact storage): decode just to read its key."""
        msg = decoder.decode(payload)
        if isinstance(msg, po.Insert):
            change = Change("insert", 0, 0, "", 0, _EPOCH, relations[msg.relation_oid], 0, msg.new)
        elif isinstance(msg, po.Update):
            change = Change("update", 0, 0, "", 0, _EPOCH, relations[msg.relation_oid], 0, msg.new, msg.old)
        elif isinstance(msg, po.Delete):
            change = Change("delete", 0, 0, "", 0, _EPOCH, relations[msg.relation_oid], 0, None, msg.old)
        else:
            return
        self.note(change)

    def mark(self, msg: po.Message) -> BackfillChunk | None:
        """A watermark: the low one opens its window, the high one closes it and returns the chunk to
        commit.  Marks of another session (before a restart) or another process are ignored."""
        token, _, kind = msg.content.decode(errors="replace").rpartition(":")
        window = self.windows.get(token)
        if window is None:
            return None
        if kind == "low":
            self.watched.setdefault(window.shape.oid, []).append(window)
            return None
        open_ = self.watched.get(window.shape.oid, [])
        if window in open_:
            open_.remove(window)
        del self.windows[token]
        try:
            return self._chunk(window, msg.lsn)
        except ListenerError as exc:  # the rule cannot be evaluated for a row: that backfill fails
            window.error = exc.message
            window.durable.set()
            return None

    def _chunk(self, window: Window, lsn: int) -> BackfillChunk:
        plan, rule, data = window.plan, window.rule, window.data
        rows, dropped = window.rows, 0
        if window.seen and data:
            kept = bytearray()
            positions = window.shape.key_positions
            for line in data.split(b"\n"):
                if not line:
                    continue
                if line_key(line, positions) in window.seen:
                    dropped += 1
                else:
                    kept += line
                    kept += b"\n"
            data, rows = bytes(kept), rows - dropped
        assert window.read_at is not None
        chunk = BackfillChunk(
            backfill_id=plan.id, seq=window.seq, rule=rule.name, workflow=rule.workflow,
            priority=rule.priority, gated=rule.gated, key_limit=rule.key_limit, ordered=rule.ordered,
            table_name=rule.qualified_table,
            columns=json.dumps([[c[0], c[1]] for c in window.shape.columns]),
            key_positions=window.shape.key_positions, lsn=lsn, read_at=window.read_at,
            last_key=window.last_key, rows_read=window.rows, rows_dropped=dropped, final=window.final,
            data=data, rows=rows,
        )  # fmt: skip
        if rule.needs_values:  # in stream order, now: when:, payload:, flow-control keys
            chunk.events = chunk_events(
                data, window.info, chunk.key_positions, rule, rule.name, plan.id, window.read_at
            )
            chunk.data, chunk.rows = b"", 0
        self._pending[(plan.id, window.seq)] = window
        return chunk

    def committed(self, chunks: Sequence[BackfillChunk]) -> None:
        """The writer committed these chunks (and their progress)."""
        for chunk in chunks:
            window = self._pending.pop((chunk.backfill_id, chunk.seq), None)
            if window is not None:
                self.rows_read += chunk.rows_read
                window.durable.set()

    # -- the task ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Carry out open backfills one after the other, oldest first; wait for new ones (NOTIFY on the
        control channel, and a poll).  Ends only by raising."""
        await self._start_snapshots()
        while True:
            self.wake.clear()
            plan = await self._next()
            if plan is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self.wake.wait()
                continue
            try:
                await self._carry_out(plan)
            except BackfillFailed as exc:
                logger.error("backfill %d failed: %s", plan.id, exc.message)
                await self._fail(plan.id, exc.message)
            except Exception as exc:
                if not is_transient(exc):
                    logger.exception("backfill %d failed", plan.id)
                    await self._fail(plan.id, f"{type(exc).__name__}: {exc}")
                    continue
                logger.warning("backfill %d interrupted (%s); trying again", plan.id, exc)
                await asyncio.sleep(BACKFILL_RETRY_S)

    async def _start_snapshots(self) -> None:
        """Rules with ``snapshot: true`` get one backfill, the first time this slot's ingest sees them."""
        config = self.ingest.config
        if config is None:
            return
        for rule in config.rules:
            if rule.table is None or not getattr(rule, "snapshot", False):
                continue
            async with self.store.pool.acquire() as conn:
                exists = await conn.fetchval(queries.get("snapshot_recorded"), self.ingest.slot, rule.name)
            if exists:
                continue
            catalog = await connect_async(self.ingest.source_dsn)
            try:
                shape = table_shape(await (await catalog.execute(SHAPE, [rule.table])).fetchone())
            finally:
                await catalog.close()
            if shape is None or not shape.key_columns:
                logger.error(
                    "rule %s: snapshot: true needs %s to exist and have a primary key; no snapshot taken",
                    rule.name,
                    rule.table,
                )
                continue
            await self.store.pool.execute(
                queries.get("record_snapshot"),
                self.ingest.slot,
                rule.name,
                rule.table,
                list(shape.key_columns),
            )
            logger.warning("rule %s: initial snapshot recorded (snapshot: true)", rule.name)

    async def _next(self) -> Plan | None:
        row = await self.store.pool.fetchrow(queries.get("next_backfill"), self.ingest.slot)
        return Plan(**dict(row)) if row is not None else None

    async def _fail(self, backfill_id: int, error: str) -> None:
        await self.store.pool.execute(queries.get("fail_backfill"), backfill_id, error)

    async def _status(self, backfill_id: int) -> str:
        return str(await self.store.pool.fetchval(queries.get("backfill_status"), backfill_id))

    async def _carry_out(self, plan: Plan) -> None:
        rule = next((r for r in self.ingest.rules.rules if r.name == plan.rule and r.source == "table"), None)
        if rule is None:
            raise BackfillFailed(
                f"this listener runs no table rule {plan.rule!r}; restart `listener run` with the "
                "configuration that has it, then backfill again"
            )
        # The chunks are read with asyncpg: its COPY OUT hands over buffers, where psycopg's async COPY
        # yields row by row (about 4x slower in Python for a million rows).  It runs with the stream's
        # output settings, so COPY writes the same text for each value as pgoutput does.
        conn = await asyncpg.connect(**asyncpg_params(self.ingest.source_dsn))
        try:
            marker = await connect_async(self.ingest.source_dsn)
            try:
                await self._read_chunks(plan, rule, marker, conn)
            finally:  # not `async with`: its exit rolls back first, and a cancelled session cuts that short
                await marker.close()
        finally:
            await conn.close()
        logger.info("backfill %d: %s", plan.id, await self._status(plan.id))

    async def _read_chunks(
        self, plan: Plan, rule: CompiledRule, marker: psycopg.AsyncConnection[Any], conn: asyncpg.Connection
    ) -> None:
        shape = table_shape(await (await marker.execute(SHAPE, [rule.qualified_table])).fetchone())
        if shape is None or not shape.key_columns:
            raise BackfillFailed(f"table {rule.qualified_table} is gone, or has no primary key any more")
        where = await self._checked_where(plan, rule, marker)
        types: TypeRegistry = self.ingest.types
        unknown = types.unknown(c[1] for c in shape.columns)
        if unknown:
            await self.ingest.resolve_types(unknown)
        info = relation_info(shape.relation(), types)
        flush = marker.info.server_version >= 170000  # pg_logical_emit_message(..., flush) is 17+
        # The walsender sends only flushed WAL: without the flush (17+) the mark would wait for the WAL
        # writer (wal_writer_delay), or for some other commit.
        await self.store.pool.execute(queries.get("start_backfill"), plan.id)
        ops = frozenset(rule.operations & {"insert", "update"}) | {"delete"}
        last_key, seq = plan.last_key, plan.chunks
        in_flight: deque[Window] = deque()
        logger.info("backfill %d: reading %s for rule %s", plan.id, rule.qualified_table, rule.name)
        clock = self.clock
        checked = time.monotonic()
        while True:
            # cancelled?  Looked at when the control channel spoke, and at least every BACKFILL_CANCEL_CHECK_S
            if self.wake.is_set() or time.monotonic() - checked >= BACKFILL_CANCEL_CHECK_S:
                self.wake.clear()
                checked = time.monotonic()
                if await self._status(plan.id) not in OPEN:
                    break
            began = time.perf_counter()
            while len(in_flight) >= BACKFILL_IN_FLIGHT:
                await self._settle(in_flight.popleft())
            marked = time.perf_counter()
            clock.waiting_s += marked - began
            seq += 1
            token = f"{plan.id}:{seq}:{self.session}"
            window = Window(token, plan, rule, shape, info, ops, seq)
            self.windows[token] = window
            query = self._query(shape, where, last_key).as_string(marker)
            await self._low_mark(marker, conn, shape, f"{token}:low")
            copied = time.perf_counter()
            clock.low_mark_s += copied - marked
            window.read_at = datetime.now(UTC)
            data = bytearray()

            async def sink(block: bytes, data: bytearray = data) -> None:
                data.extend(block)

            # the SHARE lock goes while the chunk is read: the snapshot is imported
            await asyncio.gather(marker.execute("COMMIT"), conn.copy_from_query(query, output=sink))
            window.rows = rows = data.count(b"\n")  # a newline inside a value is escaped
            if rows:
                last = line_key(_last_line(data), shape.key_positions)
                last_key = [b.decode() if b is not None else "" for b in last]
            window.data, window.last_key = bytes(data), last_key
            window.final = rows < self.chunk_rows
            high = time.perf_counter()
            clock.copy_s += high - copied
            await conn.execute(_high_mark(f"{token}:high", flush=flush))
            clock.high_mark_s += time.perf_counter() - high
            in_flight.append(window)
            if window.final:
                break
        began = time.perf_counter()
        while in_flight:
            await self._settle(in_flight.popleft())
        clock.waiting_s += time.perf_counter() - began

    async def _low_mark(
        self,
        marker: psycopg.AsyncConnection[Any],
        conn: asyncpg.Connection,
        shape: TableShape,
        content: str,
    ) -> None:
        """Write the low mark, and open on ``conn`` a transaction whose snapshot sees exactly the table's
        transactions that the stream delivers before the mark.

        A transaction's commit record is written before it becomes visible to new snapshots (then it waits
        for the WAL flush), so a snapshot taken just after the mark may still miss one whose commit lies
        before it: that change would be delivered before the window opened, and the chunk would hold the
        row's older state.  So the mark and the snapshot are taken under a SHARE lock on the table, which
        waits for the table's writers to end and holds new ones back -- only until ``conn`` has imported
        the snapshot (a millisecond or two), never while the chunk is read."""
        delay = BACKFILL_LOCK_RETRY_MIN_S
        lock = sql.SQL(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL lock_timeout = {}; LOCK TABLE {} IN SHARE MODE"
        ).format(sql.Literal(BACKFILL_LOCK_TIMEOUT_MS), sql.Identifier(shape.schema, shape.name))
        while True:
            try:
                await marker.execute(lock)  # one round trip: the lock is held as briefly as it can be
                break
            except psycopg.errors.LockNotAvailable:
                await marker.execute("ROLLBACK")
                logger.info("backfill: %s is busy; trying again in %.2fs", shape.name, delay)
                await asyncio.sleep(delay)
                delay = min(BACKFILL_LOCK_RETRY_MAX_S, delay * 2)
        try:
            # the snapshot is the statement's (taken first); the mark is not flushed: the high mark's
            # flush carries it to the walsender
            cur = await marker.execute("SELECT pg_export_snapshot(), " + _EMIT.removeprefix("SELECT "),
                                       [PREFIX, content])  # fmt: skip
            row = await cur.fetchone()
            assert row is not None
            # the snapshot's id is the server's own ([0-9A-F-]), safe to write into the statement
            await conn.execute(f"BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{row[0]}'")
        except BaseException:
            await asyncio.shield(marker.execute("ROLLBACK"))
            raise
        # the caller ends the marker's transaction (releasing the lock) while it starts reading

    async def _settle(self, window: Window) -> None:
        await window.durable.wait()
        if window.error is not None:
            raise BackfillFailed(window.error)

    async def _checked_where(
        self, plan: Plan, rule: CompiledRule, catalog: psycopg.AsyncConnection[Any]
    ) -> str | None:
        """The request's ``where_sql``, checked again as ``listener backfill`` checked it: the row in
        ``backfills`` may have been written by anyone with access to the state schema, and is never run
        verbatim."""
        if not plan.where_sql:
            return None
        tables, collation = await read_tables_async(catalog, [rule.qualified_table])
        table = tables.get(rule.qualified_table)
        if table is None:
            raise BackfillFailed(f"table {rule.qualified_table} is gone")
        try:
            return check_where(plan.where_sql, table, collation)
        except ListenerError as exc:
            raise BackfillFailed(f"refused, nothing read: {exc.message} ({exc.hint})") from None

    def _query(self, shape: TableShape, where: str | None, last_key: list[str] | None) -> sql.Composed:
        conditions: list[sql.Composable] = []
        if where:
            conditions.append(sql.SQL("({})").format(sql.SQL(where)))
        keys = sql.SQL(", ").join(sql.Identifier(k) for k in shape.key_columns)
        if last_key:
            types = {c[0]: c[3] for c in shape.columns}
            values = sql.SQL(", ").join(
                sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(types[k]))
                for k, v in zip(shape.key_columns, last_key, strict=True)
            )
            conditions.append(sql.SQL("({}) > ({})").format(keys, values))
        return sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
            sql.SQL(", ").join(sql.Identifier(c[0]) for c in shape.columns),
            sql.Identifier(shape.schema, shape.name),
            sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true"),
            keys,
            sql.Literal(self.chunk_rows),
        )


_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
