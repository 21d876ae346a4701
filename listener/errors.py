"""Every error listener raises on purpose: one root, families by cause.

Every error a user can cause says what is wrong, where (file:line, rule, LSN, byte offset) and how to fix
it.  The structured fields let callers (and tests) inspect the place without parsing the text.

The sections, by cause: the root; protocol; config and rules; database and prerequisites (with
:func:`is_transient`); runs; requests refused.  ``listener.workflow`` re-exports the two a workflow's
author meets (:class:`StepError`, :class:`Fenced`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import asyncpg
import psycopg

# ---------------------------------------------------------------------------------------------------------
# The root.


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


def _lsn(lsn: int) -> str:
    """An LSN as PostgreSQL prints it (``listener.pg.lsn.format_lsn``, which this module cannot import)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def utc_text(value: datetime | None) -> str:
    """A time in messages: to the second, in UTC (``2025-03-01 12:00:04 UTC``); ``-`` for none."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "-"


# ---------------------------------------------------------------------------------------------------------
# Protocol: the server's bytes.


class ProtocolError(ListenerError):
    """The server sent bytes that do not follow the replication or pgoutput protocol."""

    def __init__(self, message: str, *, offset: int, lsn: int | None = None, hint: str | None = None) -> None:
        where = f" at byte offset {offset}"
        if lsn is not None:
            where += f" of the message at LSN {_lsn(lsn)}"
        super().__init__(message + where, hint=hint)
        self.what = message
        self.offset = offset
        self.lsn = lsn

    def at_lsn(self, lsn: int) -> ProtocolError:
        """The same error, naming the WAL position of the message it was found in."""
        return ProtocolError(self.what, offset=self.offset, lsn=lsn, hint=self.hint)


# ---------------------------------------------------------------------------------------------------------
# Config and rules: the configuration file, its rules, and a rule meeting a change.


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


class RuleEvaluationError(ListenerError):
    """A rule could not be evaluated for a change: the service stops there, acknowledging nothing past it."""

    def __init__(
        self, rule: str, table: str | None, *, lsn: int, commit_lsn: int, what: str, hint: str
    ) -> None:
        super().__init__(
            f"rule {rule!r} on {table} at LSN {_lsn(lsn)} (transaction {_lsn(commit_lsn)}): {what}",
            hint=hint.replace("<table>", table or "<table>"),
        )


class PredicateError(ListenerError, ValueError):
    """A ``when:`` expression that cannot be compiled: says what is wrong, quotes the part, gives the fix.

    ``fragment`` is the offending part (as PostgreSQL deparses it), ``position`` its 0-based character
    offset in the predicate text, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        text: str | None = None,
        fragment: str | None = None,
        position: int | None = None,
        hint: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        shown = message
        if text is not None and position is not None:
            shown += "\n" + _caret(text, position)
        super().__init__(shown, hint=hint)
        self.what = message
        self.text = text
        self.fragment = fragment
        self.position = position
        self.sqlstate = sqlstate  # set when a constant part always fails: the error PostgreSQL raises
        # True when PostgreSQL would accept the expression but listener cannot evaluate it exactly
        self.limitation = False


class EvaluationError(ListenerError):
    """Raised while evaluating, where PostgreSQL would raise (``sqlstate`` is its SQLSTATE).

    ``sqlstate`` is None when the failure is a limit of listener rather than an error PostgreSQL would
    raise (a date format listener does not parse)."""

    def __init__(self, message: str, sqlstate: str | None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.sqlstate = sqlstate


def _caret(text: str, position: int) -> str:
    """The line of ``text`` holding ``position``, with a caret under it."""
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    line = text[start : end if end >= 0 else len(text)]
    return f"  {line}\n  {' ' * (position - start)}^"


# ---------------------------------------------------------------------------------------------------------
# Database and prerequisites: what the database said, and what it lacks that listener needs.


class PrerequisiteError(ListenerError):
    """The database is not set up the way listener needs (wal_level, privileges, slot, tables)."""


class DatabaseError(ListenerError):
    """A database operation failed for a reason the user can act on (connection refused, auth, ...)."""


class ProcessDied(ListenerError):
    """A process the service started (a worker process of `listener run`) exited while the service ran."""


class SlotInUseError(PrerequisiteError):
    """The replication slot is active in another process."""


class Deposed(Exception):
    """Another replica leads the slot now: the state database refused this one's checkpoint write (its
    leader epoch is no longer the slot's, sql/0010_leaders.sql), and the events of that transaction."""


FENCED = "LF001"  # the SQLSTATE of that refusal


class ReplicationEnded(DatabaseError):
    """The server ended the COPY stream or the connection dropped; the caller may reconnect."""


# SQLSTATEs the translations below name (PostgreSQL's src/backend/utils/errcodes.txt).
INSUFFICIENT_PRIVILEGE = "42501"
UNDEFINED_TABLE = "42P01"
UNDEFINED_OBJECT = "42704"
DUPLICATE_OBJECT = "42710"
CONFIGURATION_LIMIT_EXCEEDED = "53400"
OBJECT_NOT_IN_PREREQUISITE_STATE = "55000"
OBJECT_IN_USE = "55006"
READ_ONLY_SQL_TRANSACTION = "25006"
# SQLSTATE classes worth retrying: connection exception, transaction rollback (serialization, deadlock),
# insufficient resources (disk full, too many connections), operator intervention (shutdown, a server
# starting up or in recovery), system error; and a read-only transaction (the database failing over).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")

Fix = str | Callable[[], str]  # a fix, or how to find it (asked of the database only when needed)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg or asyncpg exception; None for other exceptions and client-side errors."""
    code = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "diag", None), "sqlstate", None)
    return code if isinstance(code, str) else None


def from_driver(
    exc: BaseException,
    what: str,
    *,
    hint: str | None = None,
    fixes: Mapping[str, Fix] | None = None,
    error: type[DatabaseError] = DatabaseError,
    detail: bool = True,
) -> ListenerError:
    """The one translation of a driver's exception (psycopg, asyncpg, or the OSError of a connection) into
    listener's error, for the caller to raise ``from exc``.

    When the exception's SQLSTATE (or its class, two characters) is a key of ``fixes``, the database lacks
    something listener needs: a :class:`PrerequisiteError` (:class:`SlotInUseError` for object in use)
    "``what``: the server's message", with that fix.  Else an ``error`` (:class:`DatabaseError`, or
    :class:`ReplicationEnded` where the caller reconnects) "``what``: the driver's text", with ``hint``.
    Without ``detail`` the message is ``what`` alone."""
    code = sqlstate(exc)
    for state, fix in (fixes or {}).items():
        if code is not None and code.startswith(state):
            primary = getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc).strip()
            cls = SlotInUseError if code == OBJECT_IN_USE else PrerequisiteError
            return cls(f"{what}: {primary}" if detail else what, hint=fix if isinstance(fix, str) else fix())
    return error(f"{what}: {str(exc).strip()}" if detail else what, hint=hint)


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
    if _broker_transient(exc):
        return True
    code = sqlstate(exc)
    return code is not None and (
        code.startswith(_TRANSIENT_SQLSTATE_CLASSES) or code == READ_ONLY_SQL_TRANSACTION
    )


# The brokers' clients' errors that a new connection may cure (listener.ingest.brokers, kafka_sink), by
# module and class name, so that this module imports none of those clients.
_BROKER_TRANSIENT = frozenset(
    {
        ("redis.exceptions", "ConnectionError"),
        ("redis.exceptions", "TimeoutError"),
        ("redis.exceptions", "BusyLoadingError"),
        ("nats.errors", "ConnectionClosedError"),
        ("nats.errors", "NoServersError"),
        ("nats.errors", "StaleConnectionError"),
        ("nats.errors", "UnexpectedEOF"),
        ("nats.errors", "OutboundBufferLimitError"),
        ("nats.js.errors", "ServiceUnavailableError"),
        ("aiokafka.errors", "KafkaTimeoutError"),
    }
)


def _broker_transient(exc: BaseException) -> bool:
    for cls in type(exc).__mro__:
        if (cls.__module__, cls.__name__) in _BROKER_TRANSIENT:
            return True
        if cls.__module__.startswith("aiokafka.") and getattr(cls, "retriable", False) is True:
            return True  # aiokafka marks the errors worth retrying (connection, timeout, leader moved)
    return False


# ---------------------------------------------------------------------------------------------------------
# Runs: the queue's runs and the workflows' steps.


class NoSuchRun(ListenerError):
    """No run has this id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"no such run: {run_id!r}",
            hint="`listener runs` lists the runs and their ids (a retried run's id is KEY#N)",
        )
        self.run_id = run_id


class RunStateError(ListenerError):
    """The run's status does not allow what was asked (retry a pending run, cancel a done one...)."""

    def __init__(self, message: str, *, run_id: str, status: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.run_id = run_id
        self.status = status


class StepError(ListenerError):
    """A step was used wrongly (its result cannot be recorded, a transaction outside a step...)."""


class Fenced(ListenerError):
    """This worker no longer holds the run (its lease expired and another attempt took over)."""


# ---------------------------------------------------------------------------------------------------------
# Requests refused: a rewind, replay, backfill or reload that cannot be done (now, or as asked).


class OutsideWindow(ListenerError):
    """The rewind target lies before the oldest position the slot still keeps."""

    def __init__(self, target: str, *, oldest_lsn: int, oldest_time: datetime | None, hint: str) -> None:
        when = f" (committed {utc_text(oldest_time)})" if oldest_time is not None else ""
        super().__init__(
            f"{target} is outside the rewind window: the oldest reachable position is "
            f"{_lsn(oldest_lsn)}{when}",
            hint=hint,
        )
        self.oldest_lsn = oldest_lsn
        self.oldest_time = oldest_time


class OutsideJournal(ListenerError):
    """The replay's start lies before the oldest time the journal holds every change from."""

    def __init__(self, asked: str, *, since: datetime, keep: str | None) -> None:
        super().__init__(
            f"{asked} is outside the change journal: it holds every change committed since {utc_text(since)}",
            hint=f"replay from {utc_text(since)} or later; to reach further back, raise `journal.keep` "
            f"(now {keep}; the journal fills from then on), or use `listener rewind` within `retain:`",
        )
        self.since = since


class BackfillFailed(ListenerError):
    """A backfill cannot go on (it is marked failed, saying why); the ingest goes on."""


class ReloadDeferred(ListenerError):
    """A reload found no streaming session (one is starting, or restarting for a rewind): try again."""

    def __init__(self, why: str) -> None:
        super().__init__(f"cannot reload now: {why}", hint="try again in a moment")
