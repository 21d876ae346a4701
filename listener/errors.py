"""One root exception, a few families by cause.

Every error a user can cause says what is wrong, where (file:line, rule, LSN, byte offset) and how to fix
it.  The structured fields let callers (and tests) inspect the place without parsing the text.
"""

from __future__ import annotations

import asyncpg
import psycopg


class ListenerError(Exception):
    """Root of every error raised by listener on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  fix: {self.hint}"
        return self.message


class ProtocolError(ListenerError):
    """The server sent bytes that do not follow the replication or pgoutput protocol."""

    def __init__(self, message: str, *, offset: int, lsn: int | None = None, hint: str | None = None) -> None:
        where = f" at byte offset {offset}"
        if lsn is not None:
            where += f" of the message at LSN {lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
        super().__init__(message + where, hint=hint)
        self.what = message
        self.offset = offset
        self.lsn = lsn

    def at_lsn(self, lsn: int) -> ProtocolError:
        """The same error, naming the WAL position of the message it was found in."""
        return ProtocolError(self.what, offset=self.offset, lsn=lsn, hint=self.hint)


class ConfigError(ListenerError):
    """The configuration file or a rule in it is invalid."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        rule: str | None = None,
        hint: str | None = None,
    ) -> None:
        parts = []
        if file is not None:
            parts.append(f"{file}:{line}" if line is not None else file)
        if rule is not None:
            parts.append(f"rule {rule!r}")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message, hint=hint)
        self.file = file
        self.line = line
        self.rule = rule


class PrerequisiteError(ListenerError):
    """The database is not set up the way listener needs (wal_level, privileges, slot, tables)."""


class DatabaseError(ListenerError):
    """A database operation failed for a reason the user can act on (connection refused, auth, ...)."""


class SlotInUseError(PrerequisiteError):
    """The replication slot is active in another process."""


class ReplicationEnded(DatabaseError):
    """The server ended the COPY stream or the connection dropped; the caller may reconnect."""


# SQLSTATE classes worth retrying: connection exception, transaction rollback (serialization, deadlock),
# insufficient resources (disk full, too many connections), operator intervention (shutdown, a server
# starting up or in recovery), system error; and a read-only transaction (the database failing over).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")


def is_transient(exc: BaseException) -> bool:
    """Whether reconnecting may help: lost connections and server-side conditions that pass."""
    if isinstance(exc, (ReplicationEnded, OSError, asyncpg.InterfaceError, psycopg.OperationalError)):
        return True
    if isinstance(exc, asyncpg.InternalClientError):
        # asyncpg's protocol state, confused by a connection the server terminated mid-call ("cannot
        # switch to state 12; another operation is in progress"): a new connection cures it.
        return True
    if isinstance(exc, DatabaseError) and not isinstance(exc, PrerequisiteError):
        return True  # could not connect: the server may come back
    sqlstate = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "diag", None), "sqlstate", None)
    return isinstance(sqlstate, str) and (
        sqlstate.startswith(_TRANSIENT_SQLSTATE_CLASSES) or sqlstate == "25006"
    )
