"""The replication slot as ``pg_replication_slots`` shows it: read by `listener status`, `listener rewind`
and ``/metrics``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from listener.defaults import SLOT_SAFE_WAL_WARN_FRACTION
from listener.pg.lsn import parse_lsn


@dataclass(frozen=True, slots=True)
class SlotState:
    """The replication slot, as pg_replication_slots shows it."""

    name: str
    active_pid: int | None
    confirmed_flush: int | None
    restart_lsn: int | None
    wal_status: str | None
    current_lsn: int | None
    retained_bytes: int | None  # pg_current_wal_lsn() - restart_lsn: WAL the server keeps for this slot
    # WAL that may still be written before max_slot_wal_keep_size invalidates the slot, and that size
    # (None: no limit)
    safe_wal_bytes: int | None = None
    keep_wal_bytes: int | None = None

    @property
    def near_invalidation(self) -> bool:
        """Whether the WAL the slot may still fall behind by before max_slot_wal_keep_size invalidates it
        is below SLOT_SAFE_WAL_WARN_FRACTION of that size (as `listener run` warns:
        listener.ingest.heartbeat)."""
        if self.safe_wal_bytes is None or self.keep_wal_bytes is None:
            return False
        return self.safe_wal_bytes < self.keep_wal_bytes * SLOT_SAFE_WAL_WARN_FRACTION


def slot_state(conn: psycopg.Connection[Any], slot: str) -> SlotState | None:
    row = conn.execute(
        """
        SELECT active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status,
               CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
               CASE WHEN pg_is_in_recovery() THEN NULL
                    ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 END,
               safe_wal_size, pg_size_bytes(nullif(current_setting('max_slot_wal_keep_size'), '-1'))
        FROM pg_replication_slots WHERE slot_name = %s
        """,
        [slot],
    ).fetchone()
    if row is None:
        return None
    pid, confirmed, restart, wal_status, current, retained, safe, keep = row
    return SlotState(
        name=slot,
        active_pid=pid,
        confirmed_flush=parse_lsn(confirmed) if confirmed else None,
        restart_lsn=parse_lsn(restart) if restart else None,
        wal_status=wal_status,
        current_lsn=parse_lsn(current) if current else None,
        retained_bytes=int(retained) if retained is not None else None,
        safe_wal_bytes=int(safe) if safe is not None else None,
        keep_wal_bytes=int(keep) if keep is not None else None,
    )
