"""Failover slots (PostgreSQL 17+): ``slot_failover:`` applied to the slot, and what ``listener check``
says about the servers that keep the slot across a failover.

A failover slot is copied to the standbys that synchronize slots (``sync_replication_slots = on``), and a
promoted standby's copy is the slot listener goes on reading.  That is safe only when no copy can stand
behind what listener has already read: ``synchronized_standby_slots`` on the primary names the standbys'
physical slots, and the primary sends a logical consumer nothing those standbys have not flushed.

``slot_failover: true`` makes the slot a failover slot: created so, or altered (``ALTER_REPLICATION_SLOT``
on a replication connection, while no one reads the slot); a server older than 17 is refused with the
setting's place.  ``false`` makes it a slot that never fails over.  Absent, a new slot is created with
failover where the server has it, and an existing one is left as it is.
"""

from __future__ import annotations

from typing import NamedTuple

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from listener.defaults import CONNECT_TIMEOUT_S
from listener.errors import INSUFFICIENT_PRIVILEGE, ConfigError, ListenerError, SlotInUseError, from_driver
from listener.install.privileges import CheckResult, check_replication
from listener.pg import conninfo, managed, versions
from listener.pg.conninfo import Conn
from listener.rules.config import Config

# what a standby needs to synchronize slots (PostgreSQL 17 docs, "Replication Slot Synchronization"):
# each of these on, a primary_slot_name, and a dbname in primary_conninfo
STANDBY_ON = {"sync_replication_slots": "on", "hot_standby_feedback": "on", "wal_level": "logical"}
EXAMPLE_PHYSICAL_SLOT = "standby1"  # named in a fix when the primary has no physical slot yet


class PhysicalSlot(NamedTuple):
    """A physical slot of the primary, and the walsender streaming from it (a standby), if any."""

    name: str
    active: bool
    application_name: str | None
    sync_state: str | None  # async, sync, quorum, potential (pg_stat_replication)


def refused(config: Config, server_version: int) -> ConfigError | None:
    """``slot_failover: true`` on a server that has no failover slots: the error naming the setting."""
    if not config.slot_failover or server_version >= versions.FAILOVER_SLOTS:
        return None
    file, line = config.setting_place("", "slot_failover")
    return ConfigError(
        f"slot_failover: true needs PostgreSQL {versions.major(versions.FAILOVER_SLOTS)} or newer, and the "
        f"server is PostgreSQL {versions.major(server_version)}: before 17 a logical slot lives on the "
        "primary only and no standby can keep it",
        file=file,
        line=line,
        hint="remove `slot_failover:` (the slot then stays on the primary: after a failover, the rows "
        "changed before a new slot come back only by `listener backfill`; README 'Failover slots'), or "
        "upgrade the server to PostgreSQL 17+",
    )


def create_with_failover(config: Config, server_version: int) -> bool:
    """Whether a new slot is created with ``failover`` (never before 17: see :func:`refused`)."""
    if server_version < versions.FAILOVER_SLOTS:
        return False
    return config.slot_failover is not False


def ensure_failover(conn: Conn, dsn: str, config: Config) -> list[str]:
    """Give the existing slot the ``failover`` flag ``slot_failover:`` asks for; returns what was done.

    ``ALTER_REPLICATION_SLOT`` is a replication command: it needs a replication connection and the slot
    free (the server acquires it).  A slot someone reads is refused with who it is, not altered later."""
    if config.slot_failover is None or conn.info.server_version < versions.FAILOVER_SLOTS:
        return []
    row = _flag(conn, config.slot)
    if row is None or row[0] == config.slot_failover:
        return []
    wanted = "true" if config.slot_failover else "false"
    if row[1] is not None:
        raise _in_use(config, row[1], wanted)
    statement = f"ALTER_REPLICATION_SLOT {sql.Identifier(config.slot).as_string(conn)} ( FAILOVER {wanted} )"
    try:
        with conninfo.connect(dsn, what="the database for replication", replication="database") as repl:
            repl.execute(statement)
    except pgerrors.ObjectInUse as exc:  # taken between the look and the command
        raise _in_use(config, None, wanted) from exc
    except pgerrors.InsufficientPrivilege as exc:
        raise from_driver(
            exc,
            f"cannot set failover {wanted} on replication slot {config.slot!r}",
            fixes={INSUFFICIENT_PRIVILEGE: lambda: check_replication(conn, managed.detect(conn)).fix or ""},
        ) from exc
    return [f"set failover {wanted} on replication slot {config.slot}"]


def _flag(conn: Conn, slot: str) -> tuple[bool, int | None] | None:
    """(failover, active_pid) of the logical slot ``slot``, None when there is none."""
    row = conn.execute(
        "SELECT failover, active_pid FROM pg_replication_slots"
        " WHERE slot_name = %s AND slot_type = 'logical'",
        [slot],
    ).fetchone()
    return (bool(row[0]), row[1]) if row is not None else None


def _in_use(config: Config, pid: int | None, wanted: str) -> SlotInUseError:
    who = f"PID {pid}" if pid is not None else "another process"
    return SlotInUseError(
        f"slot_failover: {wanted}, but replication slot {config.slot!r} has failover "
        f"{'false' if wanted == 'true' else 'true'} and is in use by {who}: the server alters a slot only "
        "while no one reads it",
        hint="stop the process reading it (every `listener run` of this slot), then `listener init` or "
        "`listener run` (it alters the slot before streaming)",
    )


# ---------------------------------------------------------------------------------------------------------
# `listener check`


def check_failover(
    conn: Conn, config: Config, *, state_dsn: str, standby_dsn: str | None = None
) -> list[CheckResult]:
    """With ``slot_failover: true``: the slot's flag, ``synchronized_standby_slots`` and the standbys seen
    from the primary (their physical slots, their connections), with what to set where; when the state
    schema is on this server too, synchronous replication; with ``standby_dsn``, the standby's own
    settings and its copy of the slot."""
    if not config.slot_failover:
        return []
    error = refused(config, conn.info.server_version)
    if error is not None:
        return [CheckResult("failover", False, error.message, error.hint)]
    physical = [
        PhysicalSlot(str(name), bool(active), app, sync_state)
        for name, active, app, sync_state in conn.execute(
            "SELECT s.slot_name, s.active, r.application_name, r.sync_state FROM pg_replication_slots s"
            " LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid"
            " WHERE s.slot_type = 'physical' ORDER BY s.slot_name"
        ).fetchall()
    ]
    row = conn.execute("SELECT current_setting('synchronized_standby_slots')").fetchone()
    named = [name.strip() for name in str(row[0] if row else "").split(",") if name.strip()]
    results = [_slot_flag(conn, config), _synchronized(conn, named, physical)]
    if _same_cluster(conn, state_dsn):
        results.append(_synchronous(conn, named, physical))
    if standby_dsn is None:
        results.append(_standby_advice(conn, named, physical))
    else:
        results.extend(check_standby(standby_dsn, config, named))
    return results


def _set(conn: Conn, name: str, value: str) -> str:
    """How to set ``name`` (a reloadable setting) on the server of ``conn``."""
    service = managed.detect(conn)
    if service is managed.SELF_HOSTED:
        return f"ALTER SYSTEM SET {name} = {value}; SELECT pg_reload_conf();"
    return service.set_parameter(name, value)


def _slot_flag(conn: Conn, config: Config) -> CheckResult:
    row = _flag(conn, config.slot)
    if row is None:
        return CheckResult("failover", True, f"slot {config.slot!r} will be created with failover by init")
    if row[0]:
        return CheckResult("failover", True, f"slot {config.slot!r} is a failover slot")
    if row[1] is not None:
        return CheckResult(
            "failover",
            False,
            f"slot {config.slot!r} has failover false and is in use by PID {row[1]}",
            "stop the process reading it, then `listener init` (it sets the slot's failover)",
        )
    return CheckResult("failover", False, f"slot {config.slot!r} has failover false", "listener init")


def _synchronized(conn: Conn, named: list[str], physical: list[PhysicalSlot]) -> CheckResult:
    """``synchronized_standby_slots``: set, naming physical slots that exist and stream."""
    name = "synchronized_standby_slots"
    active = {slot.name: slot.active for slot in physical}
    if not named:
        slots = [slot.name for slot in physical] or [EXAMPLE_PHYSICAL_SLOT]
        create = "" if physical else f"SELECT pg_create_physical_replication_slot('{slots[0]}');\n"
        return CheckResult(
            name,
            True,
            "synchronized_standby_slots is empty: listener may read changes before a standby has them, and "
            "after that standby's promotion its copy of the slot would stand before what listener read "
            "(a change made on the new primary in between could be skipped: lost)",
            create + _set(conn, name, "'" + ", ".join(slots) + "'") + "  -- the standbys that may take over",
            warning=True,
        )
    missing = [slot for slot in named if slot not in active]
    if missing:
        return CheckResult(
            name,
            False,
            f"synchronized_standby_slots names {', '.join(missing)}, which is not a physical slot here: "
            "logical walsenders, listener's too, wait for it",
            "\n".join(f"SELECT pg_create_physical_replication_slot('{slot}');" for slot in missing)
            + "  -- or correct synchronized_standby_slots",
        )
    idle = [slot for slot in named if not active[slot]]
    if idle:
        return CheckResult(
            name,
            True,
            f"synchronized_standby_slots = {', '.join(named)}, and no standby streams from "
            f"{', '.join(idle)}: listener receives nothing new until one does",
            f"start that standby (primary_slot_name = '{idle[0]}'), or take it out of {name}",
            warning=True,
        )
    return CheckResult(name, True, f"synchronized_standby_slots = {', '.join(named)}, each one streaming")


def _same_cluster(conn: Conn, dsn: str) -> bool:
    """Whether ``dsn`` names the server of ``conn`` (or a physical copy of it), however it is spelled."""
    query = "SELECT system_identifier FROM pg_control_system()"
    with conninfo.connection(dsn, what="the state database") as other:
        return other.execute(query).fetchone() == conn.execute(query).fetchone()


def _synchronous(conn: Conn, named: list[str], physical: list[PhysicalSlot]) -> CheckResult:
    """With the state schema on the primary: its commits must reach the standby before listener confirms
    them to the slot, else the standby's copy of the slot may be synced past the state it replays (after
    a failover listener stops there, naming the gap)."""
    name = "synchronous replication"
    row = conn.execute(
        "SELECT current_setting('synchronous_standby_names'), current_setting('synchronous_commit')"
    ).fetchone()
    names, commit = (str(row[0]), str(row[1])) if row else ("", "")
    standbys = [s for s in physical if s.name in named] or physical
    if names and commit in ("on", "remote_write", "remote_apply"):
        synchronous = [s.name for s in standbys if s.sync_state in ("sync", "quorum")]
        if synchronous:
            return CheckResult(name, True, f"the state schema's commits wait for {', '.join(synchronous)}")
        if any(s.active and s.sync_state is None for s in standbys):
            # pg_stat_replication shows a walsender's state only to pg_read_all_stats (and superusers)
            return CheckResult(
                name,
                True,
                f"synchronous_standby_names = {names}, but whether the standby keeping the slot is one of "
                "them is hidden from this role",
                f"GRANT pg_read_all_stats TO {sql.Identifier(conn.info.user).as_string(conn)};  -- to see it",
                warning=True,
            )
    app = next((s.application_name for s in standbys if s.application_name), EXAMPLE_PHYSICAL_SLOT)
    fix = _set(conn, "synchronous_standby_names", f"'{app}'") + "  -- commits on the primary wait for it"
    if commit not in ("on", "remote_write", "remote_apply"):
        role = sql.Identifier(conn.info.user).as_string(conn)
        fix += f"\nALTER ROLE {role} SET synchronous_commit = on;  -- it is {commit}"
    return CheckResult(
        name,
        True,
        "the state schema is on this server, and its commits do not wait for a standby that keeps the "
        "slot: after a failover the slot's copy may stand past the state the standby has, and listener "
        "then stops, naming the transactions whose events are lost (a backfill re-reads them)",
        fix,
        warning=True,
    )


def _standby_advice(conn: Conn, named: list[str], physical: list[PhysicalSlot]) -> CheckResult:
    """What each standby needs, from what the primary knows of it (``--standby`` checks the standby)."""
    slot = (named or [slot.name for slot in physical] or [EXAMPLE_PHYSICAL_SLOT])[0]
    row = conn.execute("SELECT current_database()").fetchone()
    database = str(row[0]) if row else "..."
    streaming = [f"{s.application_name or '?'} on slot {s.name}" for s in physical if s.active]
    seen = f"standbys streaming: {', '.join(streaming)}" if streaming else "no standby streams from a slot"
    return CheckResult(
        "standby",
        True,
        f"{seen}; a standby's own settings are not visible from here (`listener check --standby DSN` "
        "checks them)",
        "on each standby that may take over, then SELECT pg_reload_conf(); there:\n"
        "sync_replication_slots = on\n"
        "hot_standby_feedback = on\n"
        f"primary_slot_name = '{slot}'\n"
        f"primary_conninfo = '... dbname={database}'  -- slot synchronization needs a dbname",
        warning=True,
    )


def check_standby(dsn: str, config: Config, named: list[str]) -> list[CheckResult]:
    """The standby's settings for slot synchronization, and its copy of the slot."""
    try:
        conn = conninfo.connect(dsn, what="the standby", connect_timeout=CONNECT_TIMEOUT_S)
    except ListenerError as exc:
        return [CheckResult("standby", False, exc.message, exc.hint or "correct --standby")]
    with conn:
        where = conninfo.where(dsn)
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        if not (row and row[0]):
            return [CheckResult("standby", False, f"{where} is not a standby (not in recovery)",
                                "give --standby the DSN of a standby")]  # fmt: skip
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            [[*STANDBY_ON, "primary_slot_name", "primary_conninfo"]],
        ).fetchall()
        have = {str(name): str(value) for name, value in rows}
        out = [
            CheckResult(f"standby {name}", True, f"{name} = {want} ({where})")
            if have.get(name) == want
            else CheckResult(
                f"standby {name}",
                False,
                f"{name} is {have.get(name)!r} on {where}; slot synchronization needs {want}",
                _set(conn, name, want) + ("  -- wal_level: then restart" if name == "wal_level" else ""),
            )
            for name, want in STANDBY_ON.items()
        ]
        out.append(_primary_slot_name(conn, have.get("primary_slot_name", ""), named, where))
        out.append(_primary_conninfo(conn, have.get("primary_conninfo"), where))
        out.append(_standby_slot(conn, config, where))
        return out


def _primary_slot_name(conn: Conn, slot: str, named: list[str], where: str) -> CheckResult:
    name = "standby primary_slot_name"
    if not slot:
        fix = _set(conn, "primary_slot_name", f"'{named[0] if named else EXAMPLE_PHYSICAL_SLOT}'")
        return CheckResult(name, False, f"primary_slot_name is empty on {where}", fix)
    if slot not in named:
        return CheckResult(
            name,
            True,
            f"primary_slot_name = {slot!r} on {where}, which the primary's synchronized_standby_slots "
            "does not name: listener may read ahead of this standby",
            f"on the primary: add '{slot}' to synchronized_standby_slots",
            warning=True,
        )
    return CheckResult(name, True, f"primary_slot_name = {slot!r}, named by synchronized_standby_slots")


def _primary_conninfo(conn: Conn, value: str | None, where: str) -> CheckResult:
    name = "standby primary_conninfo"
    if value is None:  # superuser-only (or pg_read_all_settings)
        return CheckResult(
            name,
            True,
            f"primary_conninfo on {where} is not readable by this role: check that it has a dbname",
            warning=True,
        )
    try:
        has_dbname = bool(conninfo_to_dict(value).get("dbname"))
    except psycopg.ProgrammingError:  # not a conninfo: the server would not connect with it either
        has_dbname = False
    if has_dbname:
        return CheckResult(name, True, f"primary_conninfo on {where} names a database")
    return CheckResult(
        name,
        False,
        f"primary_conninfo on {where} names no database: slot synchronization needs one",
        _set(conn, "primary_conninfo", "'<its connection string> dbname=<a database>'"),
    )


def _standby_slot(conn: Conn, config: Config, where: str) -> CheckResult:
    row = conn.execute(
        "SELECT synced, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        [config.slot],
    ).fetchone()
    if row is not None and row[0]:
        return CheckResult("standby slot", True, f"slot {config.slot!r} is synced on {where}, at {row[1]}")
    return CheckResult(
        "standby slot",
        True,
        f"slot {config.slot!r} is not synced on {where} yet: promoted now, it would have no slot",
        "wait for the slot sync worker (it needs the settings above)",
        warning=True,
    )
