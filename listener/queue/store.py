"""The state database as the ingest writes it: the ``StateStore`` (an asyncpg pool) writes a batch's
events, chunks, journal rows, backfill progress and checkpoint in one transaction (invariant 1), and keeps
the retention history, the rewinds' and reload requests' rows and the compact chunks' expansion.  Also
the names of the NOTIFY channels on the state schema.  All SQL runs with ``search_path`` set to the state
schema; its text is in sql/queries (listener.queue.queries).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import asyncpg

from listener.defaults import PAYLOAD_PIECE_CHARS
from listener.errors import FENCED, Deposed, from_driver, sqlstate
from listener.pg.conninfo import SESSION_SETTINGS, asyncpg_params
from listener.pg.lsn import format_lsn, parse_lsn
from listener.queue import queries
from listener.queue.batches import BackfillChunk, EventBatch, RawChunk, Retention, RewindPlan
from listener.queue.handoff import Offer


def notify_channel(schema: str) -> str:
    """The NOTIFY channel that wakes workers after an ingest commit.  It carries no data (invariant 7)."""
    return f"{schema}_events"


ControlKind = Literal["rewind", "backfill", "reload"]


def control_channel(schema: str, kind: ControlKind) -> str:
    """The NOTIFY channel that wakes the running service when a request of ``kind`` is recorded (a row of
    ``rewinds``, ``backfills`` or ``reload_requests``).  Each kind has its own channel, so one never sets
    off another; it carries no data (invariant 7): a wake-up without a request row does nothing."""
    return f"{schema}_{kind}"


# The state schema's statements (sql/queries/*.sql), by the names they go by here.
_INSERT_EVENTS = queries.get("insert_events")
_INSERT_KEYED_EVENTS = queries.query("insert_keyed_events").asyncpg
_WAKE = queries.query("wake").asyncpg
_FILL_PAYLOAD = queries.get("fill_payload")
_CREATE_LARGE_OBJECT = queries.get("create_large_object")
_PUT_LARGE_OBJECT = queries.get("put_large_object")
_UNLINK_LARGE_OBJECT = queries.get("unlink_large_object")
_INSERT_CHUNK = queries.get("insert_chunk")
_NEXT_CHUNK = queries.get("next_chunk")
_DELETE_CHUNK = queries.get("delete_chunk")
_RUNS_AHEAD = queries.get("runs_ahead")
_RUNS_WAITING = queries.get("runs_waiting")
_INSERT_BACKFILL_CHUNK = queries.get("insert_backfill_chunk")
_ADVANCE_BACKFILL = queries.get("advance_backfill")
_NEXT_BACKFILL_CHUNK = queries.get("next_backfill_chunk")
_DELETE_BACKFILL_CHUNK = queries.get("delete_backfill_chunk")
_READ_CHECKPOINT = queries.get("read_checkpoint")
_UPSERT_CHECKPOINT = queries.get("upsert_checkpoint")
_RECORD_HISTORY = queries.get("record_history")
_RETAIN_POSITION = queries.get("retain_position")
_SEED_HISTORY = queries.get("seed_history")
_PRUNE_HISTORY = queries.get("prune_history")
_INSERT_JOURNAL = queries.get("insert_journal")
_PRUNE_JOURNAL = queries.get("prune_journal")
_START_JOURNAL_HORIZON = queries.get("start_journal_horizon")
_DROP_JOURNAL_HORIZON = queries.get("drop_journal_horizon")
_ADVANCE_JOURNAL_HORIZON = queries.get("advance_journal_horizon")
_NEXT_REWIND = queries.get("next_rewind")
_START_REWIND = queries.get("start_rewind")
_FAIL_REWIND = queries.query("fail_rewind")
_ADVANCE_REWIND = queries.get("advance_rewind")
_PENDING_RELOADS = queries.get("pending_reloads")
_SCHEDULE_STATES = queries.get("schedule_states")
_ADVANCE_SCHEDULES = queries.get("advance_schedules")
_SCHEDULE_GATE = queries.get("schedule_gate")
_INSERT_WEBHOOK_REQUESTS = queries.get("insert_webhook_requests")
_PRUNE_WEBHOOK_REQUESTS = queries.get("prune_webhook_requests")
_FINISHED_WORKFLOWS = queries.get("finished_workflows")
_PRUNABLE_RUNS = queries.get("prunable_runs")
_PRUNE_EVENTS = queries.get("prune_events")
_ANSWER_RELOADS = queries.get("answer_reloads")
_QUEUE_POSITIONS = queries.get("queue_positions")
_ADVANCE_QUEUE_POSITIONS = queries.get("advance_queue_positions")
_PARK_QUEUE_MESSAGES = queries.get("park_queue_messages")
_RETRY_PARKED = queries.get("retry_parked")


def int8_array(position: tuple[int, ...]) -> str:
    """A position as int8[]'s text, ``{1700000000000,3}``."""
    return "{" + ",".join(map(str, position)) + "}"


_FORGET_RELOADS = queries.get("forget_reloads")


# The event is inserted with this stand-in payload, then filled from the large object (numbered here).
_PAYLOAD_STAND_IN = '{{"listener_payload_pieces":{}}}'


async def _send_in_pieces(conn: Any, oid: int, text: str) -> None:
    """Write ``text`` (UTF-8) into the large object ``oid``, PAYLOAD_PIECE_CHARS characters at a time."""
    offset = 0
    for start in range(0, len(text), PAYLOAD_PIECE_CHARS):
        piece = text[start : start + PAYLOAD_PIECE_CHARS].encode()
        await conn.execute(_PUT_LARGE_OBJECT, oid, offset, piece)
        offset += len(piece)


def _events_only(batch: EventBatch) -> bool:
    """Whether a batch holds nothing but events and its checkpoint: no compact or backfill chunks, journal
    rows, rewind, history row or payload to send in pieces (write_batch's one-statement case)."""
    return not (
        batch.chunks
        or batch.backfill
        or batch.journal
        or batch.rewind is not None
        or batch.retention is not None
        or batch.ticks
        or batch.requests
        or batch.positions
        or batch.parked
        or _has_huge_payload(batch)
    )


def _has_huge_payload(batch: EventBatch) -> bool:
    """Whether a payload of the batch is long enough to go to the server in pieces (PAYLOAD_PIECE_CHARS)."""
    return batch.nbytes > PAYLOAD_PIECE_CHARS and max(map(len, batch.payload)) > PAYLOAD_PIECE_CHARS


async def keep_session(conn: asyncpg.Connection) -> None:
    """A pool's ``reset`` that keeps the session: for connections that only ever run listener's own
    statements, which leave no session state behind (no SET, LISTEN, cursor or session lock).  asyncpg's
    default reset costs a round trip per release, on the path from a commit to the next."""


class StateStore:
    """The state database as ingest sees it (asyncpg: binary protocol, prepared statements).

    Two pools: ``writer`` for the batches (events, runs, the checkpoint), which never leave session state
    and so skip the reset between uses; ``pool`` for the rest (some LISTEN), reset as asyncpg does."""

    def __init__(
        self, pool: asyncpg.Pool, writer: asyncpg.Pool, *, schema: str, slot: str, dsn: str = ""
    ) -> None:
        self.pool = pool
        self.writer = writer
        self.schema = schema
        self.slot = slot
        self.dsn = dsn
        self.channel = notify_channel(schema)
        # The leader epoch the checkpoint writes carry (listener.ingest.leadership): None writes unfenced.
        self.epoch: int | None = None

    @classmethod
    async def connect(
        cls, dsn: str, *, schema: str, slot: str, max_size: int = 4, writers: int = 2
    ) -> StateStore:
        """Pools of ``max_size`` connections for everything, and of ``writers`` for ``write_batch`` (kept
        sessions: no reset round trip on release): the ingest's writer, and those of the webhooks."""
        pools: list[asyncpg.Pool] = []
        try:
            params = asyncpg_params(dsn, {**SESSION_SETTINGS, "search_path": schema})
            for reset, size in ((None, max_size), (keep_session, writers)):
                pool = await asyncpg.create_pool(min_size=1, max_size=size, reset=reset, **params)
                assert pool is not None
                pools.append(pool)
        except (OSError, asyncpg.PostgresError) as exc:
            for pool in pools:
                await pool.close()
            raise from_driver(
                exc, "cannot connect to the state database", hint="check --state-dsn / LISTENER_STATE_DSN"
            ) from exc
        return cls(pools[0], pools[1], schema=schema, slot=slot, dsn=dsn)

    async def close(self) -> None:
        await self.writer.close()
        await self.pool.close()

    async def read_checkpoint(self) -> int | None:
        value = await self.pool.fetchval(_READ_CHECKPOINT, self.slot)
        return parse_lsn(value) if value is not None else None

    async def write_batch(self, batch: EventBatch, offer: Offer | None = None) -> int:
        """Insert the batch's events (duplicates skipped) and chunks, and move the checkpoint, in one
        transaction.  With an ``offer``, up to its slots of the new runs are committed as claimed by its
        worker, and ``batch.handed`` holds them (listener.queue.handoff).

        Returns the number of events actually inserted, counting the changes of new chunks.  Only after
        this returns may the flush LSN sent to the server move to ``batch.checkpoint`` (invariant 1), or,
        with a retention window, to ``batch.confirm``, which this sets when ``batch.retention`` asks for a
        history row.
        """
        try:
            return await self._write_batch(batch, offer)
        except asyncpg.PostgresError as exc:
            if sqlstate(exc) == FENCED:
                raise Deposed(str(exc)) from exc
            raise

    async def _write_batch(self, batch: EventBatch, offer: Offer | None) -> int:
        if _events_only(batch):
            # the common case (a few small transactions' events and their position, or the events of a
            # source that keeps no position, e.g. webhooks): one statement, which is its own transaction
            # -- no BEGIN and COMMIT round trips
            if batch.checkpoint is None and not batch.payload:
                return 0
            async with self.writer.acquire() as conn:
                checkpoint = (
                    (self.slot, format_lsn(batch.checkpoint), self.epoch)
                    if batch.checkpoint is not None
                    else None
                )
                if batch.payload:
                    return (await self._insert_events(conn, batch, offer, checkpoint))[0]
                assert batch.checkpoint is not None
                await conn.execute(_UPSERT_CHECKPOINT, self.slot, format_lsn(batch.checkpoint), self.epoch)
                return 0
        async with self.writer.acquire() as conn, conn.transaction():
            inserted, rewound, reruns = await self._insert_events(conn, batch, offer)
            for chunk in batch.chunks:
                stored = await conn.fetchval(
                    _INSERT_CHUNK,
                    format_lsn(chunk.commit_lsn),
                    chunk.relation_oid,
                    chunk.first_ordinal,
                    chunk.changes,
                    chunk.xid,
                    chunk.commit_time,
                    chunk.table_name,
                    chunk.protocol,
                    chunk.relation,
                    chunk.rules,
                    bytes(chunk.data),
                )
                inserted += stored or 0
            for part in batch.backfill:
                inserted += await self._write_backfill_chunk(conn, part)
            rewind = batch.rewind
            if rewind is not None and (
                batch.rewind_position is not None or batch.rewind_done or rewound or reruns
            ):
                position = format_lsn(batch.rewind_position) if batch.rewind_position is not None else None
                await conn.execute(_ADVANCE_REWIND, rewind.id, position, rewound, reruns, batch.rewind_done)
            if batch.journal:
                await self._insert_journal(conn, batch.journal)
            if batch.requests:
                await conn.execute(_INSERT_WEBHOOK_REQUESTS, *map(list, zip(*batch.requests, strict=True)))
            if batch.ticks:
                await conn.execute(_ADVANCE_SCHEDULES, list(batch.ticks), list(batch.ticks.values()))
            if batch.parked:
                await conn.execute(_PARK_QUEUE_MESSAGES, *map(list, zip(*batch.parked, strict=True)))
            if batch.positions:
                queues, parts = zip(*batch.positions, strict=True)
                positions = [int8_array(p) for p in batch.positions.values()]
                await conn.execute(_ADVANCE_QUEUE_POSITIONS, list(queues), list(parts), positions)
            if batch.checkpoint is not None:
                await conn.execute(_UPSERT_CHECKPOINT, self.slot, format_lsn(batch.checkpoint), self.epoch)
                if batch.retention is not None:
                    batch.confirm = await self._retain(
                        conn, batch.checkpoint, batch.checkpoint_time, batch.retention
                    )
        return inserted

    async def insert_events(self, batch: EventBatch) -> tuple[int, int, int]:
        """Insert the events of a batch made outside the ingest (`listener replay`), in one transaction:
        (events inserted, events in a rewind's range, runs of a rewind's --rerun)."""
        async with self.writer.acquire() as conn, conn.transaction():
            return await self._insert_events(conn, batch)

    async def retry_parked(
        self, queue: str, batch: EventBatch, outcomes: Sequence[tuple[str, tuple[int, ...], str | None]]
    ) -> int:
        """Insert the events of parked messages of ``queue`` read again (`listener replay --queue`) and, in
        the same transaction, record each one's outcome, (part, position, None) when it read this time
        (retried now), else (part, position, the reason it still fails with): events inserted.  A message
        retried meanwhile is left as it is (its events' keys exist: they insert nothing)."""
        async with self.writer.acquire() as conn, conn.transaction():
            inserted = (await self._insert_events(conn, batch))[0]
            if outcomes:
                parts, positions, reasons = zip(*outcomes, strict=True)
                await conn.execute(
                    _RETRY_PARKED, queue, list(parts), [int8_array(p) for p in positions], list(reasons)
                )
        return inserted

    async def _insert_events(
        self,
        conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        batch: EventBatch,
        offer: Offer | None = None,
        checkpoint: tuple[str, str, int | None] | None = None,
    ) -> tuple[int, int, int]:
        """Insert the batch's events and their runs, and wake the workers if they have runs to claim:
        (events inserted, events re-read by a rewind, runs made for a rewind's --rerun).  With an
        ``offer``, the runs handed to its worker go to ``batch.handed`` (a rewind's batch hands none);
        with a ``checkpoint`` (slot, LSN, leader epoch), the statement also moves it."""
        batch.handed, batch.left_pending = [], False
        if not batch.payload:
            return 0, 0, 0
        inserted = rewound = reruns = 0
        rewind = batch.rewind
        groups = list(zip(*batch.groups, strict=True))
        payloads = batch.payload
        huge: dict[int, tuple[int, str]] = {}  # index -> large object, stand-in: payloads sent in pieces
        if _has_huge_payload(batch):
            payloads = list(payloads)
            for index, payload in enumerate(batch.payload):
                if len(payload) > PAYLOAD_PIECE_CHARS:
                    oid = await conn.fetchval(_CREATE_LARGE_OBJECT)
                    await _send_in_pieces(conn, oid, payload)
                    payloads[index] = _PAYLOAD_STAND_IN.format(oid)
                    huge[index] = oid, payloads[index]
        columns = (batch.group, batch.lsn, batch.ordinal, payloads, batch.key, *groups)
        rerun: tuple[str | None, int | None, str | None] = (None, None, None)
        if rewind is not None:
            rerun = (rewind.rerun_rule, rewind.generation, format_lsn(rewind.up_to))
        handoff: tuple[int | None, str | None, float | None] = (None, None, None)
        if offer is not None and rewind is None:
            handoff = (offer.slots, offer.worker_id, offer.lease_seconds)
        row = await conn.fetchrow(
            _INSERT_EVENTS, *columns, *rerun, *handoff, self.channel, *(checkpoint or (None, None, None))
        )
        assert row is not None
        inserted, rewound, reruns, handed = row["inserted"], row["rewound"], row["reruns"], row["handed"]
        for index, (oid, stand_in) in huge.items():  # (an event inserted before keeps its payload)
            await conn.execute(_FILL_PAYLOAD, batch.event_key(index), oid, stand_in)
            await conn.execute(_UNLINK_LARGE_OBJECT, oid)
        if handed:
            batch.handed = [batch.handed_run(n - 1) for n in handed]
        # the statement woke the workers if runs were left to claim (the handed ones have their worker)
        batch.left_pending = bool(reruns or inserted > len(batch.handed))
        return int(inserted), int(rewound), int(reruns)

    async def _retain(
        self, conn: Any, checkpoint: int, commit_time: datetime | None, retention: Retention
    ) -> int | None:
        """Record the checkpoint in the history and return the position the slot may confirm."""
        await conn.execute(_RECORD_HISTORY, self.slot, format_lsn(checkpoint), commit_time)
        floor = None
        if retention.size_bytes is not None:
            floor = format_lsn(max(0, checkpoint - retention.size_bytes))
        value = await conn.fetchval(_RETAIN_POSITION, self.slot, retention.duration_s, floor)
        if value is None:
            return None
        await conn.execute(_PRUNE_HISTORY, self.slot, value)
        return parse_lsn(value)

    async def seed_history(self, confirmed: int) -> None:
        """Start the history at the slot's confirmed position if it has no row at or below it."""
        await self.pool.execute(_SEED_HISTORY, self.slot, format_lsn(confirmed))

    # -- the change journal -----------------------------------------------------------------------------

    @staticmethod
    async def _insert_journal(conn: Any, rows: list[RawChunk]) -> None:
        await conn.execute(
            _INSERT_JOURNAL,
            [format_lsn(r.commit_lsn) for r in rows],
            [r.relation_oid for r in rows],
            [r.first_ordinal for r in rows],
            [r.changes for r in rows],
            [r.xid for r in rows],
            [r.commit_time for r in rows],
            [r.table_name for r in rows],
            [r.protocol for r in rows],
            [r.relation for r in rows],
            [bytes(r.data) for r in rows],
        )

    async def start_journal(self, *, enabled: bool) -> None:
        """At the start of a session: with the journal on, it is complete from now on (unless recorded
        earlier); with it off, it has a gap from now on, so no horizon (replay refuses)."""
        if enabled:
            await self.pool.execute(_START_JOURNAL_HORIZON, self.slot)
        else:
            await self.pool.execute(_DROP_JOURNAL_HORIZON, self.slot)

    async def prune_journal(self, keep_s: float, *, batch_rows: int) -> int:
        """Delete journal rows committed more than ``keep_s`` ago, ``batch_rows`` per transaction, and move
        the horizon up to that time first.  Returns the rows deleted."""
        cutoff = await self.pool.fetchval(_ADVANCE_JOURNAL_HORIZON, self.slot, keep_s)
        if cutoff is None:  # no horizon: the journal was switched off meanwhile
            return 0
        total = 0
        while True:
            status = await self.pool.execute(_PRUNE_JOURNAL, cutoff, batch_rows)
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < batch_rows:
                return total

    # -- the retention of finished runs (`runs: keep:`) -----------------------------------------------------

    async def finished_workflows(self) -> list[str]:
        """The workflows that have done or cancelled runs."""
        return [str(row[0]) for row in await self.pool.fetch(_FINISHED_WORKFLOWS)]

    async def prune_runs(
        self, workflow: str, keep_s: float, after: tuple[datetime, str], *, batch_rows: int
    ) -> tuple[int, int, tuple[datetime, str] | None]:
        """One transaction: lock up to ``batch_rows`` of ``workflow``'s done or cancelled runs finished
        more than ``keep_s`` ago, after ``after`` (finished_at, id), and delete the events of those whose
        every run is prunable, with their runs, steps and attempts (sql/queries/retention.sql).  Returns
        (events, runs) deleted and where the next batch starts (None: this was the last one due)."""
        async with self.pool.acquire() as conn, conn.transaction():
            found = await conn.fetch(_PRUNABLE_RUNS, workflow, keep_s, batch_rows, *after)
            if not found:
                return 0, 0, None
            row = await conn.fetchrow(_PRUNE_EVENTS, [r["event_key"] for r in found], keep_s, self.slot)
        assert row is not None
        last = found[-1]
        more = (last["finished_at"], last["id"]) if len(found) == batch_rows else None
        return int(row["events"]), int(row["runs"]), more

    # -- rewinds ------------------------------------------------------------------------------------------

    async def next_rewind(self) -> RewindPlan | None:
        """The oldest unfinished rewind of this slot, or None."""
        row = await self.pool.fetchrow(_NEXT_REWIND, self.slot)
        if row is None:
            return None
        return RewindPlan(
            id=row["id"],
            from_lsn=parse_lsn(row["from_lsn"]),
            up_to=parse_lsn(row["up_to"]),
            position=parse_lsn(row["position"]) if row["position"] is not None else None,
            rerun_rule=row["rerun_rule"],
            generation=row["generation"],
            rules=tuple(row["rules"]),
        )

    async def start_rewind(self, rewind_id: int) -> None:
        await self.pool.execute(_START_REWIND, rewind_id)

    async def fail_rewind(self, rewind_id: int, error: str) -> None:
        """End a rewind that cannot run, saying why (shown by `listener status` and `rewind --wait`)."""
        await self.pool.execute(_FAIL_REWIND.asyncpg, *_FAIL_REWIND.args(error=error, id=rewind_id))

    # -- reload requests ---------------------------------------------------------------------------------

    async def pending_reloads(self) -> list[int]:
        """The unanswered `listener reload` requests of this slot (rows of ``reload_requests``)."""
        rows = await self.pool.fetch(_PENDING_RELOADS, self.slot)
        return [int(row["id"]) for row in rows]

    async def answer_reloads(self, ids: list[int], *, ok: bool, answer: str) -> None:
        """Answer the requests one reload served; forget answers older than a day."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_ANSWER_RELOADS, ids, ok, answer)
            await conn.execute(_FORGET_RELOADS, self.slot)

    # -- schedules --------------------------------------------------------------------------------------

    async def queue_positions(self, queue: str) -> dict[str, tuple[int, ...]]:
        """Where ``queue`` stands: each part's last durable position (listener.ingest.queues)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_QUEUE_POSITIONS, queue)
        return {row["part"]: tuple(row["position"]) for row in rows}

    async def schedule_states(self, names: list[str]) -> dict[str, tuple[datetime, bool]]:
        """(last tick done, paused) of the named schedules that have a row (sql/0008_schedules.sql)."""
        rows = await self.pool.fetch(_SCHEDULE_STATES, names)
        return {row["name"]: (row["last_tick"], row["paused"]) for row in rows}

    async def schedule_gate(self, name: str, run_key: str | None, tick_key: str) -> tuple[bool, int, int]:
        """Before a tick fires: (paused, pending runs, running runs) of the schedule's other ticks."""
        row = await self.pool.fetchrow(_SCHEDULE_GATE, name, run_key, tick_key)
        assert row is not None
        return bool(row["paused"]), int(row["pending"]), int(row["running"])

    async def prune_webhook_requests(self, webhook: str, keep_s: float, limit: int) -> int:
        """Forget up to ``limit`` of ``webhook``'s kept requests received more than ``keep_s`` ago."""
        return int(await self.pool.fetchval(_PRUNE_WEBHOOK_REQUESTS, webhook, keep_s, limit))

    # -- compact chunks -----------------------------------------------------------------------------------

    async def runs_waiting(self, limit: int) -> int:
        """Pending runs, counted up to ``limit``."""
        return int(await self.pool.fetchval(_RUNS_WAITING, limit))

    async def runs_ahead(self, limit: int) -> int:
        """Pending ungated runs, counted up to ``limit``: how far the expander is ahead of the workers."""
        return int(await self.pool.fetchval(_RUNS_AHEAD, limit))

    async def next_chunk(self, after_id: int = 0) -> asyncpg.Record | None:
        """The oldest stored chunk with an id above ``after_id``."""
        return await self.pool.fetchrow(_NEXT_CHUNK, after_id)

    async def expand_chunk(self, chunk_id: int, batch: EventBatch) -> int | None:
        """Insert a chunk's events (duplicates skipped) and delete the chunk, in one transaction.  Returns
        the number of events inserted, or None when the chunk was gone (expanded by someone else)."""
        async with self.pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(_DELETE_CHUNK, chunk_id)
            if deleted is None:
                return None
            return (await self._insert_events(conn, batch))[0]

    # -- backfills ----------------------------------------------------------------------------------------

    async def _write_backfill_chunk(
        self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, chunk: BackfillChunk
    ) -> int:
        """A chunk's rows (raw, or as events with runs) and its progress; returns the events it counts."""
        advanced = await conn.execute(
            _ADVANCE_BACKFILL,
            chunk.backfill_id,
            chunk.last_key,
            chunk.seq,
            chunk.rows_read,
            chunk.rows_dropped,
            chunk.final,
        )
        if advanced == "UPDATE 0":
            return 0  # committed before (a redelivered high watermark cannot happen, but be safe)
        if chunk.events is not None:
            return await self.insert_backfill_events(conn, chunk, chunk.events)
        if not chunk.rows:
            return 0
        stored = await conn.fetchval(
            _INSERT_BACKFILL_CHUNK,
            chunk.backfill_id,
            chunk.seq,
            chunk.rule,
            chunk.workflow,
            chunk.priority,
            chunk.table_name,
            chunk.columns,
            chunk.key_positions,
            format_lsn(chunk.lsn),
            chunk.read_at,
            chunk.rows,
            chunk.data,
        )
        return int(stored or 0)

    async def insert_backfill_events(
        self,
        conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        chunk: BackfillChunk,
        events: list[tuple[str, str, str | None]],
    ) -> int:
        """Insert backfill events and their runs (duplicates skipped); wake the workers."""
        if not events:
            return 0
        keys, payloads, run_keys = (list(column) for column in zip(*events, strict=True))
        inserted = await conn.fetchval(
            _INSERT_KEYED_EVENTS,
            keys,
            payloads,
            run_keys,
            "backfill",
            chunk.rule,
            chunk.workflow,
            "read",
            chunk.table_name,
            format_lsn(chunk.lsn),
            chunk.read_at,
            chunk.gated,
            chunk.key_limit,
            chunk.ordered,
            chunk.priority,
        )
        if inserted:
            await conn.execute(_WAKE, self.channel)
        return int(inserted)

    async def next_backfill_chunk(self) -> asyncpg.Record | None:
        """The oldest stored backfill chunk."""
        return await self.pool.fetchrow(_NEXT_BACKFILL_CHUNK)

    async def expand_backfill_chunk(
        self, chunk_id: int, chunk: BackfillChunk, events: list[tuple[str, str, str | None]]
    ) -> int | None:
        """Insert a backfill chunk's events and delete the chunk, in one transaction (None: it was gone)."""
        async with self.pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(_DELETE_BACKFILL_CHUNK, chunk_id)
            if deleted is None:
                return None
            return await self.insert_backfill_events(conn, chunk, events)
