"""The state schema: migrations, the ingest checkpoint, the ingest batch write, retention and rewinds.

Migrations are the numbered files in ``sql/`` (shipped as ``listener.sql``), applied in order under an
advisory lock, each in its own transaction, recorded in ``schema_migrations``: safe to run twice and from
two processes at once.  All SQL runs with ``search_path`` set to the state schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any, Literal

import asyncpg
import psycopg
from psycopg import sql

from listener.errors import from_driver
from listener.pg.conninfo import SESSION_SETTINGS, asyncpg_params
from listener.pg.lsn import format_lsn, parse_lsn
from listener.rules.events import RunPolicy

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The numbered migrations in version order; a gap or duplicate number is a packaging bug."""
    found: list[Migration] = []
    for entry in resources.files("listener.sql").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"migration numbers must be 1..n without gaps, found {migration.version}")
    return found


def migrate(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> list[Migration]:
    """Bring ``schema`` up to date; return the migrations applied now (empty when already current)."""
    applied: list[Migration] = []
    ident = sql.Identifier(schema)
    with conn.transaction():
        # Serialise concurrent `init`s on the same schema; released at commit.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('listener.migrate.' || %s))", [schema])
        # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists: a role
        # that owns its schema, made for it by a DBA, may lack it.
        if not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone():
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        row = conn.execute(
            sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_migrations").format(ident)
        ).fetchone()
        current = int(row[0]) if row else 0  # type: ignore[call-overload]
        for migration in load_migrations():
            if migration.version <= current:
                continue
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            conn.execute(migration.sql.encode())
            conn.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)").format(ident),
                [migration.version, migration.name],
            )
            applied.append(migration)
    return applied


def schema_version(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> int | None:
    """The applied migration version, or None when the schema was never initialised."""
    row = conn.execute("SELECT to_regclass(%s)", [f"{_quote_ident(schema)}.schema_migrations"]).fetchone()
    if row is None or row[0] is None:
        return None
    row = conn.execute(
        sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_migrations").format(sql.Identifier(schema))
    ).fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def checkpoint(conn: psycopg.Connection[tuple[object, ...]], schema: str, slot: str) -> int | None:
    """The checkpoint of ``slot`` (None: none, or no state schema yet)."""
    if schema_version(conn, schema) is None:
        return None
    row = conn.execute(
        sql.SQL("SELECT lsn::text FROM {}.checkpoints WHERE slot_name = %s").format(sql.Identifier(schema)),
        [slot],
    ).fetchone()
    return parse_lsn(str(row[0])) if row is not None else None


def forget_checkpoint(conn: psycopg.Connection[tuple[object, ...]], schema: str, slot: str) -> int | None:
    """Delete the checkpoint of ``slot`` (its slot is gone for good); return what it was."""
    if schema_version(conn, schema) is None:
        return None
    row = conn.execute(
        sql.SQL("DELETE FROM {}.checkpoints WHERE slot_name = %s RETURNING lsn::text").format(
            sql.Identifier(schema)
        ),
        [slot],
    ).fetchone()
    return parse_lsn(str(row[0])) if row is not None else None


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def notify_channel(schema: str) -> str:
    """The NOTIFY channel that wakes workers after an ingest commit.  It carries no data (invariant 7)."""
    return f"{schema}_events"


ControlKind = Literal["rewind", "backfill", "reload"]


def control_channel(schema: str, kind: ControlKind) -> str:
    """The NOTIFY channel that wakes the running service when a request of ``kind`` is recorded (a row of
    ``rewinds``, ``backfills`` or ``reload_requests``).  Each kind has its own channel, so one never sets
    off another; it carries no data (invariant 7): a wake-up without a request row does nothing."""
    return f"{schema}_{kind}"


@dataclass(frozen=True, slots=True)
class Retention:
    """The retention window (``retain:``): the slot's confirmed position trails the checkpoint by
    ``duration_s`` of commit time, and by no more than ``size_bytes`` of WAL (either may be None)."""

    duration_s: float | None = None
    size_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class RewindPlan:
    """An unfinished row of ``rewinds``: re-read the transactions committed in [from_lsn, up_to)."""

    id: int
    from_lsn: int
    up_to: int
    position: int | None  # end LSN of the last re-read transaction already durable, if any
    rerun_rule: str | None
    generation: int | None
    rules: tuple[str, ...]  # the rules of the configuration that asked for it

    @property
    def start_lsn(self) -> int:
        """Where streaming starts (again): after what is already durable."""
        return self.position if self.position is not None else self.from_lsn


@dataclass(slots=True)
class EventBatch:
    """Events for one state-database transaction, in columns, plus the checkpoint that goes with them.

    What is the same for many events (rule, workflow, operation, table and the transaction's commit LSN,
    xid and time) is stored once per *group*; each event names its group.  The idempotency key
    ``rule/commit LSN/ordinal`` is assembled by the server.  This keeps the per-event cost of sending a
    batch low: it is the hot path of a million-row transaction.
    """

    group: list[int] = field(default_factory=list)  # 1-based index into the group columns
    lsn: list[int] = field(default_factory=list)  # WAL position of the change
    ordinal: list[int] = field(default_factory=list)  # of the change among its table's, in the transaction
    payload: list[str] = field(
        default_factory=list
    )  # JSON text: {"new": .., "old": .., "unchanged_toast": ..}
    key: list[str | None] = field(default_factory=list)  # flow-control key of gated runs
    # per group: rule, workflow, op, table, commit LSN (text; for NOTIFY what stands in for it in the key),
    # xid, commit time, gated, key limit, ordered, priority, event source (cdc, message, notify)
    groups: list[
        tuple[
            str,
            str,
            str | None,
            str | None,
            str,
            int | None,
            datetime | None,
            bool,
            int | None,
            bool,
            int,
            str,
        ]
    ] = field(default_factory=list)
    group_ids: dict[tuple[str, str | None, str | None, str], int] = field(default_factory=dict)
    checkpoint: int | None = None  # end LSN of the last complete transaction in this batch
    chunks: list[RawChunk] = field(default_factory=list)  # bulk changes stored compactly
    # The change journal (`journal:`): the raw changes of the batch's transactions, per table (their
    # ``rules`` unused); see sql/0006_journal.sql.
    journal: list[RawChunk] = field(default_factory=list)
    checkpoint_time: datetime | None = None  # commit time of that transaction (None: an idle checkpoint)
    # Retention: set by the writer when a history row is due with this checkpoint; write_batch then
    # records it and sets ``confirm`` to the position the slot may confirm (None: keep the current one).
    retention: Retention | None = None
    confirm: int | None = None
    # Rewind: the rewind whose re-read transactions this batch may hold, how far they go, and whether the
    # stream passed the end of its range (then it is finished with this batch).
    rewind: RewindPlan | None = None
    rewind_position: int | None = None
    rewind_done: bool = False
    # Backfill chunks that reached their high watermark in this batch (see listener/backfill.py)
    backfill: list[BackfillChunk] = field(default_factory=list)
    # About how much memory the batch's payloads, chunks and journal rows hold (their lengths): ingest
    # bounds its buffers by this, not by counts (a few huge rows weigh more than thousands of small ones).
    nbytes: int = 0

    def __len__(self) -> int:
        return len(self.payload)

    def add(self, group: int, lsn: int, ordinal: int, payload: str, key: str | None = None) -> None:
        """One event: its group (see ``group_id``), the change's LSN and ordinal, payload and run key."""
        self.nbytes += len(payload)
        self.group.append(group)
        self.lsn.append(lsn)
        self.ordinal.append(ordinal)
        self.payload.append(payload)
        self.key.append(key)

    def group_id(
        self,
        rule: RunPolicy,
        op: str | None,
        table: str | None,
        commit: str,
        xid: int | None,
        at: datetime | None,
    ) -> int:
        """The group of (rule, op, table) in the transaction committed at ``commit``, made on first use."""
        key = (rule.name, op, table, commit)
        gid = self.group_ids.get(key)
        if gid is None:
            self.groups.append(
                (
                    rule.name,
                    rule.workflow,
                    op,
                    table,
                    commit,
                    xid,
                    at,
                    rule.gated,
                    rule.key_limit,
                    rule.ordered,
                    rule.priority,
                    _EVENT_SOURCE[rule.source],
                )
            )
            gid = self.group_ids[key] = len(self.groups)
        return gid


@dataclass(slots=True)
class RawChunk:
    """Consecutive changes of one table in one transaction, kept as the server sent them (a row of
    ``event_chunks``; see sql/0002_event_chunks.sql).  ``data`` holds, per change, its 8-byte LSN, the
    4-byte length of its pgoutput message and the message."""

    commit_lsn: int
    relation_oid: int
    first_ordinal: int
    xid: int
    commit_time: datetime
    table_name: str
    protocol: int
    relation: bytes  # the Relation message
    rules: str  # JSON: {"insert": [[rule, workflow], ...], ...}
    data: bytearray = field(default_factory=bytearray)
    changes: int = 0


@dataclass(slots=True)
class BackfillChunk:
    """One chunk of a backfill at its high watermark: the rows that survived its window, and the progress
    it makes (committed together: see sql/0005_backfill.sql).  The rows are either raw COPY text lines
    (``data``, for the expander) or, for a rule that needs the row at ingest, ready ``events``."""

    backfill_id: int
    seq: int
    rule: str
    workflow: str
    priority: int
    gated: bool
    key_limit: int | None
    ordered: bool
    table_name: str
    columns: str  # JSON: [[name, type OID], ...]
    key_positions: list[int]
    lsn: int  # the high watermark
    read_at: datetime
    last_key: list[str] | None  # None: the table was empty
    rows_read: int
    rows_dropped: int
    final: bool  # the last chunk: the backfill is done when it commits
    data: bytes = b""  # the surviving rows as COPY text lines
    rows: int = 0  # how many lines ``data`` holds
    events: list[tuple[str, str, str | None]] | None = None  # (idempotency key, payload, run key)


_EVENT_SOURCE = {"table": "cdc", "message": "message", "channel": "notify"}  # rule source -> events.source


# The batch's events (duplicates skipped by the primary key); `ev` holds the keys actually inserted.
_EVENTS_CTE = """
WITH src AS (
    SELECT r[g] || '/' || c[g] || '/' || o AS key, r[g] AS rule, w[g] AS workflow, op[g] AS op, t[g] AS tbl,
           CASE WHEN src[g] <> 'notify' THEN '0/0'::pg_lsn + l END AS lsn,
           CASE WHEN src[g] <> 'notify' THEN c[g]::pg_lsn END AS commit_lsn,
           x[g] AS xid, ct[g] AS commit_time,
           p::jsonb AS payload, k, gated[g] AS gated, key_limit[g] AS key_limit, ordered[g] AS ordered,
           prio[g] AS priority, src[g] AS source
    FROM unnest($1::int4[], $2::int8[], $3::int4[], $4::text[], $5::text[]) AS u(g, l, o, p, k),
         (SELECT $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[], $12::timestamptz[],
                 $13::bool[], $14::int4[], $15::bool[], $16::int4[], $17::text[])
             AS grp(r, w, op, t, c, x, ct, gated, key_limit, ordered, prio, src)
), ev AS (
    INSERT INTO events (idempotency_key, source, rule, workflow, op, table_name, lsn, commit_lsn, xid,
                        commit_time, payload)
    SELECT key, source, rule, workflow, op, tbl, lsn, commit_lsn, xid, commit_time, payload FROM src
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING idempotency_key
)"""

_INSERT_EVENTS = (
    _EVENTS_CTE
    + """, runs_made AS (
    -- one run per new event, its id the event's key (invariant 3); a redelivered event makes none
    INSERT INTO runs (id, event_key, workflow, gated, key, key_limit, ordered, priority)
    SELECT src.key, src.key, src.workflow, src.gated, src.k, src.key_limit, src.ordered, src.priority
    FROM src JOIN ev ON ev.idempotency_key = src.key
    RETURNING 1
)
SELECT count(*) FROM runs_made
"""
)

# A batch holding re-read transactions of a rewind ($18 its --rerun rule or NULL, $19 its generation, $20
# the end of its range): events as above; and for each change of the rerun rule committed in the range, a
# run of the rewind's generation (id KEY#generation), whether its event is new or not.  A new event of that
# rule therefore gets no generation-0 run: one new run per change, and a redelivery makes none.
_INSERT_EVENTS_REWIND = (
    _EVENTS_CTE
    + """, runs_made AS (
    INSERT INTO runs (id, event_key, workflow, gated, key, key_limit, ordered, priority)
    SELECT src.key, src.key, src.workflow, src.gated, src.k, src.key_limit, src.ordered, src.priority
    FROM src JOIN ev ON ev.idempotency_key = src.key
    WHERE NOT coalesce(src.rule = $18::text AND src.commit_lsn < $20::text::pg_lsn, false)
    RETURNING 1
), reruns AS (
    INSERT INTO runs (id, event_key, generation, workflow, gated, key, key_limit, ordered, priority)
    SELECT src.key || '#' || $19::int4, src.key, $19::int4, src.workflow, src.gated, src.k, src.key_limit,
           src.ordered, src.priority
    FROM src WHERE src.rule = $18::text AND src.commit_lsn < $20::text::pg_lsn
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM ev) AS inserted,
       (SELECT count(*) FROM ev JOIN src ON src.key = ev.idempotency_key
        WHERE src.commit_lsn < $20::text::pg_lsn) AS rewound,
       (SELECT count(*) FROM reruns) AS reruns
"""
)

# A payload longer than this many characters (a huge row's) goes to the server in pieces of this size, through
# a large object of the writer's transaction: sent whole, the driver would hold three more copies of it (the
# statement's arguments, its message, the socket's backlog) beside the payload itself (invariant 6).
PAYLOAD_PIECE_CHARS = 4 << 20
# The event is inserted with this stand-in payload, then filled from the large object (numbered here).
_PAYLOAD_STAND_IN = '{{"listener_payload_pieces":{}}}'
_FILL_PAYLOAD = """
UPDATE events SET payload = convert_from(lo_get($2::oid), 'UTF8')::jsonb
WHERE idempotency_key = $1 AND payload = $3::jsonb
"""


async def _send_in_pieces(conn: Any, oid: int, text: str) -> None:
    """Write ``text`` (UTF-8) into the large object ``oid``, PAYLOAD_PIECE_CHARS characters at a time."""
    offset = 0
    for start in range(0, len(text), PAYLOAD_PIECE_CHARS):
        piece = text[start : start + PAYLOAD_PIECE_CHARS].encode()
        await conn.execute("SELECT lo_put($1::oid, $2, $3)", oid, offset, piece)
        offset += len(piece)


_INSERT_CHUNK = """
INSERT INTO event_chunks (commit_lsn, relation_oid, first_ordinal, changes, xid, commit_time, table_name,
                          protocol, relation, rules, data)
VALUES ($1::text::pg_lsn, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11)
ON CONFLICT (commit_lsn, relation_oid, first_ordinal) DO NOTHING
RETURNING changes
"""

_INSERT_BACKFILL_CHUNK = """
INSERT INTO backfill_chunks (backfill_id, seq, rule, workflow, priority, table_name, columns, key_columns,
                             lsn, read_at, rows, data)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9::text::pg_lsn, $10, $11, $12)
ON CONFLICT (backfill_id, seq) DO NOTHING
RETURNING rows
"""

# Backfill events ($1 keys, $2 payloads, $3 run keys) of one rule, each with its run; duplicates skipped.
_INSERT_BACKFILL_EVENTS = """
WITH src AS (
    SELECT k AS key, p::jsonb AS payload, rk FROM unnest($1::text[], $2::text[], $3::text[]) AS u(k, p, rk)
), ev AS (
    INSERT INTO events (idempotency_key, source, rule, workflow, op, table_name, lsn, commit_time, payload)
    SELECT key, 'backfill', $4, $5, 'read', $6, $7::text::pg_lsn, $8, payload FROM src
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING idempotency_key
), runs_made AS (
    INSERT INTO runs (id, event_key, workflow, gated, key, key_limit, ordered, priority)
    SELECT src.key, src.key, $5, $9, src.rk, $10, $11, $12 FROM src JOIN ev ON ev.idempotency_key = src.key
    RETURNING 1
)
SELECT count(*) FROM runs_made
"""

# A chunk's progress; `chunks < seq` makes a chunk committed twice count once.  A cancelled backfill keeps
# its status (chunks in flight when it was cancelled still commit).
_ADVANCE_BACKFILL = """
UPDATE backfills SET last_key = $2, chunks = $3, rows_read = rows_read + $4, rows_dropped = rows_dropped + $5,
       status = CASE WHEN status IN ('pending', 'running') THEN CASE WHEN $6 THEN 'done' ELSE 'running' END
                     ELSE status END,
       finished_at = CASE WHEN $6 THEN coalesce(finished_at, now()) ELSE finished_at END,
       updated_at = now()
WHERE id = $1 AND chunks < $3
"""

_NEXT_BACKFILL_CHUNK = """
SELECT id, backfill_id, seq, rule, workflow, priority, table_name, columns::text AS columns, key_columns,
       lsn::text AS lsn, read_at, rows, data
FROM backfill_chunks ORDER BY id LIMIT 1
"""

_RUNS_AHEAD = """
SELECT count(*) FROM (SELECT 1 FROM runs WHERE status = 'pending' AND NOT gated LIMIT $1) AS ahead
"""

_NEXT_CHUNK = """
SELECT id, commit_lsn::text AS commit_lsn, relation_oid, first_ordinal, changes, xid, commit_time,
       table_name, protocol, relation, rules::text AS rules, data
FROM event_chunks WHERE id > $1 ORDER BY id LIMIT 1
"""

_UPSERT_CHECKPOINT = """
INSERT INTO checkpoints (slot_name, lsn, updated_at) VALUES ($1, $2::text::pg_lsn, now())
ON CONFLICT (slot_name) DO UPDATE SET lsn = excluded.lsn, updated_at = excluded.updated_at
"""


_ADVANCE_REWIND = """
UPDATE rewinds SET position = coalesce($2::text::pg_lsn, position),
                   events_inserted = events_inserted + $3, runs_rerun = runs_rerun + $4,
                   finished_at = CASE WHEN $5 THEN now() ELSE finished_at END
WHERE id = $1
"""

_RECORD_HISTORY = """
INSERT INTO lsn_history (slot_name, lsn, commit_time) VALUES ($1, $2::text::pg_lsn, coalesce($3, now()))
ON CONFLICT (slot_name, lsn) DO NOTHING
"""

# The position the slot may confirm: the newest history row older than the window ($2 seconds of commit
# time); when the history spans more than the size cap ($3 = the checkpoint minus the cap: rows lie below
# it), at least the oldest row within the cap; but never past an unfinished rewind's start.  NULL while
# neither applies: the slot keeps what it has.
_RETAIN_POSITION = """
SELECT CASE WHEN w IS NULL THEN NULL ELSE least(w, r) END::text
FROM (SELECT greatest(
             (SELECT max(lsn) FROM lsn_history
              WHERE slot_name = $1 AND commit_time <= now() - make_interval(secs => $2::float8)),
             (SELECT min(lsn) FROM lsn_history
              WHERE slot_name = $1 AND lsn >= $3::text::pg_lsn
                AND EXISTS (SELECT 1 FROM lsn_history WHERE slot_name = $1 AND lsn < $3::text::pg_lsn))
             ) AS w,
             (SELECT min(coalesce(position, from_lsn)) FROM rewinds
              WHERE slot_name = $1 AND finished_at IS NULL) AS r) AS x
"""

# Where the history begins when retention is switched on: the slot's confirmed position, with the time the
# checkpoint (at or past it) was written, an upper bound of the commit times below it.
_SEED_HISTORY = """
INSERT INTO lsn_history (slot_name, lsn, commit_time)
SELECT $1, $2::text::pg_lsn,
       coalesce((SELECT updated_at FROM checkpoints WHERE slot_name = $1 AND lsn >= $2::text::pg_lsn), now())
WHERE NOT EXISTS (SELECT 1 FROM lsn_history WHERE slot_name = $1 AND lsn <= $2::text::pg_lsn)
ON CONFLICT (slot_name, lsn) DO NOTHING
"""

_PRUNE_HISTORY = "DELETE FROM lsn_history WHERE slot_name = $1 AND lsn < $2::text::pg_lsn"

# One statement for all journal rows of a batch; a redelivered transaction's rows are dropped by the key.
_INSERT_JOURNAL = """
INSERT INTO journal (commit_lsn, relation_oid, first_ordinal, changes, xid, commit_time, table_name,
                     protocol, relation, data)
SELECT c::pg_lsn, o, f, n, x, t, tbl, p, r, d
FROM unnest($1::text[], $2::oid[], $3::int4[], $4::int4[], $5::int8[], $6::timestamptz[], $7::text[],
            $8::int4[], $9::bytea[], $10::bytea[]) AS u(c, o, f, n, x, t, tbl, p, r, d)
ON CONFLICT (commit_lsn, relation_oid, first_ordinal) DO NOTHING
"""

# The oldest journal rows, a batch at a time ($1: the cutoff).
_PRUNE_JOURNAL = """
DELETE FROM journal WHERE (commit_lsn, relation_oid, first_ordinal) IN (
    SELECT commit_lsn, relation_oid, first_ordinal FROM journal WHERE commit_time < $1 LIMIT $2)
"""

_NEXT_REWIND = """
SELECT id, from_lsn::text AS from_lsn, up_to::text AS up_to, position::text AS position, rerun_rule,
       generation, rules
FROM rewinds WHERE slot_name = $1 AND finished_at IS NULL ORDER BY id LIMIT 1
"""


class StateStore:
    """The state database as ingest sees it (asyncpg: binary protocol, prepared statements)."""

    def __init__(self, pool: asyncpg.Pool, *, schema: str, slot: str) -> None:
        self.pool = pool
        self.schema = schema
        self.slot = slot
        self.channel = notify_channel(schema)

    @classmethod
    async def connect(cls, dsn: str, *, schema: str, slot: str, max_size: int = 4) -> StateStore:
        try:
            params = asyncpg_params(dsn, {**SESSION_SETTINGS, "search_path": schema})
            pool = await asyncpg.create_pool(min_size=1, max_size=max_size, **params)
        except (OSError, asyncpg.PostgresError) as exc:
            raise from_driver(
                exc, "cannot connect to the state database", hint="check --state-dsn / LISTENER_STATE_DSN"
            ) from exc
        assert pool is not None
        return cls(pool, schema=schema, slot=slot)

    async def close(self) -> None:
        await self.pool.close()

    async def read_checkpoint(self) -> int | None:
        value = await self.pool.fetchval("SELECT lsn::text FROM checkpoints WHERE slot_name = $1", self.slot)
        return parse_lsn(value) if value is not None else None

    async def write_batch(self, batch: EventBatch) -> int:
        """Insert the batch's events (duplicates skipped) and chunks, and move the checkpoint, in one
        transaction.

        Returns the number of events actually inserted, counting the changes of new chunks.  Only after
        this returns may the flush LSN sent to the server move to ``batch.checkpoint`` (invariant 1), or,
        with a retention window, to ``batch.confirm``, which this sets when ``batch.retention`` asks for a
        history row.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            inserted, rewound, reruns = await self._insert_events(conn, batch)
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
            if batch.checkpoint is not None:
                await conn.execute(_UPSERT_CHECKPOINT, self.slot, format_lsn(batch.checkpoint))
                if batch.retention is not None:
                    batch.confirm = await self._retain(
                        conn, batch.checkpoint, batch.checkpoint_time, batch.retention
                    )
        return inserted

    async def insert_events(self, batch: EventBatch) -> tuple[int, int, int]:
        """Insert the events of a batch made outside the ingest (`listener replay`), in one transaction:
        (events inserted, events in a rewind's range, runs of a rewind's --rerun)."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._insert_events(conn, batch)

    async def _insert_events(
        self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, batch: EventBatch
    ) -> tuple[int, int, int]:
        """Insert the batch's events and their runs: (events inserted, events re-read by a rewind, runs
        made for a rewind's --rerun)."""
        if not batch.payload:
            return 0, 0, 0
        inserted = rewound = reruns = 0
        rewind = batch.rewind
        groups = list(zip(*batch.groups, strict=True))
        payloads = batch.payload
        huge: dict[int, tuple[int, str]] = {}  # index -> large object, stand-in: payloads sent in pieces
        if batch.nbytes > PAYLOAD_PIECE_CHARS and max(map(len, payloads)) > PAYLOAD_PIECE_CHARS:
            payloads = list(payloads)
            for index, payload in enumerate(batch.payload):
                if len(payload) > PAYLOAD_PIECE_CHARS:
                    oid = await conn.fetchval("SELECT lo_create(0)")
                    await _send_in_pieces(conn, oid, payload)
                    payloads[index] = _PAYLOAD_STAND_IN.format(oid)
                    huge[index] = oid, payloads[index]
        columns = (batch.group, batch.lsn, batch.ordinal, payloads, batch.key, *groups)
        if rewind is None:
            inserted = await conn.fetchval(_INSERT_EVENTS, *columns)
        else:
            rerun = (rewind.rerun_rule, rewind.generation, format_lsn(rewind.up_to))
            row = await conn.fetchrow(_INSERT_EVENTS_REWIND, *columns, *rerun)
            assert row is not None
            inserted, rewound, reruns = row["inserted"], row["rewound"], row["reruns"]
        for index, (oid, stand_in) in huge.items():  # (an event inserted before keeps its payload)
            group = batch.groups[batch.group[index] - 1]
            key = f"{group[0]}/{group[4]}/{batch.ordinal[index]}"  # as _EVENTS_CTE makes it
            await conn.execute(_FILL_PAYLOAD, key, oid, stand_in)
            await conn.execute("SELECT lo_unlink($1::oid)", oid)
        if inserted or reruns:
            await conn.execute("SELECT pg_notify($1, '')", self.channel)
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
            await self.pool.execute(
                "INSERT INTO journal_horizon (slot_name, since) VALUES ($1, now()) ON CONFLICT DO NOTHING",
                self.slot,
            )
        else:
            await self.pool.execute("DELETE FROM journal_horizon WHERE slot_name = $1", self.slot)

    async def prune_journal(self, keep_s: float, *, batch_rows: int) -> int:
        """Delete journal rows committed more than ``keep_s`` ago, ``batch_rows`` per transaction, and move
        the horizon up to that time first.  Returns the rows deleted."""
        cutoff = await self.pool.fetchval(
            "UPDATE journal_horizon SET since = greatest(since, now() - make_interval(secs => $2::float8))"
            " WHERE slot_name = $1 RETURNING now() - make_interval(secs => $2::float8)",
            self.slot,
            keep_s,
        )
        if cutoff is None:  # no horizon: the journal was switched off meanwhile
            return 0
        total = 0
        while True:
            status = await self.pool.execute(_PRUNE_JOURNAL, cutoff, batch_rows)
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < batch_rows:
                return total

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
        await self.pool.execute(
            "UPDATE rewinds SET started_at = coalesce(started_at, now()) WHERE id = $1", rewind_id
        )

    async def fail_rewind(self, rewind_id: int, error: str) -> None:
        """End a rewind that cannot run, saying why (shown by `listener status` and `rewind --wait`)."""
        await self.pool.execute(
            "UPDATE rewinds SET finished_at = now(), error = $2 WHERE id = $1 AND finished_at IS NULL",
            rewind_id,
            error,
        )

    # -- reload requests ---------------------------------------------------------------------------------

    async def pending_reloads(self) -> list[int]:
        """The unanswered `listener reload` requests of this slot (rows of ``reload_requests``)."""
        rows = await self.pool.fetch(
            "SELECT id FROM reload_requests WHERE slot_name = $1 AND answered_at IS NULL ORDER BY id",
            self.slot,
        )
        return [int(row["id"]) for row in rows]

    async def answer_reloads(self, ids: list[int], *, ok: bool, answer: str) -> None:
        """Answer the requests one reload served; forget answers older than a day."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE reload_requests SET answered_at = now(), ok = $2, answer = $3 WHERE id = ANY($1)",
                ids,
                ok,
                answer,
            )
            await conn.execute(
                "DELETE FROM reload_requests WHERE slot_name = $1 AND answered_at < now() - interval '1 day'",
                self.slot,
            )

    # -- compact chunks -----------------------------------------------------------------------------------

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
            deleted = await conn.fetchval("DELETE FROM event_chunks WHERE id = $1 RETURNING 1", chunk_id)
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
            _INSERT_BACKFILL_EVENTS,
            keys,
            payloads,
            run_keys,
            chunk.rule,
            chunk.workflow,
            chunk.table_name,
            format_lsn(chunk.lsn),
            chunk.read_at,
            chunk.gated,
            chunk.key_limit,
            chunk.ordered,
            chunk.priority,
        )
        if inserted:
            await conn.execute("SELECT pg_notify($1, '')", self.channel)
        return int(inserted)

    async def next_backfill_chunk(self) -> asyncpg.Record | None:
        """The oldest stored backfill chunk."""
        return await self.pool.fetchrow(_NEXT_BACKFILL_CHUNK)

    async def expand_backfill_chunk(
        self, chunk_id: int, chunk: BackfillChunk, events: list[tuple[str, str, str | None]]
    ) -> int | None:
        """Insert a backfill chunk's events and delete the chunk, in one transaction (None: it was gone)."""
        async with self.pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval("DELETE FROM backfill_chunks WHERE id = $1 RETURNING 1", chunk_id)
            if deleted is None:
                return None
            return await self.insert_backfill_events(conn, chunk, events)
