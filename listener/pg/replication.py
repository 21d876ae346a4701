"""The walsender session: START_REPLICATION and the COPY_BOTH stream over psycopg's libpq connection.

The framing of the stream (XLogData, primary keepalive, standby status update) is written as pure
functions at the top of this module so it can be tested with bytes alone; :class:`ReplicationSession` only
moves bytes between libpq and the event loop.  See the PostgreSQL docs, "Streaming Replication Protocol",
for the message layouts.

libpq is used in non-blocking mode: ``get_copy_data(async=1)`` returns what is already buffered, and when
nothing is, we wait for the socket to be readable on the asyncio loop and call ``consume_input``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import errors as pgerrors
from psycopg import pq

from listener.defaults import FLUSH_REPORT_DELAY_S, READ_BATCH_BYTES, READ_BATCH_MESSAGES, STATUS_INTERVAL_S
from listener.errors import (
    CONFIGURATION_LIMIT_EXCEEDED,
    DUPLICATE_OBJECT,
    OBJECT_IN_USE,
    UNDEFINED_OBJECT,
    DatabaseError,
    ProtocolError,
    ReplicationEnded,
    from_driver,
)
from listener.pg.conninfo import connect_async
from listener.pg.lsn import format_lsn, parse_lsn

logger = logging.getLogger(__name__)


_PG_EPOCH_US = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000

_xlogdata_header = struct.Struct(">cQQq")  # 'w', dataStart, walEnd, sendTime
_keepalive = struct.Struct(">cQqB")  # 'k', walEnd, sendTime, replyRequested
_status_update = struct.Struct(">cQQQqB")  # 'r', write, flush, apply, clock, replyRequested
XLOGDATA_HEADER_SIZE = _xlogdata_header.size


def pg_now_us() -> int:
    """Microseconds since 2000-01-01 UTC, the replication protocol's clock."""
    return time.time_ns() // 1000 - _PG_EPOCH_US


@dataclass(frozen=True, slots=True)
class Keepalive:
    wal_end: int
    send_time: int
    reply_requested: bool


def parse_keepalive(buf: bytes | memoryview) -> Keepalive:
    if len(buf) != _keepalive.size:
        raise ProtocolError(
            f"primary keepalive message of {len(buf)} bytes, expected {_keepalive.size}",
            offset=min(len(buf), _keepalive.size),
        )
    _, wal_end, send_time, reply = _keepalive.unpack(buf)
    return Keepalive(wal_end, send_time, bool(reply))


def parse_xlogdata_header(buf: bytes | memoryview) -> tuple[int, int]:
    """Return (data_start, wal_end) of an XLogData message; the payload starts at XLOGDATA_HEADER_SIZE."""
    if len(buf) < XLOGDATA_HEADER_SIZE:
        raise ProtocolError(
            f"XLogData message of {len(buf)} bytes is shorter than its {XLOGDATA_HEADER_SIZE}-byte header",
            offset=len(buf),
        )
    _, start, end, _ = _xlogdata_header.unpack_from(buf)
    return start, end


def encode_status_update(write: int, flush: int, apply: int, *, reply: bool = False) -> bytes:
    """A Standby Status Update ('r'): the positions written, flushed (durable) and applied."""
    return _status_update.pack(b"r", write, flush, apply, pg_now_us(), 1 if reply else 0)


def protocol_version_for(server_version: int) -> int:
    """The highest pgoutput protocol version a server supports (v4: PG16, v3: PG15, v2: PG14)."""
    if server_version >= 160000:
        return 4
    if server_version >= 150000:
        return 3
    if server_version >= 140000:
        return 2
    return 1


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quote_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def publication_names(publication: str | Sequence[str]) -> str:
    """The ``publication_names`` option of pgoutput: a quoted, comma-separated list of quoted names."""
    names = [publication] if isinstance(publication, str) else list(publication)
    return _quote_literal(",".join(_quote_ident(name) for name in names))


class ReplicationSession:
    """One walsender connection streaming a logical slot with pgoutput.

    Usage::

        session = await ReplicationSession.open(dsn, slot="listener", publication="listener", start_lsn=cp)
        while True:
            for start_lsn, payload in await session.read():
                ...
            session.confirm(durable_lsn)   # never beyond what is committed in the state database
    """

    def __init__(self, conn: psycopg.AsyncConnection[tuple[object, ...]], *, slot: str) -> None:
        self.conn = conn
        self.pgconn = conn.pgconn
        self.slot = slot
        self.server_version = conn.info.server_version
        self.protocol_version = protocol_version_for(self.server_version)
        self.status_interval = STATUS_INTERVAL_S
        self.received_lsn = 0  # highest WAL position seen (XLogData end or keepalive wal_end)
        self.received_at = time.monotonic()  # when the last XLogData arrived (or the session started)
        # The server's sent position from its last keepalive: every transaction committed before it has
        # been sent to us already (used to advance an idle checkpoint).
        self.keepalive_lsn = 0
        self.flushed_lsn = 0  # what we may report as durable
        self._reported_flush = -1
        self._flush_advanced_at: float | None = None
        self._last_status = 0.0
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self.drained = True

    # -- connecting --------------------------------------------------------------------------------------

    @classmethod
    async def connect(cls, dsn: str, *, slot: str) -> ReplicationSession:
        # The walsender prints values with the session's output settings: connect_async pins them, so a
        # database's own settings (extra_float_digits = 0, DateStyle = German, bytea_output = escape...)
        # cannot change what values we decode.
        try:
            conn = await connect_async(
                dsn,
                what="the database for replication",
                replication="database",
                fallback_application_name="listener",  # who holds the slot, in pg_stat_activity
            )
        except DatabaseError as exc:
            raise DatabaseError(
                exc.message,
                hint="check the DSN (--dsn / LISTENER_DSN) and that the role has the REPLICATION attribute "
                "and a pg_hba.conf entry allowing it",
            ) from exc.__cause__
        return cls(conn, slot=slot)

    async def create_slot(self, *, temporary: bool = False) -> int:
        """CREATE_REPLICATION_SLOT for pgoutput; return its consistent point (where streaming may start)."""
        snapshot = "(SNAPSHOT 'nothing')" if self.server_version >= 150000 else "NOEXPORT_SNAPSHOT"
        temp = "TEMPORARY " if temporary else ""
        cur = self.conn.cursor()
        try:
            await cur.execute(
                f"CREATE_REPLICATION_SLOT {_quote_ident(self.slot)} {temp}LOGICAL pgoutput {snapshot}"
            )
        except pgerrors.DuplicateObject as exc:
            raise from_driver(
                exc,
                f"replication slot {self.slot!r} already exists",
                fixes={DUPLICATE_OBJECT: "choose another slot name"},
                detail=False,
            ) from exc
        row = await cur.fetchone()
        assert row is not None
        return parse_lsn(str(row[1]))

    async def copy_slot(self, source: str) -> int:
        """Make this session's slot a temporary copy of the logical slot ``source`` (same restart and
        confirmed positions; ``source`` may be in use by another process meanwhile: the server copies it
        without acquiring it).  The copy belongs to this connection and is dropped when it closes.
        Returns the copy's confirmed_flush_lsn."""
        cur = self.conn.cursor()
        try:
            await cur.execute(
                "SELECT lsn::text FROM pg_copy_logical_replication_slot("
                f"{_quote_literal(source)}, {_quote_literal(self.slot)}, true)"
            )
        except psycopg.Error as exc:
            raise from_driver(
                exc,
                f"cannot copy replication slot {source!r}",
                fixes={
                    UNDEFINED_OBJECT: "run `listener init` to create the slot and publication",
                    CONFIGURATION_LIMIT_EXCEEDED: "a dry run needs one more replication slot for a moment: "
                    "raise max_replication_slots (then restart PostgreSQL), or drop an unused slot",
                },
            ) from exc
        row = await cur.fetchone()
        assert row is not None and row[0] is not None
        return parse_lsn(str(row[0]))

    async def start(
        self,
        *,
        publication: str | Sequence[str],
        start_lsn: int,
        flush_lsn: int | None = None,
        messages: bool = True,
        protocol_version: int | None = None,
    ) -> None:
        """START_REPLICATION from ``start_lsn``, streaming the changes of one publication or of several
        (a table's changes are sent once).

        The server starts at max(start_lsn, the slot's confirmed_flush_lsn): it never goes back before what
        was confirmed (logical.c, CreateDecodingContext), and skips transactions whose commit record begins
        before that point.  ``flush_lsn`` is the flush position to report until ``confirm`` moves it
        (default: ``start_lsn``); with a retention window it is the slot's confirmed position, so starting
        at the checkpoint does not confirm the window away.
        """
        if protocol_version is not None:
            self.protocol_version = protocol_version
        options = [
            f"proto_version '{self.protocol_version}'",
            f"publication_names {publication_names(publication)}",
        ]
        if messages and self.server_version >= 140000:
            options.append("messages 'true'")
        # streaming stays off: the server spills big transactions to disk and sends each one whole at
        # commit, so its Begin already carries the commit LSN our idempotency keys need.
        command = (
            f"START_REPLICATION SLOT {_quote_ident(self.slot)} LOGICAL {format_lsn(start_lsn)} "
            f"({', '.join(options)})"
        )
        logger.debug("%s", command)
        try:
            await self.conn.cursor().execute(command)
        except pgerrors.ObjectInUse as exc:
            raise from_driver(
                exc,
                f"replication slot {self.slot!r} is in use by another process",
                fixes={
                    OBJECT_IN_USE: "stop the other listener (or pg_recvlogical) using it, or give this "
                    "configuration a slot of its own (`slot: NAME`); SELECT active_pid FROM "
                    f"pg_replication_slots WHERE slot_name = {_quote_literal(self.slot)} names the process"
                },
            ) from exc
        except pgerrors.UndefinedObject as exc:
            raise from_driver(
                exc,
                "cannot start replication",
                fixes={UNDEFINED_OBJECT: "run `listener init` to create the slot and publication"},
            ) from exc
        except psycopg.Error as exc:
            raise from_driver(exc, "START_REPLICATION failed") from exc
        self.received_lsn = max(self.received_lsn, start_lsn)
        self.flushed_lsn = max(self.flushed_lsn, start_lsn if flush_lsn is None else flush_lsn)
        self._last_status = time.monotonic()

    # -- streaming ---------------------------------------------------------------------------------------

    def confirm(self, lsn: int) -> None:
        """Declare everything up to ``lsn`` durable: it becomes the flush position sent to the server."""
        if lsn > self.flushed_lsn:
            self.flushed_lsn = lsn
            if self._flush_advanced_at is None:
                self._flush_advanced_at = time.monotonic()
            # a reader idling until the next status update must now report within FLUSH_REPORT_DELAY_S
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    async def read(
        self, max_messages: int = READ_BATCH_MESSAGES, *, block: bool = True, wait_s: float | None = None
    ) -> list[tuple[int, memoryview]]:
        """Return the next XLogData payloads as (data_start LSN, payload).

        When nothing is buffered: with ``block``, wait for data (returning an empty list when a keepalive
        arrived, a status update fell due or ``wait_s`` seconds passed meanwhile); without, return at once.
        Afterwards ``drained``
        tells whether libpq's buffer was emptied (False: ``max_messages`` were returned and more may be
        waiting).  Keepalives are answered here.
        """
        out: list[tuple[int, memoryview]] = []
        deadline = None if wait_s is None else time.monotonic() + wait_s
        pgconn = self.pgconn
        get = pgconn.get_copy_data
        self.drained = False
        room = READ_BATCH_BYTES  # a few huge rows are returned one by one, not all at once
        while len(out) < max_messages and room > 0:
            nbytes, data = get(1)
            if nbytes > 0:
                assert isinstance(data, memoryview)
                kind = data[0]
                if kind == 0x77:  # 'w' XLogData
                    start, end = parse_xlogdata_header(data)
                    if end > self.received_lsn:
                        self.received_lsn = end
                    out.append((start, data[XLOGDATA_HEADER_SIZE:]))
                    room -= nbytes
                elif kind == 0x6B:  # 'k' primary keepalive
                    ka = parse_keepalive(data)
                    if ka.wal_end > self.received_lsn:
                        self.received_lsn = ka.wal_end
                    self.keepalive_lsn = max(self.keepalive_lsn, ka.wal_end)
                    if ka.reply_requested:
                        await self.send_status(reply=False)
                    if not out:
                        # the server's position moved: let the caller see it (an idle checkpoint, the end
                        # of a rewind's range) rather than waiting for the next data or status update
                        break
                else:
                    raise ProtocolError(f"unknown replication message type {chr(kind)!r}", offset=0)
            elif nbytes == 0:
                self.drained = True
                if out or not block:
                    break
                await self._maybe_send_status()
                timeout = self._time_to_next_status()
                if deadline is not None:
                    timeout = min(timeout, max(deadline - time.monotonic(), 0.0))
                if await self._wait_readable(timeout):
                    self._consume_input()
                else:
                    if out:
                        self.received_at = time.monotonic()
                    return out
            elif nbytes == -1:
                raise ReplicationEnded(self._end_of_copy_message())
            else:
                raise ReplicationEnded(f"replication stream failed: {self._error_message()}")
        if out:
            self.received_at = time.monotonic()
        await self._maybe_send_status()
        return out

    async def send_status(self, *, reply: bool = False) -> None:
        flush = self.flushed_lsn
        # write/apply are what we received and processed; only flush matters for the slot, and it is
        # never beyond what is durable in the state database.
        self._put(encode_status_update(max(self.received_lsn, flush), flush, flush, reply=reply))
        await self._flush_output()
        self._reported_flush = flush
        self._flush_advanced_at = None
        self._last_status = time.monotonic()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.pgconn.status == pq.ConnStatus.OK and self._reported_flush != self.flushed_lsn:
                await self.send_status()
        with contextlib.suppress(Exception):
            await self.conn.close()

    # -- internals ---------------------------------------------------------------------------------------

    def _time_to_next_status(self) -> float:
        now = time.monotonic()
        due = self._last_status + self.status_interval
        if self._flush_advanced_at is not None:
            due = min(due, self._flush_advanced_at + FLUSH_REPORT_DELAY_S)
        return max(0.0, due - now)

    async def _maybe_send_status(self) -> None:
        if self._time_to_next_status() <= 0.0:
            await self.send_status()

    def _consume_input(self) -> None:
        try:
            self.pgconn.consume_input()
        except psycopg.OperationalError as exc:
            raise from_driver(exc, "replication connection lost", error=ReplicationEnded) from exc

    def _put(self, data: bytes) -> None:
        try:
            if self.pgconn.put_copy_data(data) != 1:
                raise ReplicationEnded(f"cannot send to the server: {self._error_message()}")
        except psycopg.OperationalError as exc:
            raise from_driver(exc, "replication connection lost", error=ReplicationEnded) from exc

    async def _flush_output(self) -> None:
        while True:
            try:
                pending = self.pgconn.flush()
            except psycopg.OperationalError as exc:
                raise from_driver(exc, "replication connection lost", error=ReplicationEnded) from exc
            if pending == 0:
                return
            await self._wait_fd(writable=True, timeout=None)

    async def _wait_readable(self, timeout: float) -> bool:
        return await self._wait_fd(writable=False, timeout=timeout)

    async def _wait_fd(self, *, writable: bool, timeout: float | None) -> bool:
        fd = self.pgconn.socket
        fut: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        add, remove = (
            (self._loop.add_writer, self._loop.remove_writer)
            if writable
            else (self._loop.add_reader, self._loop.remove_reader)
        )
        add(fd, ready)
        if not writable:
            self._waiter = fut
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives as
            # the future completes, leaving a cancelled reader running.
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            remove(fd)
            if not writable:
                self._waiter = None

    def _error_message(self) -> str:
        return (self.pgconn.error_message or b"").decode("utf-8", "replace").strip() or "connection lost"

    def _end_of_copy_message(self) -> str:
        result = self.pgconn.get_result()
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            msg = (result.error_message or b"").decode("utf-8", "replace").strip()
            return f"the server ended replication: {msg}"
        return "the server ended the replication stream"
