"""Questions about the replication slot asked of the source's catalog: where it stands, who holds it."""

from __future__ import annotations

from typing import Any

import psycopg

from listener.errors import ListenerError
from listener.pg.conninfo import connect_async
from listener.pg.lsn import parse_lsn


async def slot_confirmed(catalog: psycopg.AsyncConnection[Any], slot: str) -> int | None:
    """The slot's confirmed_flush_lsn now (None when there is no such slot)."""
    cur = await catalog.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [slot]
    )
    row = await cur.fetchone()
    return parse_lsn(str(row[0])) if row is not None and row[0] is not None else None


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
