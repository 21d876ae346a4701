"""Idle heartbeats, and the slot's health while it streams.

When the slot has sent nothing for ``ingest.heartbeat_s``, the leader writes a non-transactional logical
decoding message (prefix :data:`HEARTBEAT_PREFIX`, content ``{"slot": ..., "at": <unix time>}``) to the
watched database.  The reader, receiving it outside any transaction, moves the checkpoint to it (so the
slot's confirmed and restart positions advance while the rule tables are idle and other tables -- or
other databases of the cluster -- churn WAL) and measures the end-to-end lag from its ``at``
(``IngestStats.lag_s``).  The server's keepalives let the checkpoint follow too, but only as far as the
walsender has decoded and said so; a heartbeat is a position in the stream itself.

Beside it, the slot's ``wal_status`` and ``safe_wal_size`` are read at each beat: a slot that
``max_slot_wal_keep_size`` will soon invalidate is warned about (once per crossing), and one it did
invalidate stops the service with the recovery (:func:`invalidation_error`), never a silent restart
from "now".
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import psycopg

from listener import metrics
from listener.defaults import SLOT_SAFE_WAL_WARN_FRACTION, SLOT_WATCH_S
from listener.errors import PrerequisiteError
from listener.logs import fields
from listener.pg.replication import ReplicationSession

if TYPE_CHECKING:
    from listener.ingest.state import IngestState

logger = logging.getLogger(__name__)

HEARTBEAT_PREFIX = "listener.heartbeat"


def heartbeat_content(slot: str) -> str:
    return json.dumps({"slot": slot, "at": time.time()})


def heartbeat_lag(content: bytes, slot: str) -> float | None:
    """Seconds since this slot's heartbeat was written (None: another slot's, or not one of ours).  Anyone
    who may write logical messages can write one under the prefix: whatever it holds is not an error."""
    try:
        beat = json.loads(content)
        if not isinstance(beat, dict) or beat.get("slot") != slot:
            return None
        at = float(beat["at"])
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested too deeply
        return None
    return max(0.0, time.time() - at) if math.isfinite(at) else None


_SLOT_HEALTH = """
SELECT s.wal_status, s.safe_wal_size, s.restart_lsn::text,
       pg_size_bytes(nullif(current_setting('max_slot_wal_keep_size'), '-1')) AS keep
FROM pg_replication_slots s WHERE s.slot_name = %s
"""


def invalidation_error(slot: str, why: str) -> PrerequisiteError:
    """The error that stops a service whose slot was invalidated: what happened and the recovery."""
    return PrerequisiteError(
        f"replication slot {slot!r} was invalidated ({why}): the changes after its last confirmed position "
        "are gone from the server, so listener cannot go on from its checkpoint",
        hint="make a new slot and read again what changed meanwhile: `listener drop` (the slot, its "
        "publications and the checkpoint; events and runs stay), `listener init`, `listener run`, then "
        "`listener backfill --rule NAME` for each table rule (it re-reads the table's rows). To keep it "
        "from happening again, raise max_slot_wal_keep_size or keep listener running",
    )


async def slot_invalidated(catalog: psycopg.AsyncConnection[Any], slot: str) -> str | None:
    """Why the server invalidated ``slot``, or None (a valid slot, or none)."""
    version = catalog.info.server_version
    column = (
        "invalidation_reason" if version >= 170000 else "CASE WHEN wal_status = 'lost' THEN 'wal_removed' END"
    )
    cur = await catalog.execute(f"SELECT {column} FROM pg_replication_slots WHERE slot_name = %s", [slot])
    row = await cur.fetchone()
    return str(row[0]) if row is not None and row[0] is not None else None


class SlotWatch:
    """Warns once each time the slot nears invalidation by ``max_slot_wal_keep_size``."""

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self.warned = False

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute(_SLOT_HEALTH, [self.slot])
        row = await cur.fetchone()
        if row is None:
            return
        wal_status, safe, restart, keep = row
        if wal_status == "lost":
            raise invalidation_error(self.slot, "wal_removed: max_slot_wal_keep_size")
        near = safe is not None and keep is not None and int(safe) < int(keep) * SLOT_SAFE_WAL_WARN_FRACTION
        if near and not self.warned:
            logger.warning(
                "replication slot %r holds WAL from %s and is %d MB from being invalidated by "
                "max_slot_wal_keep_size (%d MB): listener is behind the source; let it catch up, or raise "
                "max_slot_wal_keep_size",
                self.slot,
                restart,
                int(safe) >> 20,
                int(keep) >> 20,
                extra=fields(slot=self.slot),
            )
        elif not near and self.warned:
            logger.info("replication slot %r is clear of max_slot_wal_keep_size again", self.slot)
        self.warned = near


async def beat(ingest: IngestState, session: ReplicationSession) -> None:
    """A helper of the session, until it is cancelled: a heartbeat whenever the slot sent nothing for
    ``ingest.heartbeat_s`` (0: never), and the slot's health every ``SLOT_WATCH_S``.  On the session's
    catalog connection (autocommit: a non-transactional message is written at once): no connection of
    its own to open, or to leave half-open when the session ends under it."""
    interval = ingest.heartbeat_s
    watch = SlotWatch(ingest.slot)
    checked = -math.inf
    while True:
        async with ingest.catalog_lock:
            conn = ingest.catalog
            if conn is None:  # the session is ending
                return
            if time.monotonic() - checked >= SLOT_WATCH_S:
                await watch.check(conn)
                checked = time.monotonic()
            idle = time.monotonic() - session.received_at
            if interval and idle >= interval:
                await _emit(ingest, conn)
                interval, idle = ingest.heartbeat_s, 0.0
        wait = checked + SLOT_WATCH_S - time.monotonic()
        await asyncio.sleep(max(0.0, min(wait, interval - idle) if interval else wait))


_EMIT = "SELECT pg_logical_emit_message(false, %s, %s)"


async def _emit(ingest: IngestState, conn: psycopg.AsyncConnection[Any]) -> None:
    """One heartbeat; a role that may not write it turns them off, with a warning saying how to fix it
    (not worth stopping for: the checkpoint still follows the server's keepalives)."""
    try:
        await conn.execute(_EMIT, [HEARTBEAT_PREFIX, heartbeat_content(ingest.slot)])
    except psycopg.errors.InsufficientPrivilege as exc:
        user = conn.info.user
        logger.warning(
            "heartbeats off: role %s may not write them (%s); the slot follows the server's keepalives only. "
            "Fix: GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO %s (from 17: "
            "(boolean, text, text, boolean)), or set ingest.heartbeat_s: 0",
            user,
            str(exc).strip(),
            user,
            extra=fields(slot=ingest.slot),
        )
        ingest.heartbeat_s = 0.0
    else:
        ingest.stats.heartbeats += 1
        metrics.recorded().heartbeats.inc()
