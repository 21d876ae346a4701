"""Questions about the replication slot asked of the source's catalog: where it stands, who holds it, and
the error when it stands past the checkpoint."""

from __future__ import annotations

from typing import Any

import psycopg

from listener.errors import ListenerError, PrerequisiteError
from listener.pg.conninfo import connect_async
from listener.pg.lsn import format_lsn, parse_lsn
from listener.queue.migrations import forget_checkpoint_sql


async def slot_confirmed(catalog: psycopg.AsyncConnection[Any], slot: str) -> int | None:
    """The slot's confirmed_flush_lsn now (None when there is no such slot)."""
    cur = await catalog.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [slot]
    )
    row = await cur.fetchone()
    return parse_lsn(str(row[0])) if row is not None and row[0] is not None else None


def slot_ahead(slot: str, confirmed: int, checkpoint: int, schema: str) -> PrerequisiteError:
    """The slot's confirmed position is past the checkpoint: listener never confirms what it has not
    committed, so the state database lost commits the slot had been told of (a failover or restore of the
    state database behind the slot: a standby's synced copy of the slot ahead of the state it replays), or
    the slot was advanced by hand.  The server will not send the transactions in between again."""
    forget = forget_checkpoint_sql(schema, slot)
    return PrerequisiteError(
        f"replication slot {slot!r} is confirmed up to LSN {format_lsn(confirmed)}, past listener's "
        f"checkpoint at {format_lsn(checkpoint)}: the server will not send the transactions committed "
        "in between again, and their events are not in the state database (it lost commits the slot had "
        "been told of: a failover or restore of the state database without synchronous replication, or "
        "the slot was advanced by hand)",
        hint=f"to go on from the slot's position, accepting that gap: {forget}  -- in the state database, "
        "then `listener run`, and `listener backfill` the rule tables to re-read their rows; against a "
        "failover, see README 'Failover slots' (synchronous_standby_names)",
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
