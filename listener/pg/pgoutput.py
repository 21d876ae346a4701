"""Sans-IO decoder of the ``pgoutput`` logical replication protocol, versions 1 to 4.

One :class:`Decoder` turns the payload of one XLogData message (the bytes after the 25-byte
``w`` header of the replication stream) into one frozen dataclass.  Nothing here does IO: the caller
moves the bytes, this module only parses them.

Wire format: PostgreSQL docs, "Logical Replication Message Formats"
(https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html) and
``src/backend/replication/logical/proto.c``.  All integers are big-endian; an ``Int64`` LSN and an
``Int32`` xid or OID are unsigned; a ``String`` is NUL-terminated.

Every malformed input raises :class:`~listener.errors.ProtocolError` with the byte offset (from the start
of the payload, the type byte being offset 0) where the problem was found.  ``IndexError``,
``struct.error`` and ``UnicodeDecodeError`` never escape.

Performance: Insert/Update/Delete are decoded for every row of every transaction, so their path is
written for CPython speed -- one ``bytes`` buffer, precompiled ``struct`` readers bound at module level,
one tight loop over the columns, and dataclass instances built through their slot descriptors (a frozen
dataclass ``__init__`` costs one ``object.__setattr__`` call per field, about twice as slow).
``bench/decode_micro.py`` measures it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from listener.errors import ProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "SUPPORTED_PROTOCOL_VERSIONS",
    "UNCHANGED_TOAST",
    "Begin",
    "BeginPrepare",
    "BinaryValue",
    "Column",
    "Commit",
    "CommitPrepared",
    "Decoder",
    "Delete",
    "Insert",
    "Message",
    "Origin",
    "PgOutputMessage",
    "Prepare",
    "Relation",
    "RollbackPrepared",
    "StreamAbort",
    "StreamCommit",
    "StreamPrepare",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "TupleData",
    "Type",
    "UnchangedToastType",
    "Update",
    "Value",
]

SUPPORTED_PROTOCOL_VERSIONS: Final = range(1, 5)


# --------------------------------------------------------------------------------------------------------
# Values


class UnchangedToastType:
    """Type of :data:`UNCHANGED_TOAST`; there is only ever one instance."""

    __slots__ = ()
    _instance: UnchangedToastType | None = None

    def __new__(cls) -> UnchangedToastType:
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        # Pickle and copy by reference to the module attribute, so the singleton stays a singleton.
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = UnchangedToastType()
"""A TOASTed column whose value did not change and which the server therefore did not send (kind ``u``)."""


@dataclass(frozen=True, slots=True)
class BinaryValue:
    """A column value sent in the type's binary send format (kind ``b``, subscription option binary)."""

    data: bytes


Value: TypeAlias = bytes | BinaryValue | UnchangedToastType | None
"""One column: text output as ``bytes`` (kind ``t``), NULL as ``None``, :class:`BinaryValue`, or
:data:`UNCHANGED_TOAST`."""

TupleData: TypeAlias = tuple[Value, ...]


# --------------------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class Begin:
    """``B``: start of a transaction; ``final_lsn`` is the LSN of its commit record."""

    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """``C``: end of the transaction opened by the last :class:`Begin`."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    """``O``: the transaction was replayed from another node (replication origin)."""

    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a :class:`Relation`; ``is_key`` marks a replica identity column."""

    is_key: bool
    name: str
    type_oid: int
    type_modifier: int


@dataclass(frozen=True, slots=True)
class Relation:
    """``R``: describes a table before the first change to it (and again after its schema changed).

    ``replica_identity`` is ``'d'`` (default: primary key), ``'n'`` (nothing), ``'f'`` (full row) or
    ``'i'`` (an index).  ``xid`` is set only inside a streamed transaction.
    """

    xid: int | None
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Type:
    """``Y``: describes a non-built-in data type (enum, domain base type, ...) used by a column."""

    xid: int | None
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """``I``: a new row."""

    xid: int | None
    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    """``U``: a changed row.

    ``old_kind`` is ``'K'`` when ``old`` holds only the replica identity columns (sent when the key
    changed; the other columns are ``None``), ``'O'`` when it holds the full old row (replica identity
    FULL), or ``None`` when no old tuple was sent.
    """

    xid: int | None
    relation_oid: int
    old: TupleData | None
    old_kind: str | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    """``D``: a deleted row; ``old_kind`` is ``'K'`` (key columns only) or ``'O'`` (full old row)."""

    xid: int | None
    relation_oid: int
    old: TupleData
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    """``T``: one TRUNCATE statement over one or more tables."""

    xid: int | None
    cascade: bool
    restart_identity: bool
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Message:
    """``M``: a ``pg_logical_emit_message()`` (sent only with the ``messages`` option)."""

    xid: int | None
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class StreamStart:
    """``S`` (v2+): the following changes, up to :class:`StreamStop`, belong to in-progress ``xid``."""

    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    """``E`` (v2+): end of a block of streamed changes."""


@dataclass(frozen=True, slots=True)
class StreamCommit:
    """``c`` (v2+): the streamed transaction ``xid`` committed."""

    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """``A`` (v2+): the streamed (sub)transaction aborted; ``subxid == xid`` for the top level.

    ``abort_lsn`` and ``abort_time`` are sent only with protocol v4 and ``streaming = parallel``.
    """

    xid: int
    subxid: int
    abort_lsn: int | None
    abort_time: datetime | None


@dataclass(frozen=True, slots=True)
class BeginPrepare:
    """``b`` (v3+, two_phase): start of a transaction that will be prepared with ``gid``."""

    prepare_lsn: int
    end_lsn: int
    prepare_time: datetime
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class Prepare:
    """``P`` (v3+): PREPARE TRANSACTION of the transaction opened by :class:`BeginPrepare`."""

    flags: int
    prepare_lsn: int
    end_lsn: int
    prepare_time: datetime
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class CommitPrepared:
    """``K`` (v3+): COMMIT PREPARED ``gid``."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class RollbackPrepared:
    """``r`` (v3+): ROLLBACK PREPARED ``gid``."""

    flags: int
    prepare_end_lsn: int
    rollback_end_lsn: int
    prepare_time: datetime
    rollback_time: datetime
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class StreamPrepare:
    """``p`` (v3+): PREPARE TRANSACTION of a streamed transaction."""

    flags: int
    prepare_lsn: int
    end_lsn: int
    prepare_time: datetime
    xid: int
    gid: str


PgOutputMessage: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | Message
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
    | BeginPrepare
    | Prepare
    | CommitPrepared
    | RollbackPrepared
    | StreamPrepare
)


# --------------------------------------------------------------------------------------------------------
# Wire types.  One Struct per wire type, built once; the bound unpack_from is what the hot path calls.

INT8: Final = "B"  # flags and single bytes (unsigned)
INT16: Final = "h"  # counts of columns (signed per the docs; a negative count is malformed)
INT32: Final = "i"  # lengths, type modifiers (signed)
OID: Final = "I"  # relation and type OIDs (unsigned)
XID: Final = "I"  # transaction ids (unsigned)
LSN: Final = "Q"  # XLogRecPtr (unsigned)
TIMESTAMP: Final = "q"  # microseconds since 2000-01-01 00:00 UTC (signed)

_unpack_int16: Final = struct.Struct(">" + INT16).unpack_from
_unpack_int32: Final = struct.Struct(">" + INT32).unpack_from
_unpack_oid_int8: Final = struct.Struct(">" + OID + INT8).unpack_from
_unpack_xid_oid_int8: Final = struct.Struct(">" + XID + OID + INT8).unpack_from

_SIZE: Final = {code: struct.calcsize(">" + code) for code in (INT8, INT16, INT32, OID, LSN, TIMESTAMP)}

# Tuple value kinds and old-tuple markers, as byte values (``buf[i]`` of a bytes object is an int).
_KIND_TEXT: Final = 0x74  # 't'
_KIND_NULL: Final = 0x6E  # 'n'
_KIND_UNCHANGED: Final = 0x75  # 'u'
_KIND_BINARY: Final = 0x62  # 'b'
_TUPLE_NEW: Final = 0x4E  # 'N'
_TUPLE_KEY: Final = 0x4B  # 'K'
_TUPLE_OLD: Final = 0x4F  # 'O'
_OLD_TUPLE_MARKERS: Final = frozenset((_TUPLE_KEY, _TUPLE_OLD))
_OLD_KIND: Final = {_TUPLE_KEY: "K", _TUPLE_OLD: "O"}

_REPLICA_IDENTITIES: Final = frozenset("dnfi")
_MESSAGE_TRANSACTIONAL: Final = 1
_TRUNCATE_CASCADE: Final = 1
_TRUNCATE_RESTART_IDENTITY: Final = 2
_COLUMN_IS_KEY: Final = 1

# Timestamps: PostgreSQL's epoch; DT_NOBEGIN/DT_NOEND (-/+infinity) and anything else outside what
# datetime can hold are clamped to datetime.min/max.
_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_DATETIME_MIN: Final = datetime.min.replace(tzinfo=UTC)
_DATETIME_MAX: Final = datetime.max.replace(tzinfo=UTC)


def _timestamp(microseconds: int) -> datetime:
    try:
        return _PG_EPOCH + timedelta(microseconds=microseconds)
    except OverflowError:
        return _DATETIME_MAX if microseconds > 0 else _DATETIME_MIN


class _Fields:
    """A run of fixed-size fields read with one ``Struct``.

    Knows each field's name and offset, so that a message cut short reports the first field that is
    missing and where it should have started.
    """

    __slots__ = ("_layout", "_unpack_from", "size")

    def __init__(self, *fields: tuple[str, str]) -> None:
        self._unpack_from = struct.Struct(">" + "".join(code for _, code in fields)).unpack_from
        layout = []
        offset = 0
        for name, code in fields:
            layout.append((name, code, offset))
            offset += _SIZE[code]
        self._layout: tuple[tuple[str, str, int], ...] = tuple(layout)
        self.size: int = offset

    def read(self, buf: bytes, pos: int, what: str) -> tuple[Any, ...]:
        """Unpack the fields at ``pos``; raise ProtocolError naming the first one that is cut short."""
        if len(buf) - pos < self.size:
            for name, code, offset in self._layout:
                if pos + offset + _SIZE[code] > len(buf):
                    raise _truncated(what, f"{name} ({_SIZE[code]} bytes)", pos + offset)
        return self._unpack_from(buf, pos)


_BEGIN: Final = _Fields(("final_lsn", LSN), ("commit_time", TIMESTAMP), ("xid", XID))
_COMMIT: Final = _Fields(("flags", INT8), ("commit_lsn", LSN), ("end_lsn", LSN), ("commit_time", TIMESTAMP))
_ORIGIN: Final = _Fields(("commit_lsn", LSN))
_XID: Final = _Fields(("xid", XID))
_OID: Final = _Fields(("oid", OID))
_REPLICA_IDENTITY: Final = _Fields(("replica identity", INT8))
_COLUMN_COUNT: Final = _Fields(("column count", INT16))
_COLUMN_FLAGS: Final = _Fields(("column flags", INT8))
_COLUMN_TYPE: Final = _Fields(("type oid", OID), ("type modifier", INT32))
_TRUNCATE: Final = _Fields(("relation count", INT32), ("option bits", INT8))
_MESSAGE: Final = _Fields(("flags", INT8), ("lsn", LSN))
_MESSAGE_LENGTH: Final = _Fields(("content length", INT32))
_STREAM_START: Final = _Fields(("xid", XID), ("first segment flag", INT8))
_STREAM_COMMIT: Final = _Fields(
    ("xid", XID), ("flags", INT8), ("commit_lsn", LSN), ("end_lsn", LSN), ("commit_time", TIMESTAMP)
)
_STREAM_ABORT: Final = _Fields(("xid", XID), ("subxid", XID))
_STREAM_ABORT_V4: Final = _Fields(("abort_lsn", LSN), ("abort_time", TIMESTAMP))
_BEGIN_PREPARE: Final = _Fields(
    ("prepare_lsn", LSN), ("end_lsn", LSN), ("prepare_time", TIMESTAMP), ("xid", XID)
)
_PREPARE: Final = _Fields(
    ("flags", INT8), ("prepare_lsn", LSN), ("end_lsn", LSN), ("prepare_time", TIMESTAMP), ("xid", XID)
)
_COMMIT_PREPARED: Final = _Fields(
    ("flags", INT8), ("commit_lsn", LSN), ("end_lsn", LSN), ("commit_time", TIMESTAMP), ("xid", XID)
)
_ROLLBACK_PREPARED: Final = _Fields(
    ("flags", INT8),
    ("prepare_end_lsn", LSN),
    ("rollback_end_lsn", LSN),
    ("prepare_time", TIMESTAMP),
    ("rollback_time", TIMESTAMP),
    ("xid", XID),
)


# --------------------------------------------------------------------------------------------------------
# Errors and small readers


def _truncated(what: str, expected: str, offset: int) -> ProtocolError:
    return ProtocolError(f"truncated {what} message: expected {expected}", offset=offset)


def _check_end(buf: bytes, pos: int, what: str) -> None:
    if pos != len(buf):
        raise ProtocolError(
            f"{len(buf) - pos} unexpected trailing bytes after the {what} message", offset=pos
        )


def _read_string(buf: bytes, pos: int, what: str, field: str) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 ``String`` at ``pos``; return it and the offset after the NUL."""
    nul = buf.find(b"\0", pos)
    if nul < 0:
        raise _truncated(what, f"NUL-terminated {field}", pos)
    try:
        return buf[pos:nul].decode(), nul + 1
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"invalid UTF-8 in the {field} of a {what} message", offset=pos + exc.start
        ) from None


def _read_xid(dec: Decoder, buf: bytes, what: str) -> tuple[int | None, int]:
    """Inside a Stream Start..Stream Stop block a change carries the xid right after the type byte."""
    if dec._in_stream:
        return _XID.read(buf, 1, what)[0], 5
    return None, 1


def _read_namespace(buf: bytes, pos: int, what: str) -> tuple[str, int]:
    namespace, pos = _read_string(buf, pos, what, "namespace")
    # The server sends an empty namespace for pg_catalog, to save space.
    return namespace or "pg_catalog", pos


# Build instances of the per-row messages through their slot descriptors: a frozen dataclass' __init__
# calls object.__setattr__ once per field, which doubles the cost of the whole Insert decode.
_new_object: Final = object.__new__
_set_insert_xid: Final = vars(Insert)["xid"].__set__
_set_insert_relation_oid: Final = vars(Insert)["relation_oid"].__set__
_set_insert_new: Final = vars(Insert)["new"].__set__
_set_update_xid: Final = vars(Update)["xid"].__set__
_set_update_relation_oid: Final = vars(Update)["relation_oid"].__set__
_set_update_old: Final = vars(Update)["old"].__set__
_set_update_old_kind: Final = vars(Update)["old_kind"].__set__
_set_update_new: Final = vars(Update)["new"].__set__
_set_delete_xid: Final = vars(Delete)["xid"].__set__
_set_delete_relation_oid: Final = vars(Delete)["relation_oid"].__set__
_set_delete_old: Final = vars(Delete)["old"].__set__
_set_delete_old_kind: Final = vars(Delete)["old_kind"].__set__
_set_binary_data: Final = vars(BinaryValue)["data"].__set__


def _binary_value(data: bytes) -> BinaryValue:
    value: BinaryValue = _new_object(BinaryValue)
    _set_binary_data(value, data)
    return value


# --------------------------------------------------------------------------------------------------------
# Tuples: the hot path


def _read_tuple(buf: bytes, pos: int, what: str) -> tuple[TupleData, int]:
    """Read ``TupleData`` at ``pos``: Int16 column count, then per column a kind byte and maybe a value.

    Return the values and the offset after them.
    """
    try:
        (natts,) = _unpack_int16(buf, pos)
    except struct.error:
        raise _truncated(what, "Int16 column count of the tuple", pos) from None
    if natts < 0:
        raise ProtocolError(f"negative column count {natts} in a {what} tuple", offset=pos)
    pos += 2
    end = len(buf)
    # values.append, not a bound ``append``: CPython 3.11 specializes the list.append call in place.
    values: list[Value] = []
    column = 0
    try:
        for column in range(natts):  # the error handlers name the column
            kind = buf[pos]
            if kind == _KIND_TEXT:
                (length,) = _unpack_int32(buf, pos + 1)
                start = pos + 5
                pos = start + length
                if length < 0 or pos > end:
                    raise _bad_length(what, column, length, end - start, start - 4)
                values.append(buf[start:pos])
            elif kind == _KIND_NULL:
                values.append(None)
                pos += 1
            elif kind == _KIND_UNCHANGED:
                values.append(UNCHANGED_TOAST)
                pos += 1
            elif kind == _KIND_BINARY:
                (length,) = _unpack_int32(buf, pos + 1)
                start = pos + 5
                pos = start + length
                if length < 0 or pos > end:
                    raise _bad_length(what, column, length, end - start, start - 4)
                values.append(_binary_value(buf[start:pos]))
            else:
                raise ProtocolError(
                    f"unknown value kind {chr(kind)!r} for column {column} of a {what} tuple"
                    " (expected 't', 'n', 'u' or 'b')",
                    offset=pos,
                )
    except IndexError:
        raise _truncated(what, f"value kind byte of column {column} (of {natts})", pos) from None
    except struct.error:
        raise _truncated(what, f"Int32 length of column {column} (of {natts})", pos + 1) from None
    return tuple(values), pos


def _bad_length(what: str, column: int, length: int, available: int, offset: int) -> ProtocolError:
    if length < 0:
        return ProtocolError(f"negative length {length} of column {column} in a {what} tuple", offset=offset)
    return ProtocolError(
        f"length {length} of column {column} in a {what} tuple runs past the end of the message"
        f" ({available} bytes left)",
        offset=offset,
    )


def _decode_insert(dec: Decoder, buf: bytes) -> Insert:
    try:
        if dec._in_stream:
            xid, relation_oid, marker = _unpack_xid_oid_int8(buf, 1)
            pos = 10
        else:
            xid = None
            relation_oid, marker = _unpack_oid_int8(buf, 1)
            pos = 6
    except struct.error:
        raise _header_error(dec, buf, "Insert", "'N' (new tuple follows)") from None
    if marker != _TUPLE_NEW:
        raise ProtocolError(
            f"expected 'N' (new tuple) in an Insert message, got {chr(marker)!r}", offset=pos - 1
        )
    new, pos = _read_tuple(buf, pos, "Insert")
    if pos != len(buf):  # checked inline: no call on the hot path
        _check_end(buf, pos, "Insert")
    insert: Insert = _new_object(Insert)
    _set_insert_xid(insert, xid)
    _set_insert_relation_oid(insert, relation_oid)
    _set_insert_new(insert, new)
    return insert


def _decode_update(dec: Decoder, buf: bytes) -> Update:
    xid, pos = _read_xid(dec, buf, "Update")
    try:
        relation_oid, marker = _unpack_oid_int8(buf, pos)
    except struct.error:
        raise _header_error(dec, buf, "Update", "'K', 'O' or 'N'") from None
    pos += 5
    old: TupleData | None = None
    old_kind: str | None = None
    if marker in _OLD_TUPLE_MARKERS:
        old_kind = _OLD_KIND[marker]
        old, pos = _read_tuple(buf, pos, "Update")
        if pos >= len(buf):
            raise _truncated("Update", "'N' (new tuple follows)", pos)
        marker = buf[pos]
        pos += 1
        if marker != _TUPLE_NEW:
            raise ProtocolError(
                f"expected 'N' (new tuple) after the old tuple of an Update message, got {chr(marker)!r}",
                offset=pos - 1,
            )
    elif marker != _TUPLE_NEW:
        raise ProtocolError(
            f"expected 'K', 'O' or 'N' in an Update message, got {chr(marker)!r}", offset=pos - 1
        )
    new, pos = _read_tuple(buf, pos, "Update")
    _check_end(buf, pos, "Update")
    update: Update = _new_object(Update)
    _set_update_xid(update, xid)
    _set_update_relation_oid(update, relation_oid)
    _set_update_old(update, old)
    _set_update_old_kind(update, old_kind)
    _set_update_new(update, new)
    return update


def _decode_delete(dec: Decoder, buf: bytes) -> Delete:
    xid, pos = _read_xid(dec, buf, "Delete")
    try:
        relation_oid, marker = _unpack_oid_int8(buf, pos)
    except struct.error:
        raise _header_error(dec, buf, "Delete", "'K' or 'O'") from None
    pos += 5
    if marker not in _OLD_TUPLE_MARKERS:
        raise ProtocolError(f"expected 'K' or 'O' in a Delete message, got {chr(marker)!r}", offset=pos - 1)
    old, pos = _read_tuple(buf, pos, "Delete")
    _check_end(buf, pos, "Delete")
    delete: Delete = _new_object(Delete)
    _set_delete_xid(delete, xid)
    _set_delete_relation_oid(delete, relation_oid)
    _set_delete_old(delete, old)
    _set_delete_old_kind(delete, _OLD_KIND[marker])
    return delete


def _header_error(dec: Decoder, buf: bytes, what: str, marker: str) -> ProtocolError:
    """The header of a change message (xid?, relation OID, marker byte) is cut short: say what is missing."""
    _, pos = _read_xid(dec, buf, what)
    _OID.read(buf, pos, what)
    return _truncated(what, marker, pos + _SIZE[OID])


# --------------------------------------------------------------------------------------------------------
# The other messages


def _decode_begin(dec: Decoder, buf: bytes) -> Begin:
    final_lsn, commit_time, xid = _BEGIN.read(buf, 1, "Begin")
    _check_end(buf, 1 + _BEGIN.size, "Begin")
    return Begin(final_lsn, _timestamp(commit_time), xid)


def _decode_commit(dec: Decoder, buf: bytes) -> Commit:
    flags, commit_lsn, end_lsn, commit_time = _COMMIT.read(buf, 1, "Commit")
    _check_end(buf, 1 + _COMMIT.size, "Commit")
    return Commit(flags, commit_lsn, end_lsn, _timestamp(commit_time))


def _decode_origin(dec: Decoder, buf: bytes) -> Origin:
    (commit_lsn,) = _ORIGIN.read(buf, 1, "Origin")
    name, pos = _read_string(buf, 1 + _ORIGIN.size, "Origin", "origin name")
    _check_end(buf, pos, "Origin")
    return Origin(commit_lsn, name)


def _decode_relation(dec: Decoder, buf: bytes) -> Relation:
    what = "Relation"
    xid, pos = _read_xid(dec, buf, what)
    (oid,) = _OID.read(buf, pos, what)
    namespace, pos = _read_namespace(buf, pos + 4, what)
    name, pos = _read_string(buf, pos, what, "relation name")
    (identity_byte,) = _REPLICA_IDENTITY.read(buf, pos, what)
    replica_identity = chr(identity_byte)
    if replica_identity not in _REPLICA_IDENTITIES:
        raise ProtocolError(
            f"unknown replica identity {replica_identity!r} in a Relation message"
            " (expected 'd', 'n', 'f' or 'i')",
            offset=pos,
        )
    (natts,) = _COLUMN_COUNT.read(buf, pos + 1, what)
    if natts < 0:
        raise ProtocolError(f"negative column count {natts} in a Relation message", offset=pos + 1)
    pos += 3
    columns = []
    for _ in range(natts):
        (flags,) = _COLUMN_FLAGS.read(buf, pos, what)
        column_name, pos = _read_string(buf, pos + 1, what, "column name")
        type_oid, type_modifier = _COLUMN_TYPE.read(buf, pos, what)
        pos += _COLUMN_TYPE.size
        columns.append(Column(bool(flags & _COLUMN_IS_KEY), column_name, type_oid, type_modifier))
    _check_end(buf, pos, what)
    return Relation(xid, oid, namespace, name, replica_identity, tuple(columns))


def _decode_type(dec: Decoder, buf: bytes) -> Type:
    xid, pos = _read_xid(dec, buf, "Type")
    (oid,) = _OID.read(buf, pos, "Type")
    namespace, pos = _read_namespace(buf, pos + 4, "Type")
    name, pos = _read_string(buf, pos, "Type", "type name")
    _check_end(buf, pos, "Type")
    return Type(xid, oid, namespace, name)


def _decode_truncate(dec: Decoder, buf: bytes) -> Truncate:
    xid, pos = _read_xid(dec, buf, "Truncate")
    count, options = _TRUNCATE.read(buf, pos, "Truncate")
    if count < 0:
        raise ProtocolError(f"negative relation count {count} in a Truncate message", offset=pos)
    pos += _TRUNCATE.size
    # Check the size before unpacking, so a huge count cannot make us allocate anything.
    expected = pos + count * _SIZE[OID]
    if expected > len(buf):
        oid_index = (len(buf) - pos) // _SIZE[OID]
        raise _truncated("Truncate", f"relation oid {oid_index} (of {count})", pos + oid_index * _SIZE[OID])
    relation_oids = struct.unpack_from(f">{count}{OID}", buf, pos)
    _check_end(buf, expected, "Truncate")
    return Truncate(
        xid, bool(options & _TRUNCATE_CASCADE), bool(options & _TRUNCATE_RESTART_IDENTITY), relation_oids
    )


def _decode_message(dec: Decoder, buf: bytes) -> Message:
    xid, pos = _read_xid(dec, buf, "Message")
    flags, lsn = _MESSAGE.read(buf, pos, "Message")
    prefix, pos = _read_string(buf, pos + _MESSAGE.size, "Message", "prefix")
    (length,) = _MESSAGE_LENGTH.read(buf, pos, "Message")
    if length < 0:
        raise ProtocolError(f"negative content length {length} in a Message message", offset=pos)
    start = pos + _MESSAGE_LENGTH.size
    if start + length > len(buf):
        raise ProtocolError(
            f"content length {length} of a Message message runs past the end of the message"
            f" ({len(buf) - start} bytes left)",
            offset=pos,
        )
    _check_end(buf, start + length, "Message")
    return Message(xid, bool(flags & _MESSAGE_TRANSACTIONAL), lsn, prefix, buf[start:])


def _decode_stream_start(dec: Decoder, buf: bytes) -> StreamStart:
    if dec._in_stream:
        raise ProtocolError(
            "Stream Start inside a streamed block (no Stream Stop since the last one)", offset=0
        )
    xid, first_segment = _STREAM_START.read(buf, 1, "Stream Start")
    if first_segment > 1:
        raise ProtocolError(
            f"first segment flag is {first_segment} in a Stream Start (expected 0 or 1)", offset=5
        )
    _check_end(buf, 1 + _STREAM_START.size, "Stream Start")
    dec._in_stream = True
    return StreamStart(xid, first_segment == 1)


_STREAM_STOP: Final = StreamStop()


def _decode_stream_stop(dec: Decoder, buf: bytes) -> StreamStop:
    if not dec._in_stream:
        raise ProtocolError("Stream Stop outside a streamed block (no Stream Start before it)", offset=0)
    _check_end(buf, 1, "Stream Stop")
    dec._in_stream = False
    return _STREAM_STOP


def _decode_stream_commit(dec: Decoder, buf: bytes) -> StreamCommit:
    xid, flags, commit_lsn, end_lsn, commit_time = _STREAM_COMMIT.read(buf, 1, "Stream Commit")
    _check_end(buf, 1 + _STREAM_COMMIT.size, "Stream Commit")
    return StreamCommit(xid, flags, commit_lsn, end_lsn, _timestamp(commit_time))


def _decode_stream_abort(dec: Decoder, buf: bytes) -> StreamAbort:
    xid, subxid = _STREAM_ABORT.read(buf, 1, "Stream Abort")
    pos = 1 + _STREAM_ABORT.size
    # v4 adds the abort LSN and time, but only when the stream is applied in parallel (streaming =
    # parallel); the message itself does not say which, so its length decides.
    if dec.protocol_version >= 4 and len(buf) > pos:
        abort_lsn, abort_time = _STREAM_ABORT_V4.read(buf, pos, "Stream Abort")
        _check_end(buf, pos + _STREAM_ABORT_V4.size, "Stream Abort")
        return StreamAbort(xid, subxid, abort_lsn, _timestamp(abort_time))
    _check_end(buf, pos, "Stream Abort")
    return StreamAbort(xid, subxid, None, None)


def _decode_begin_prepare(dec: Decoder, buf: bytes) -> BeginPrepare:
    prepare_lsn, end_lsn, prepare_time, xid = _BEGIN_PREPARE.read(buf, 1, "Begin Prepare")
    gid, pos = _read_string(buf, 1 + _BEGIN_PREPARE.size, "Begin Prepare", "gid")
    _check_end(buf, pos, "Begin Prepare")
    return BeginPrepare(prepare_lsn, end_lsn, _timestamp(prepare_time), xid, gid)


def _decode_prepare(dec: Decoder, buf: bytes) -> Prepare:
    flags, prepare_lsn, end_lsn, prepare_time, xid = _PREPARE.read(buf, 1, "Prepare")
    gid, pos = _read_string(buf, 1 + _PREPARE.size, "Prepare", "gid")
    _check_end(buf, pos, "Prepare")
    return Prepare(flags, prepare_lsn, end_lsn, _timestamp(prepare_time), xid, gid)


def _decode_commit_prepared(dec: Decoder, buf: bytes) -> CommitPrepared:
    flags, commit_lsn, end_lsn, commit_time, xid = _COMMIT_PREPARED.read(buf, 1, "Commit Prepared")
    gid, pos = _read_string(buf, 1 + _COMMIT_PREPARED.size, "Commit Prepared", "gid")
    _check_end(buf, pos, "Commit Prepared")
    return CommitPrepared(flags, commit_lsn, end_lsn, _timestamp(commit_time), xid, gid)


def _decode_rollback_prepared(dec: Decoder, buf: bytes) -> RollbackPrepared:
    flags, prepare_end_lsn, rollback_end_lsn, prepare_time, rollback_time, xid = _ROLLBACK_PREPARED.read(
        buf, 1, "Rollback Prepared"
    )
    gid, pos = _read_string(buf, 1 + _ROLLBACK_PREPARED.size, "Rollback Prepared", "gid")
    _check_end(buf, pos, "Rollback Prepared")
    return RollbackPrepared(
        flags,
        prepare_end_lsn,
        rollback_end_lsn,
        _timestamp(prepare_time),
        _timestamp(rollback_time),
        xid,
        gid,
    )


def _decode_stream_prepare(dec: Decoder, buf: bytes) -> StreamPrepare:
    # Same layout as Prepare (proto.c writes both with one function).
    flags, prepare_lsn, end_lsn, prepare_time, xid = _PREPARE.read(buf, 1, "Stream Prepare")
    gid, pos = _read_string(buf, 1 + _PREPARE.size, "Stream Prepare", "gid")
    _check_end(buf, pos, "Stream Prepare")
    return StreamPrepare(flags, prepare_lsn, end_lsn, _timestamp(prepare_time), xid, gid)


# --------------------------------------------------------------------------------------------------------
# Dispatch on the type byte: a 256-entry tuple, indexed by the byte value.

_Handler: TypeAlias = "Callable[[Decoder, bytes], PgOutputMessage]"

_HANDLER_BY_TYPE: Final[dict[bytes, _Handler]] = {
    b"B": _decode_begin,
    b"C": _decode_commit,
    b"O": _decode_origin,
    b"R": _decode_relation,
    b"Y": _decode_type,
    b"I": _decode_insert,
    b"U": _decode_update,
    b"D": _decode_delete,
    b"T": _decode_truncate,
    b"M": _decode_message,
    b"S": _decode_stream_start,
    b"E": _decode_stream_stop,
    b"c": _decode_stream_commit,
    b"A": _decode_stream_abort,
    b"b": _decode_begin_prepare,
    b"P": _decode_prepare,
    b"K": _decode_commit_prepared,
    b"r": _decode_rollback_prepared,
    b"p": _decode_stream_prepare,
}


def _decode_unknown(dec: Decoder, buf: bytes) -> PgOutputMessage:
    raise ProtocolError(f"unknown pgoutput message type {chr(buf[0])!r}", offset=0)


_HANDLERS: Final[tuple[_Handler, ...]] = tuple(
    _HANDLER_BY_TYPE.get(bytes([byte]), _decode_unknown) for byte in range(256)
)


class Decoder:
    """Decode pgoutput messages, one XLogData payload at a time.

    Stateful: tracks whether we are inside a Stream Start..Stream Stop block, because inside one every
    change, relation, type and logical message carries an Int32 xid right after the type byte.  Use one
    decoder per replication connection (or call :meth:`reset` when the stream restarts).

    Messages of a newer protocol version than ``protocol_version`` are decoded all the same; the
    version only decides whether a Stream Abort may carry the v4 abort LSN and time.
    """

    __slots__ = ("_in_stream", "protocol_version")

    def __init__(self, protocol_version: int = 1) -> None:
        if (
            isinstance(protocol_version, bool)
            or not isinstance(protocol_version, int)
            or protocol_version not in SUPPORTED_PROTOCOL_VERSIONS
        ):
            raise ValueError(
                f"unsupported pgoutput protocol version {protocol_version!r} (supported: 1 to 4)"
            )
        self.protocol_version: Final = protocol_version
        self._in_stream = False

    @property
    def in_stream(self) -> bool:
        """True between a Stream Start and its Stream Stop."""
        return self._in_stream

    def reset(self) -> None:
        """Forget the stream state, e.g. after reconnecting: the server restarts outside any block."""
        self._in_stream = False

    def decode(self, data: bytes | bytearray | memoryview) -> PgOutputMessage:
        """Decode one pgoutput message (the XLogData payload, starting with its type byte).

        Raise :class:`~listener.errors.ProtocolError` if the bytes are not a complete, valid message; the
        error's ``offset`` counts from the type byte.  On error the stream state is unchanged.
        """
        # One copy of a memoryview up front is cheaper than a memoryview slice plus a bytes() per value.
        buf = data if type(data) is bytes else bytes(data)
        try:
            handler = _HANDLERS[buf[0]]
        except IndexError:
            raise ProtocolError("empty pgoutput message", offset=0) from None
        return handler(self, buf)

    def decode_in_place(self, data: bytes | bytearray | memoryview) -> PgOutputMessage:
        """:meth:`decode`, for a huge message: a row change is read where it lies, and only its values are
        copied out of it (memory holds the message and its values, not also a copy of the message)."""
        if type(data) is bytes or not data or data[0] not in _ROW_CHANGE_TYPES:
            return self.decode(data)
        msg = _HANDLERS[data[0]](self, memoryview(data))  # type: ignore[arg-type]  # read as bytes are
        if type(msg) is Insert:
            _set_insert_new(msg, _owned(msg.new))
        elif type(msg) is Update:
            _set_update_old(msg, _owned(msg.old))
            _set_update_new(msg, _owned(msg.new))
        else:
            _set_delete_old(msg, _owned(msg.old))  # type: ignore[union-attr]
        return msg

    def __repr__(self) -> str:
        return f"Decoder(protocol_version={self.protocol_version}, in_stream={self._in_stream})"


_ROW_CHANGE_TYPES: Final = frozenset(b"IUD")


def _owned(values: TupleData | None) -> TupleData | None:
    """Values read from a memoryview (Decoder.decode_in_place) as the bytes they are everywhere else."""
    if values is None:
        return None
    return tuple(
        v
        if v is None or v is UNCHANGED_TOAST
        else _binary_value(bytes(v.data))
        if isinstance(v, BinaryValue)
        else bytes(v)  # type: ignore[arg-type]
        for v in values
    )
