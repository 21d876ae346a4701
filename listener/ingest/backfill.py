"""Snapshot backfill: give a rule the rows that already exist, while the live stream goes on.

The running task (this module), the watermarks on the reader's side (:mod:`.backfill_marks`), the table
as the task reads it (:mod:`.backfill_table`).

`listener backfill --rule R [--where SQL]` checks the request and records it (a row of ``backfills``, see
sql/0005_backfill.sql; :mod:`listener.ops.backfill_requests`), then wakes the running ingest through the
control channel, like a rewind.  The ingest's backfill task (:class:`Backfills`) reads the table in
primary-key order, ``chunk_rows`` rows at a time (keyset pagination on the whole primary key), with the
watermark algorithm of DBLog and Debezium's incremental snapshots:

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
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
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
from listener.ingest.backfill_marks import EMIT, OPEN, PREFIX, Plan, Watermarks, Window, high_mark
from listener.ingest.backfill_table import SHAPE, TableShape, check_where, table_shape
from listener.logs import fields
from listener.pg.conninfo import asyncpg_params, connect_async
from listener.pg.copytext import line_key
from listener.pg.relations import relation_info
from listener.pg.types import TypeRegistry
from listener.queue import queries
from listener.queue.store import StateStore
from listener.rules.catalog import read_tables_async

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


def _last_line(data: bytes | bytearray) -> bytes:
    end = len(data) - 1  # data ends with a newline
    return bytes(data[data.rfind(b"\n", 0, end) + 1 : end])


@dataclass(slots=True)
class BackfillClock:
    """Where the backfill task's time went (wall clock, summed over chunks): for the benchmark."""

    low_mark_s: float = 0.0  # SHARE lock, snapshot export and import, the low mark
    copy_s: float = 0.0  # COPY of the chunk into memory
    high_mark_s: float = 0.0
    waiting_s: float = 0.0  # for chunks in flight to become durable (reader and writer behind)


class Backfills(Watermarks):
    """Carries out recorded backfills inside a running ingest; the reader's watermark hooks are its
    :class:`Watermarks` side."""

    def __init__(self, ingest: Stream, *, chunk_rows: int | None = None) -> None:
        super().__init__()
        self.ingest = ingest
        config = ingest.config
        self.chunk_rows = chunk_rows or (config.ingest.backfill_chunk_rows if config else BACKFILL_CHUNK_ROWS)
        self.poll_interval = BACKFILL_POLL_S
        self.wake = asyncio.Event()
        self.clock = BackfillClock()

    @property
    def store(self) -> StateStore:
        return self.ingest.store

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
            logger.info(
                "rule %s: initial snapshot recorded (snapshot: true)", rule.name, extra=fields(rule=rule.name)
            )

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
            await conn.execute(high_mark(f"{token}:high", flush=flush))
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
            cur = await marker.execute("SELECT pg_export_snapshot(), " + EMIT.removeprefix("SELECT "),
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
