"""The logical replication slot: created when missing, and the error when it was lost or moved past the
checkpoint.
"""

from __future__ import annotations

from psycopg import errors as pgerrors

from listener.errors import (
    CONFIGURATION_LIMIT_EXCEEDED,
    INSUFFICIENT_PRIVILEGE,
    OBJECT_NOT_IN_PREREQUISITE_STATE,
    PrerequisiteError,
    from_driver,
)
from listener.install.privileges import check_replication
from listener.pg import managed, versions
from listener.pg.conninfo import Conn
from listener.pg.lsn import format_lsn
from listener.queue.migrations import forget_checkpoint_sql


def ensure_slot(
    conn: Conn,
    slot: str,
    *,
    checkpoint: int | None = None,
    schema: str = "listener",
    failover: bool | None = None,
) -> list[str]:
    """Create the logical slot, unless it exists.  ``checkpoint``: where the state database says ingest
    stands on this slot; when the slot is gone, a new one would start at the server's current position and
    the changes in between would never be streamed, so that is refused, naming them.  ``failover``: create
    it as a failover slot (PostgreSQL 17+; None: wherever the server has them)."""
    if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone():
        return []
    if checkpoint is not None:
        raise lost_slot(conn, slot, checkpoint, schema)
    try:
        if failover is None:
            failover = conn.info.server_version >= versions.FAILOVER_SLOTS
        if conn.info.server_version >= versions.FAILOVER_SLOTS:
            # a failover slot is kept on standbys that synchronize slots (sync_replication_slots): it
            # survives a failover (listener.install.failover)
            conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput', failover => %s)", [slot, failover]
            )
        else:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
    except pgerrors.DuplicateObject:
        return []  # created concurrently
    except (
        pgerrors.ObjectNotInPrerequisiteState,
        pgerrors.ConfigurationLimitExceeded,
        pgerrors.InsufficientPrivilege,
    ) as exc:
        raise from_driver(
            exc,
            f"cannot create replication slot {slot!r}",
            fixes={
                OBJECT_NOT_IN_PREREQUISITE_STATE: lambda: managed.detect(conn).logical,
                CONFIGURATION_LIMIT_EXCEEDED: lambda: (
                    managed.detect(conn).set_parameter("max_replication_slots", "a higher value")
                    + "; or drop an unused slot"
                ),
                INSUFFICIENT_PRIVILEGE: lambda: (
                    check_replication(conn, managed.detect(conn)).fix or "see `listener check`"
                ),
            },
        ) from exc
    return [f"created replication slot {slot}"]


def lost_slot(conn: Conn, slot: str, checkpoint: int, schema: str) -> PrerequisiteError:
    """The slot is gone while the state database still stands on it."""
    forget = forget_checkpoint_sql(schema, slot)
    return PrerequisiteError(
        f"replication slot {slot!r} does not exist, but listener's checkpoint on it is at LSN "
        f"{format_lsn(checkpoint)}: the slot was dropped (by hand, by a failover that did not carry it, or "
        "by a service that removes inactive slots), and the changes committed since that LSN are not in "
        "the WAL any slot keeps",
        hint=f"to go on from now, accepting that gap: {forget}  -- in the state database, "
        "then `listener run`, and `listener backfill` the rule tables to re-read their rows",
    )
