"""listener.errors: the one translation of driver errors, decided by SQLSTATE, and is_transient."""

from __future__ import annotations

import asyncpg
import psycopg
from psycopg import errors as pgerrors

from listener.errors import (
    INSUFFICIENT_PRIVILEGE,
    OBJECT_IN_USE,
    UNDEFINED_OBJECT,
    DatabaseError,
    PrerequisiteError,
    ReplicationEnded,
    SlotInUseError,
    from_driver,
    is_transient,
)


def test_a_mapped_sqlstate_is_a_prerequisite_with_its_fix() -> None:
    exc = pgerrors.UndefinedObject('replication slot "s" does not exist')
    out = from_driver(exc, "cannot start replication", fixes={UNDEFINED_OBJECT: "run `listener init`"})
    assert type(out) is PrerequisiteError
    assert out.message == 'cannot start replication: replication slot "s" does not exist'
    assert out.hint == "run `listener init`"
    assert not is_transient(out)


def test_a_sqlstate_class_maps_too_and_object_in_use_is_slot_in_use() -> None:
    out = from_driver(pgerrors.InsufficientPrivilege("denied"), "x", fixes={"42": "grant it"})
    assert type(out) is PrerequisiteError and out.hint == "grant it"
    busy = from_driver(pgerrors.ObjectInUse("active"), "slot busy", fixes={OBJECT_IN_USE: "stop it"})
    assert isinstance(busy, SlotInUseError) and busy.message == "slot busy: active"


def test_a_fix_found_by_asking_is_asked_only_for_its_sqlstate() -> None:
    asked: list[str] = []

    def fix() -> str:
        asked.append("privilege")
        return "GRANT CREATE ON DATABASE d TO r"

    other = from_driver(pgerrors.UndefinedTable("no table"), "cannot", fixes={INSUFFICIENT_PRIVILEGE: fix})
    assert type(other) is DatabaseError and asked == []
    mine = from_driver(
        pgerrors.InsufficientPrivilege("denied"), "cannot", fixes={INSUFFICIENT_PRIVILEGE: fix}
    )
    assert mine.hint == "GRANT CREATE ON DATABASE d TO r" and asked == ["privilege"]


def test_anything_else_is_a_database_error_with_the_drivers_text() -> None:
    out = from_driver(
        psycopg.OperationalError("connection refused\n"), "cannot connect to the database", hint="h"
    )
    assert type(out) is DatabaseError
    assert out.message == "cannot connect to the database: connection refused" and out.hint == "h"
    assert is_transient(out)
    pg = from_driver(asyncpg.InvalidPasswordError("password authentication failed"), "cannot connect")
    assert type(pg) is DatabaseError and pg.message == "cannot connect: password authentication failed"
    lost = from_driver(
        psycopg.OperationalError("server closed"), "replication connection lost", error=ReplicationEnded
    )
    assert type(lost) is ReplicationEnded and is_transient(lost)
    bare = from_driver(pgerrors.LockNotAvailable("lock timeout"), "run 'r' stayed locked", detail=False)
    assert bare.message == "run 'r' stayed locked"


def test_is_transient_decides_by_sqlstate_class() -> None:
    assert is_transient(pgerrors.SerializationFailure("x"))  # 40001
    assert is_transient(pgerrors.AdminShutdown("x"))  # 57P01
    assert is_transient(pgerrors.ReadOnlySqlTransaction("x"))  # 25006
    assert not is_transient(pgerrors.UndefinedTable("x"))  # 42P01
    assert not is_transient(ValueError("x"))
