"""Tests of the pgoutput decoder: golden payloads from a real server, hand-built messages, malformed input.

The golden files in tests/fixtures/pgoutput/ come from tests/fixtures/capture_pgoutput.py (PostgreSQL 18);
OIDs of user tables and types vary between captures, so tests look them up by name.
"""

from __future__ import annotations

import copy
import json
import pickle
import struct
from collections.abc import Iterator, Sequence
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listener.errors import ProtocolError
from listener.pg.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    BinaryValue,
    Column,
    Commit,
    CommitPrepared,
    Decoder,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputMessage,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    UnchangedToastType,
    Update,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pgoutput"
FIXTURE_VERSIONS = {"v1": 1, "v3_binary": 3, "v4": 4}
MESSAGE_CLASSES = (
    Begin,
    Commit,
    Origin,
    Relation,
    Type,
    Insert,
    Update,
    Delete,
    Truncate,
    Message,
    StreamStart,
    StreamStop,
    StreamCommit,
    StreamAbort,
    BeginPrepare,
    Prepare,
    CommitPrepared,
    RollbackPrepared,
    StreamPrepare,
)

# Built-in type OIDs (pg_type.dat).
BOOL, BYTEA, INT8, INT4, TEXT, INT4_ARRAY = 16, 17, 20, 23, 25, 1007
VARCHAR, TIMESTAMPTZ, NUMERIC, UUID, JSONB = 1043, 1184, 1700, 2950, 3802
T_TYPES_COLUMNS = ("id", "i", "t", "n", "vc", "j", "b", "ts", "raw", "u", "m", "p", "arr", "big")
FIRST_ROW = (
    b"1",
    b"42",
    b"hello",
    b"3.14",
    b"short",
    b'{"a": [1, 2]}',
    b"t",
    b"2024-01-02 03:04:05.123456+00",
    b"\\xdeadbeef",
    b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    b"happy",
    b"7",
    b"{1,2,3}",
    b"x" * 5000,
)
NULLS_13 = (None,) * 13
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
NOW_US = 786_000_000_000_000  # 2024-11-27, as microseconds since 2000-01-01
NOW = EPOCH + timedelta(microseconds=NOW_US)


# --------------------------------------------------------------------------------------------------------
# Fixture helpers


@cache
def payloads(name: str) -> tuple[bytes, ...]:
    document = json.loads((FIXTURES / f"{name}.json").read_text())
    return tuple(bytes.fromhex(message["data"]) for message in document["messages"])


@cache
def decoded(name: str, version: int | None = None) -> tuple[PgOutputMessage, ...]:
    decoder = Decoder(FIXTURE_VERSIONS[name] if version is None else version)
    return tuple(decoder.decode(payload) for payload in payloads(name))


def relations(messages: Sequence[PgOutputMessage]) -> dict[str, Relation]:
    """The last Relation message per table name."""
    return {m.name: m for m in messages if isinstance(m, Relation)}


def rows(messages: Sequence[PgOutputMessage], table: str) -> list[Insert | Update | Delete]:
    oid = relations(messages)[table].oid
    return [m for m in messages if isinstance(m, Insert | Update | Delete) and m.relation_oid == oid]


def transactions(messages: Sequence[PgOutputMessage]) -> Iterator[list[PgOutputMessage]]:
    """Begin..Commit groups (non-streamed, non-prepared)."""
    current: list[PgOutputMessage] | None = None
    for message in messages:
        if isinstance(message, Begin):
            current = [message]
        elif current is not None:
            current.append(message)
            if isinstance(message, Commit):
                yield current
                current = None


def find(messages: Sequence[PgOutputMessage], cls: type, **fields: object) -> list[PgOutputMessage]:
    return [m for m in messages if isinstance(m, cls) and all(getattr(m, k) == v for k, v in fields.items())]


# --------------------------------------------------------------------------------------------------------
# Hand-built wire bytes


def string(text: str) -> bytes:
    return text.encode() + b"\0"


def text_value(value: bytes) -> bytes:
    return b"t" + struct.pack(">i", len(value)) + value


def tuple_data(*columns: bytes) -> bytes:
    """``columns`` are already-encoded column entries (text_value(...), b"n", b"u", ...)."""
    return struct.pack(">h", len(columns)) + b"".join(columns)


def xid_prefix(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack(">I", xid)


def in_stream_decoder(version: int = 4) -> Decoder:
    decoder = Decoder(version)
    decoder.decode(b"S" + struct.pack(">IB", 700, 1))
    assert decoder.in_stream
    return decoder


ROW = tuple_data(text_value(b"42"), b"n", b"u", b"b" + struct.pack(">i", 4) + b"\x00\x00\x00\x07")
ROW_VALUES = (b"42", None, UNCHANGED_TOAST, BinaryValue(b"\x00\x00\x00\x07"))


# --------------------------------------------------------------------------------------------------------
# Golden fixtures: every message decodes


@pytest.mark.parametrize("name", sorted(FIXTURE_VERSIONS))
def test_fixture_decodes_completely(name: str) -> None:
    decoder = Decoder(FIXTURE_VERSIONS[name])
    depth = 0
    for payload in payloads(name):
        message = decoder.decode(payload)
        assert isinstance(message, MESSAGE_CLASSES)
        depth += isinstance(message, StreamStart) - isinstance(message, StreamStop)
        assert decoder.in_stream == (depth == 1)
        # the in-stream xid prefix is present exactly inside Stream Start..Stop
        if isinstance(message, Insert | Update | Delete | Relation | Type | Truncate):
            assert (message.xid is not None) == decoder.in_stream
    assert not decoder.in_stream
    last = decoded(name)[-1]
    assert isinstance(last, Message)
    assert last == Message(None, False, last.lsn, "capture-end", b"done")


@pytest.mark.parametrize("name", sorted(FIXTURE_VERSIONS))
def test_fixture_memoryview_input_decodes_the_same(name: str) -> None:
    decoder = Decoder(FIXTURE_VERSIONS[name])
    # what psycopg hands over: a memoryview of the CopyData, the payload after the 25-byte header
    got = tuple(decoder.decode(memoryview(bytes(25) + payload)[25:]) for payload in payloads(name))
    assert got == decoded(name)


@pytest.mark.parametrize("name", sorted(FIXTURE_VERSIONS))
def test_fixture_decoded_in_place_decodes_the_same_with_values_as_bytes(name: str) -> None:
    """decode_in_place (huge messages: no copy of the whole message) gives the same messages, their
    values bytes as always, not views of the message."""
    decoder = Decoder(FIXTURE_VERSIONS[name])
    got = tuple(decoder.decode_in_place(memoryview(bytes(25) + payload)[25:]) for payload in payloads(name))
    assert got == decoded(name)
    for message in got:
        if isinstance(message, Insert | Update | Delete):
            for values in (getattr(message, "new", None), getattr(message, "old", None)):
                for value in values or ():
                    data = value.data if isinstance(value, BinaryValue) else value
                    assert data is None or data is UNCHANGED_TOAST or type(data) is bytes


@pytest.mark.parametrize("name", sorted(FIXTURE_VERSIONS))
def test_fixture_transactions_are_consistent(name: str) -> None:
    groups = list(transactions(decoded(name)))
    assert len(groups) >= 10
    for group in groups:
        begin, commit = group[0], group[-1]
        assert isinstance(begin, Begin) and isinstance(commit, Commit)
        assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
        assert begin.commit_time == commit.commit_time
        assert begin.commit_time.tzinfo is UTC and begin.commit_time.year >= 2025
        assert commit.flags == 0


# --------------------------------------------------------------------------------------------------------
# Golden fixtures: content (text format, protocol v1)


def test_v1_relation_and_types() -> None:
    messages = decoded("v1")
    t_types = relations(messages)["t_types"]
    assert (t_types.xid, t_types.namespace, t_types.replica_identity) == (None, "public", "d")
    assert tuple(c.name for c in t_types.columns) == T_TYPES_COLUMNS
    types = {t.name: t for t in messages if isinstance(t, Type)}
    mood, domain_base = types["mood"], types["int4"]
    assert (mood.namespace, domain_base.namespace) == ("public", "pg_catalog")  # '' on the wire
    assert [(c.type_oid, c.type_modifier) for c in t_types.columns] == [
        (INT4, -1),
        (INT8, -1),
        (TEXT, -1),
        (NUMERIC, (10 << 16 | 2) + 4),
        (VARCHAR, 20 + 4),
        (JSONB, -1),
        (BOOL, -1),
        (TIMESTAMPTZ, -1),
        (BYTEA, -1),
        (UUID, -1),
        (mood.oid, -1),
        (domain_base.oid, -1),  # a Type message describes the domain by its base type
        (INT4_ARRAY, -1),
        (TEXT, -1),
    ]
    assert [c.is_key for c in t_types.columns] == [True] + [False] * 13


def test_v1_insert_update_delete_default_identity() -> None:
    changes = rows(decoded("v1"), "t_types")
    insert, insert_nulls, update, update_key, delete = changes
    assert insert == Insert(None, insert.relation_oid, FIRST_ROW)
    assert insert_nulls == Insert(None, insert.relation_oid, (b"2", *NULLS_13))
    # key unchanged: no old tuple; the TOASTed column was not touched, so it is not sent
    assert isinstance(update, Update)
    assert (update.old, update.old_kind) == (None, None)
    assert update.new == (*FIRST_ROW[:2], b"world", b"4.14", *FIRST_ROW[4:13], UNCHANGED_TOAST)
    assert update.new[-1] is UNCHANGED_TOAST
    # key changed: old key, the other columns NULL
    assert update_key == Update(None, insert.relation_oid, (b"2", *NULLS_13), "K", (b"10", *NULLS_13))
    assert delete == Delete(None, insert.relation_oid, (b"10", *NULLS_13), "K")


def test_v1_replica_identity_full_nothing_index() -> None:
    messages = decoded("v1")
    rels = relations(messages)
    assert rels["t_full"].replica_identity == "f"
    assert all(c.is_key for c in rels["t_full"].columns)
    assert rows(messages, "t_full")[:3] == [
        Insert(None, rels["t_full"].oid, (b"1", b"a")),
        Update(None, rels["t_full"].oid, (b"1", b"a"), "O", (b"1", b"b")),
        Delete(None, rels["t_full"].oid, (b"1", b"b"), "O"),
    ]
    assert rels["t_nothing"].replica_identity == "n"
    assert not any(c.is_key for c in rels["t_nothing"].columns)
    assert rows(messages, "t_nothing") == [Insert(None, rels["t_nothing"].oid, (b"1", b"n"))]
    t_index = rels["t_index"]
    assert t_index.replica_identity == "i"
    assert [c.is_key for c in t_index.columns] == [False, True, False]
    assert rows(messages, "t_index") == [
        Insert(None, t_index.oid, (b"1", b"c1", b"v1")),
        Update(None, t_index.oid, (None, b"c1", None), "K", (b"1", b"c2", b"v1")),
        Update(None, t_index.oid, None, None, (b"1", b"c2", b"v2")),
        Delete(None, t_index.oid, (None, b"c2", None), "K"),
    ]


def test_v1_truncate() -> None:
    messages = decoded("v1")
    rels = relations(messages)
    truncates = [m for m in messages if isinstance(m, Truncate)]
    assert truncates == [
        Truncate(None, True, True, (rels["t_parent"].oid, rels["t_child"].oid)),
        Truncate(None, False, False, (rels["t_full"].oid,)),
    ]


def test_v1_logical_messages() -> None:
    messages = decoded("v1")
    transactional = find(messages, Message, prefix="tx-prefix")
    assert len(transactional) == 1
    assert isinstance(transactional[0], Message)
    assert (transactional[0].transactional, transactional[0].content) == (True, b"transactional payload")
    index = messages.index(transactional[0])
    assert isinstance(messages[index - 1], Begin)  # inside its transaction
    [nontx] = find(messages, Message, prefix="nontx-prefix")
    assert isinstance(nontx, Message)
    assert (nontx.xid, nontx.transactional, nontx.content) == (None, False, b"\x00\xff\n")
    index = messages.index(nontx)
    assert isinstance(messages[index - 1], Commit) and isinstance(messages[index + 1], Begin)
    assert nontx.lsn > transactional[0].lsn


def test_v1_alter_table_mid_transaction() -> None:
    messages = decoded("v1")
    [group] = [
        g
        for g in transactions(messages)
        if Insert(None, relations(messages)["t_alter"].oid, (b"3", b"b", b"33")) in g
    ]
    schemas = [m for m in group if isinstance(m, Relation)]
    assert len(schemas) == 1  # t_alter was already described by an earlier transaction
    assert [c.name for c in schemas[0].columns] == ["id", "a", "b"]
    inserts = [m for m in group if isinstance(m, Insert)]
    assert [i.new for i in inserts] == [(b"2", b"a"), (b"3", b"b", b"33")]
    # the relation message comes between the two inserts: before it, two columns; after, three
    assert group.index(inserts[0]) < group.index(schemas[0]) < group.index(inserts[1])


def test_v1_origin() -> None:
    messages = decoded("v1")
    [origin] = find(messages, Origin)
    assert origin == Origin(0xABCDEF, "capture-origin")
    assert isinstance(messages[messages.index(origin) - 1], Begin)


def test_v1_has_no_streaming_or_two_phase_messages() -> None:
    messages = decoded("v1")
    assert not find(messages, StreamStart) and not find(messages, BeginPrepare)
    # the prepared transaction arrives at COMMIT PREPARED as a plain one; the rolled back one never
    values = [m.new for m in rows(messages, "t_full") if isinstance(m, Insert)]
    assert (b"2", b"prepared") in values and (b"3", b"rolled back") not in values
    assert [m.new for m in rows(messages, "t_stream") if isinstance(m, Insert)] == [
        (b"1", b"happy", b"first"),
        (b"2", b"ok", b"second"),
        (b"4", b"ok", b"after the rollback"),
        (b"6", b"happy", b"streamed and prepared"),
    ]


# --------------------------------------------------------------------------------------------------------
# Golden fixtures: two-phase and streaming (protocol v4, streaming = parallel)


def test_v4_two_phase() -> None:
    messages = decoded("v4")
    [begin1] = find(messages, BeginPrepare, gid="capture-gid-1")
    [prepare1] = find(messages, Prepare, gid="capture-gid-1")
    [commit1] = find(messages, CommitPrepared, gid="capture-gid-1")
    assert isinstance(begin1, BeginPrepare)
    assert isinstance(prepare1, Prepare) and isinstance(commit1, CommitPrepared)
    assert prepare1 == Prepare(
        0, begin1.prepare_lsn, begin1.end_lsn, begin1.prepare_time, begin1.xid, "capture-gid-1"
    )
    assert commit1.xid == begin1.xid and commit1.commit_lsn > begin1.prepare_lsn
    between = messages[messages.index(begin1) + 1 : messages.index(prepare1)]
    t_full = relations(messages)["t_full"].oid
    assert [m for m in between if isinstance(m, Insert)] == [Insert(None, t_full, (b"2", b"prepared"))]
    [rollback] = find(messages, RollbackPrepared)
    [prepare2] = find(messages, Prepare, gid="capture-gid-2")
    assert isinstance(rollback, RollbackPrepared) and isinstance(prepare2, Prepare)
    assert (rollback.gid, rollback.xid, rollback.flags) == ("capture-gid-2", prepare2.xid, 0)
    assert rollback.prepare_end_lsn == prepare2.end_lsn < rollback.rollback_end_lsn
    assert rollback.prepare_time == prepare2.prepare_time <= rollback.rollback_time


def test_v4_streamed_transaction_with_aborted_subtransaction() -> None:
    messages = decoded("v4")
    starts = [m for m in messages if isinstance(m, StreamStart)]
    xid = starts[0].xid
    assert starts[0].first_segment and all(not s.first_segment for s in starts[1:] if s.xid == xid)
    first = messages.index(starts[0])
    # inside the block: type and relation and changes all carry the xid
    block = messages[first + 1 : messages.index(StreamStop(), first)]
    t_stream = relations(messages)["t_stream"]
    assert [type(m) for m in block] == [Type, Relation, Insert]
    assert all(m.xid == xid for m in block)  # type: ignore[union-attr]
    assert block[2] == Insert(xid, t_stream.oid, (b"1", b"happy", b"first"))
    # the subtransaction's abort, with abort LSN and time (parallel streaming)
    [abort] = find(messages, StreamAbort)
    assert isinstance(abort, StreamAbort)
    assert abort.xid == xid and abort.subxid not in (xid, None)
    assert abort.abort_lsn is not None and abort.abort_time is not None
    assert abort.abort_time.tzinfo is UTC
    # after the rollback, changes come from the new subtransaction of the savepoint
    after = [m for m in rows(messages, "t_stream") if m.new[0] == b"4"]  # type: ignore[union-attr]
    assert len(after) == 1 and after[0].xid not in (None, xid)
    [commit] = find(messages, StreamCommit, xid=xid)
    assert isinstance(commit, StreamCommit)
    assert commit.flags == 0 and commit.commit_lsn < commit.end_lsn
    assert abort.abort_lsn < commit.commit_lsn
    assert abort.abort_time <= commit.commit_time


def test_v4_streamed_prepared_transaction() -> None:
    messages = decoded("v4")
    [stream_prepare] = find(messages, StreamPrepare)
    assert isinstance(stream_prepare, StreamPrepare)
    assert stream_prepare.gid == "capture-gid-stream" and stream_prepare.flags == 0
    assert find(messages, StreamStart, xid=stream_prepare.xid, first_segment=True)
    inserts = [m for m in messages if isinstance(m, Insert) and m.xid == stream_prepare.xid]
    assert [i.new for i in inserts] == [(b"6", b"happy", b"streamed and prepared")]
    [commit] = find(messages, CommitPrepared, gid="capture-gid-stream")
    assert isinstance(commit, CommitPrepared)
    assert commit.xid == stream_prepare.xid and commit.end_lsn > stream_prepare.end_lsn


def test_v4_decoder_v3_rejects_the_v4_abort_fields() -> None:
    # A v3 decoder does not expect abort LSN and time: 16 trailing bytes.
    abort = next(p for p in payloads("v4") if p[:1] == b"A")
    with pytest.raises(ProtocolError, match="16 unexpected trailing bytes after the Stream Abort") as exc:
        Decoder(3).decode(abort)
    assert exc.value.offset == 9


# --------------------------------------------------------------------------------------------------------
# Golden fixtures: binary values (protocol v3, streaming = on)


def test_v3_binary_values() -> None:
    messages = decoded("v3_binary")
    insert, insert_nulls, update, *_ = rows(messages, "t_types")
    assert isinstance(insert, Insert) and isinstance(update, Update)
    values = dict(zip(T_TYPES_COLUMNS, insert.new, strict=True))
    assert all(isinstance(v, BinaryValue) for v in insert.new)
    assert values["id"] == BinaryValue(struct.pack(">i", 1))
    assert values["i"] == BinaryValue(struct.pack(">q", 42))
    assert values["t"] == BinaryValue(b"hello")
    assert values["b"] == BinaryValue(b"\x01")
    assert values["j"] == BinaryValue(b'\x01{"a": [1, 2]}')  # jsonb binary format version 1
    assert values["raw"] == BinaryValue(b"\xde\xad\xbe\xef")
    assert values["u"] == BinaryValue(bytes.fromhex("a0eebc999c0b4ef8bb6d6bb9bd380a11"))
    # 2024-01-02 03:04:05.123456 UTC as microseconds since 2000-01-01
    expected_ts = (datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
    assert values["ts"] == BinaryValue(struct.pack(">q", expected_ts))
    assert values["big"] == BinaryValue(b"x" * 5000)
    assert insert_nulls.new == (BinaryValue(struct.pack(">i", 2)), *NULLS_13)  # type: ignore[union-attr]
    assert update.new[-1] is UNCHANGED_TOAST


def test_v3_stream_abort_without_abort_lsn() -> None:
    [abort] = find(decoded("v3_binary"), StreamAbort)
    assert isinstance(abort, StreamAbort)
    assert abort.subxid != abort.xid
    assert (abort.abort_lsn, abort.abort_time) == (None, None)
    # streaming = on never sends the v4 fields, even to a v4 decoder
    assert decoded("v3_binary", 4) == decoded("v3_binary")


# --------------------------------------------------------------------------------------------------------
# Hand-built messages, one per type

LSN_A = 0x0000_0001_0000_0010
LSN_B = 0x0000_0001_0000_0080
LSN_C = 0xFFFF_FFFF_FFFF_FFF0  # unsigned: the top bit must not make it negative

HAND_BUILT: list[tuple[str, bool, bytes, PgOutputMessage]] = [
    ("begin", False, b"B" + struct.pack(">QqI", LSN_C, NOW_US, 0xFFFFFFFE), Begin(LSN_C, NOW, 0xFFFFFFFE)),
    ("commit", False, b"C" + struct.pack(">BQQq", 0, LSN_A, LSN_B, NOW_US), Commit(0, LSN_A, LSN_B, NOW)),
    ("origin", False, b"O" + struct.pack(">Q", LSN_A) + string("node-1"), Origin(LSN_A, "node-1")),
    (
        "relation",
        False,
        b"R"
        + struct.pack(">I", 16400)
        + string("")  # pg_catalog
        + string("tbl")
        + b"f"
        + struct.pack(">h", 2)
        + b"\x01"
        + string("id")
        + struct.pack(">Ii", 23, -1)
        + b"\x00"
        + string("naïve")
        + struct.pack(">Ii", 1043, 24),
        Relation(
            None,
            16400,
            "pg_catalog",
            "tbl",
            "f",
            (Column(True, "id", 23, -1), Column(False, "naïve", 1043, 24)),
        ),
    ),
    (
        "relation-in-stream",
        True,
        b"R" + struct.pack(">II", 700, 16400) + string("s") + string("t") + b"n" + struct.pack(">h", 0),
        Relation(700, 16400, "s", "t", "n", ()),
    ),
    (
        "type",
        False,
        b"Y" + struct.pack(">I", 16385) + string("public") + string("mood"),
        Type(None, 16385, "public", "mood"),
    ),
    (
        "type-in-stream",
        True,
        b"Y" + struct.pack(">II", 700, 16392) + string("") + string("int4"),
        Type(700, 16392, "pg_catalog", "int4"),
    ),
    ("insert", False, b"I" + struct.pack(">I", 16400) + b"N" + ROW, Insert(None, 16400, ROW_VALUES)),
    (
        "insert-in-stream",
        True,
        b"I" + struct.pack(">II", 700, 16400) + b"N" + ROW,
        Insert(700, 16400, ROW_VALUES),
    ),
    ("insert-no-columns", False, b"I" + struct.pack(">I", 1) + b"N" + tuple_data(), Insert(None, 1, ())),
    (
        "insert-empty-text",
        False,
        b"I" + struct.pack(">I", 1) + b"N" + tuple_data(text_value(b"")),
        Insert(None, 1, (b"",)),
    ),
    (
        "update-new-only",
        False,
        b"U" + struct.pack(">I", 16400) + b"N" + ROW,
        Update(None, 16400, None, None, ROW_VALUES),
    ),
    (
        "update-key",
        False,
        b"U" + struct.pack(">I", 16400) + b"K" + tuple_data(text_value(b"1"), b"n") + b"N" + ROW,
        Update(None, 16400, (b"1", None), "K", ROW_VALUES),
    ),
    (
        "update-old-in-stream",
        True,
        b"U" + struct.pack(">II", 700, 16400) + b"O" + ROW + b"N" + ROW,
        Update(700, 16400, ROW_VALUES, "O", ROW_VALUES),
    ),
    ("delete-key", False, b"D" + struct.pack(">I", 16400) + b"K" + ROW, Delete(None, 16400, ROW_VALUES, "K")),
    (
        "delete-old-in-stream",
        True,
        b"D" + struct.pack(">II", 700, 16400) + b"O" + ROW,
        Delete(700, 16400, ROW_VALUES, "O"),
    ),
    (
        "truncate",
        False,
        b"T" + struct.pack(">iBII", 2, 3, 16400, 16401),
        Truncate(None, True, True, (16400, 16401)),
    ),
    ("truncate-cascade", False, b"T" + struct.pack(">iBI", 1, 1, 5), Truncate(None, True, False, (5,))),
    ("truncate-in-stream", True, b"T" + struct.pack(">IiBI", 700, 1, 2, 5), Truncate(700, False, True, (5,))),
    (
        "message",
        False,
        b"M" + struct.pack(">BQ", 1, LSN_A) + string("pfx") + struct.pack(">i", 3) + b"a\0b",
        Message(None, True, LSN_A, "pfx", b"a\0b"),
    ),
    (
        "message-in-stream",
        True,
        b"M" + struct.pack(">IBQ", 700, 0, LSN_A) + string("") + struct.pack(">i", 0),
        Message(700, False, LSN_A, "", b""),
    ),
    ("stream-start", False, b"S" + struct.pack(">IB", 700, 1), StreamStart(700, True)),
    ("stream-start-next", False, b"S" + struct.pack(">IB", 700, 0), StreamStart(700, False)),
    ("stream-stop", True, b"E", StreamStop()),
    (
        "stream-commit",
        False,
        b"c" + struct.pack(">IBQQq", 700, 0, LSN_A, LSN_B, NOW_US),
        StreamCommit(700, 0, LSN_A, LSN_B, NOW),
    ),
    ("stream-abort", False, b"A" + struct.pack(">II", 700, 700), StreamAbort(700, 700, None, None)),
    (
        "stream-abort-v4-parallel",
        False,
        b"A" + struct.pack(">IIQq", 700, 701, LSN_A, NOW_US),
        StreamAbort(700, 701, LSN_A, NOW),
    ),
    (
        "begin-prepare",
        False,
        b"b" + struct.pack(">QQqI", LSN_A, LSN_B, NOW_US, 700) + string("gid-1"),
        BeginPrepare(LSN_A, LSN_B, NOW, 700, "gid-1"),
    ),
    (
        "prepare",
        False,
        b"P" + struct.pack(">BQQqI", 0, LSN_A, LSN_B, NOW_US, 700) + string("gid-1"),
        Prepare(0, LSN_A, LSN_B, NOW, 700, "gid-1"),
    ),
    (
        "commit-prepared",
        False,
        b"K" + struct.pack(">BQQqI", 0, LSN_A, LSN_B, NOW_US, 700) + string("gid-1"),
        CommitPrepared(0, LSN_A, LSN_B, NOW, 700, "gid-1"),
    ),
    (
        "rollback-prepared",
        False,
        b"r" + struct.pack(">BQQqqI", 0, LSN_A, LSN_B, NOW_US, NOW_US + 1, 700) + string("gid-1"),
        RollbackPrepared(0, LSN_A, LSN_B, NOW, NOW + timedelta(microseconds=1), 700, "gid-1"),
    ),
    (
        "stream-prepare",
        False,
        b"p" + struct.pack(">BQQqI", 0, LSN_A, LSN_B, NOW_US, 700) + string("gid-1"),
        StreamPrepare(0, LSN_A, LSN_B, NOW, 700, "gid-1"),
    ),
]


@pytest.mark.parametrize(
    ("in_stream", "data", "expected"), [c[1:] for c in HAND_BUILT], ids=[c[0] for c in HAND_BUILT]
)
def test_hand_built_message(in_stream: bool, data: bytes, expected: PgOutputMessage) -> None:
    for variant in (data, memoryview(data), bytearray(data)):
        decoder = in_stream_decoder() if in_stream else Decoder(4)
        message = decoder.decode(variant)
        assert message == expected
        assert type(message) is type(expected)


def test_every_message_class_is_covered_by_hand_built_tests() -> None:
    assert {type(c[3]) for c in HAND_BUILT} == set(MESSAGE_CLASSES)


def test_stream_state_follows_start_and_stop() -> None:
    decoder = Decoder(2)
    assert not decoder.in_stream
    insert = b"I" + struct.pack(">I", 16400) + b"N" + ROW
    assert decoder.decode(insert) == Insert(None, 16400, ROW_VALUES)
    decoder.decode(b"S" + struct.pack(">IB", 9, 1))
    assert decoder.in_stream
    # the same bytes now mean: xid 16400, relation oid 0x4e0004... -> malformed
    with pytest.raises(ProtocolError):
        decoder.decode(insert)
    assert decoder.decode(b"I" + struct.pack(">II", 9, 16400) + b"N" + ROW) == Insert(9, 16400, ROW_VALUES)
    assert decoder.decode(b"E") == StreamStop()
    assert not decoder.in_stream
    decoder.decode(b"S" + struct.pack(">IB", 9, 0))
    decoder.reset()
    assert not decoder.in_stream
    assert "in_stream=False" in repr(decoder)


def test_decoded_row_messages_behave_like_constructed_ones() -> None:
    insert = Decoder().decode(b"I" + struct.pack(">I", 16400) + b"N" + ROW)
    expected = Insert(None, 16400, ROW_VALUES)
    assert insert == expected and hash(insert) == hash(expected) and repr(insert) == repr(expected)
    with pytest.raises(FrozenInstanceError):
        insert.xid = 5  # type: ignore[misc]
    update = Decoder().decode(b"U" + struct.pack(">I", 1) + b"N" + tuple_data(text_value(b"x")))
    assert update == Update(None, 1, None, None, (b"x",)) and hash(update) == hash(
        Update(None, 1, None, None, (b"x",))
    )
    delete = Decoder().decode(b"D" + struct.pack(">I", 1) + b"K" + tuple_data(b"n"))
    assert delete == Delete(None, 1, (None,), "K") and hash(delete) == hash(Delete(None, 1, (None,), "K"))


def test_text_values_are_independent_bytes() -> None:
    data = bytearray(b"I" + struct.pack(">I", 1) + b"N" + tuple_data(text_value(b"abc")))
    insert = Decoder().decode(memoryview(data))
    data[-1] = ord("z")
    assert isinstance(insert, Insert) and insert.new == (b"abc",)
    assert type(insert.new[0]) is bytes


def test_unchanged_toast_sentinel() -> None:
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"
    assert UnchangedToastType() is UNCHANGED_TOAST
    assert copy.copy(UNCHANGED_TOAST) is UNCHANGED_TOAST
    assert copy.deepcopy(UNCHANGED_TOAST) is UNCHANGED_TOAST
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST
    assert UNCHANGED_TOAST != b"" and UNCHANGED_TOAST is not None


@pytest.mark.parametrize(
    ("microseconds", "expected"),
    [
        (0, EPOCH),
        (-1, EPOCH - timedelta(microseconds=1)),
        (NOW_US, NOW),
        (2**63 - 1, datetime.max.replace(tzinfo=UTC)),  # DT_NOEND, 'infinity'
        (-(2**63), datetime.min.replace(tzinfo=UTC)),  # DT_NOBEGIN, '-infinity'
        (8_100 * 366 * 86_400 * 10**6, datetime.max.replace(tzinfo=UTC)),  # finite, past year 9999
        (-1_000_000 * 86_400 * 10**6, datetime.min.replace(tzinfo=UTC)),
    ],
)
def test_timestamps(microseconds: int, expected: datetime) -> None:
    message = Decoder().decode(b"B" + struct.pack(">QqI", 1, microseconds, 2))
    assert isinstance(message, Begin)
    assert message.commit_time == expected and message.commit_time.tzinfo is UTC


@pytest.mark.parametrize("version", [0, 5, -1, True, "4", 4.0, None])
def test_unsupported_protocol_version(version: object) -> None:
    with pytest.raises(ValueError, match="unsupported pgoutput protocol version"):
        Decoder(version)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Malformed input: the error says where

INSERT_HEAD = b"I" + struct.pack(">I", 16400) + b"N"  # the tuple starts at offset 6

MALFORMED: list[tuple[str, bool, bytes, int, str]] = [
    ("empty", False, b"", 0, "empty pgoutput message"),
    ("unknown-type", False, b"Z\0\0", 0, "unknown pgoutput message type 'Z'"),
    ("unknown-type-nul", False, b"\0", 0, "unknown pgoutput message type '\\x00'"),
    ("begin-no-lsn", False, b"B\0\0\0", 1, "expected final_lsn (8 bytes)"),
    ("begin-no-time", False, b"B" + bytes(12), 9, "expected commit_time (8 bytes)"),
    ("begin-no-xid", False, b"B" + bytes(19), 17, "expected xid (4 bytes)"),
    ("begin-trailing", False, b"B" + bytes(21), 21, "1 unexpected trailing bytes after the Begin message"),
    ("commit-short", False, b"C\0" + bytes(5), 2, "expected commit_lsn"),
    ("commit-no-end-lsn", False, b"C\0" + bytes(10), 10, "expected end_lsn"),
    ("origin-unterminated", False, b"O" + bytes(8) + b"abc", 9, "expected NUL-terminated origin name"),
    ("origin-bad-utf8", False, b"O" + bytes(8) + b"ab\xffc\0", 11, "invalid UTF-8 in the origin name"),
    ("stream-stop-trailing", True, b"E\0", 1, "trailing bytes after the Stream Stop"),
    ("stream-stop-outside", False, b"E", 0, "Stream Stop outside a streamed block"),
    ("stream-start-nested", True, b"S" + struct.pack(">IB", 1, 1), 0, "Stream Start inside a streamed block"),
    ("stream-start-bad-flag", False, b"S" + struct.pack(">IB", 1, 2), 5, "first segment flag is 2"),
    ("stream-start-short", False, b"S" + struct.pack(">I", 1), 5, "expected first segment flag (1 bytes)"),
    (
        "stream-abort-partial-v4",
        False,
        b"A" + struct.pack(">IIi", 1, 2, 3),
        9,
        "expected abort_lsn (8 bytes)",
    ),
    (
        "stream-abort-no-time-v4",
        False,
        b"A" + struct.pack(">IIQ", 1, 2, 3),
        17,
        "expected abort_time (8 bytes)",
    ),
    (
        "stream-abort-trailing-v4",
        False,
        b"A" + struct.pack(">IIQqB", 1, 2, 3, 4, 5),
        25,
        "1 unexpected trailing",
    ),
    ("stream-commit-short", False, b"c" + struct.pack(">IB", 1, 0), 6, "expected commit_lsn"),
    ("prepare-no-gid", False, b"P" + bytes(29), 30, "expected NUL-terminated gid"),
    ("rollback-prepared-short", False, b"r" + bytes(30), 26, "expected rollback_time"),
    ("begin-prepare-gid-trailing", False, b"b" + bytes(28) + b"g\0\0", 31, "trailing bytes"),
    # Insert
    ("insert-no-oid", False, b"I\0\0", 1, "expected oid (4 bytes)"),
    ("insert-no-marker", False, b"I" + struct.pack(">I", 1), 5, "expected 'N' (new tuple follows)"),
    (
        "insert-bad-marker",
        False,
        b"I" + struct.pack(">I", 1) + b"K" + tuple_data(),
        5,
        "expected 'N' (new tuple)",
    ),
    ("insert-in-stream-no-xid", True, b"I\0\0", 1, "expected xid (4 bytes)"),
    ("insert-in-stream-no-oid", True, b"I" + bytes(6), 5, "expected oid (4 bytes)"),
    ("insert-no-count", False, INSERT_HEAD + b"\0", 6, "expected Int16 column count"),
    ("insert-negative-count", False, INSERT_HEAD + struct.pack(">h", -1), 6, "negative column count -1"),
    (
        "insert-no-kind",
        False,
        INSERT_HEAD + struct.pack(">h", 1),
        8,
        "expected value kind byte of column 0 (of 1)",
    ),
    (
        "insert-no-length-2nd-column",
        False,
        INSERT_HEAD + struct.pack(">h", 3) + text_value(b"ab") + b"t\0\0",
        16,  # 6 + 2 (count) + 7 (first value) = the kind byte at 15; its length was expected at 16
        "expected Int32 length of column 1 (of 3)",
    ),
    (
        "insert-no-kind-3rd-column",
        False,
        INSERT_HEAD + struct.pack(">h", 3) + text_value(b"ab") + b"n",
        16,
        "expected value kind byte of column 2 (of 3)",
    ),
    (
        "insert-unknown-kind",
        False,
        INSERT_HEAD + tuple_data(b"n", b"x"),
        9,
        "unknown value kind 'x' for column 1",
    ),
    (
        "insert-negative-length",
        False,
        INSERT_HEAD + tuple_data(b"t" + struct.pack(">i", -5)),
        9,
        "negative length -5",
    ),
    (
        "insert-length-past-end",
        False,
        INSERT_HEAD + tuple_data(b"t" + struct.pack(">i", 4) + b"abc"),
        9,
        "runs past",
    ),
    (
        "insert-binary-past-end",
        False,
        INSERT_HEAD + tuple_data(b"b" + struct.pack(">i", 2**31 - 1)),
        9,
        "runs past",
    ),
    ("insert-trailing", False, INSERT_HEAD + tuple_data(b"n") + b"\0\0", 9, "2 unexpected trailing bytes"),
    # Update
    ("update-bad-marker", False, b"U" + struct.pack(">I", 1) + b"X", 5, "expected 'K', 'O' or 'N'"),
    ("update-no-marker", False, b"U" + struct.pack(">I", 1), 5, "expected 'K', 'O' or 'N'"),
    ("update-no-new-marker", False, b"U" + struct.pack(">I", 1) + b"K" + tuple_data(b"n"), 9, "expected 'N'"),
    (
        "update-bad-new-marker",
        False,
        b"U" + struct.pack(">I", 1) + b"O" + tuple_data(b"n") + b"K" + tuple_data(b"n"),
        9,
        "expected 'N' (new tuple) after the old tuple",
    ),
    (
        "update-old-truncated",
        False,
        b"U" + struct.pack(">I", 1) + b"K" + struct.pack(">h", 2) + b"n",
        9,
        "column 1",
    ),
    ("update-in-stream-no-oid", True, b"U" + bytes(4), 5, "expected oid"),
    # Delete
    (
        "delete-new-marker",
        False,
        b"D" + struct.pack(">I", 1) + b"N" + tuple_data(b"n"),
        5,
        "expected 'K' or 'O'",
    ),
    ("delete-no-marker", False, b"D" + struct.pack(">I", 1), 5, "expected 'K' or 'O'"),
    ("delete-trailing", False, b"D" + struct.pack(">I", 1) + b"O" + tuple_data(b"n") + b"N", 9, "trailing"),
    # Relation and Type
    (
        "relation-unterminated-namespace",
        False,
        b"R" + struct.pack(">I", 1) + b"public",
        5,
        "NUL-terminated namespace",
    ),
    (
        "relation-unterminated-name",
        False,
        b"R" + struct.pack(">I", 1) + b"\0tbl",
        6,
        "NUL-terminated relation name",
    ),
    (
        "relation-bad-utf8",
        False,
        b"R" + struct.pack(">I", 1) + b"\0t\xc3(\0",
        7,
        "invalid UTF-8 in the relation name",
    ),
    ("relation-no-identity", False, b"R" + struct.pack(">I", 1) + b"\0t\0", 8, "expected replica identity"),
    (
        "relation-bad-identity",
        False,
        b"R" + struct.pack(">I", 1) + b"\0t\0x\0\0",
        8,
        "unknown replica identity 'x'",
    ),
    (
        "relation-negative-count",
        False,
        b"R" + struct.pack(">I", 1) + b"\0t\0d" + struct.pack(">h", -3),
        9,
        "negative",
    ),
    (
        "relation-column-no-typmod",
        False,
        b"R" + struct.pack(">I", 1) + b"\0t\0d" + struct.pack(">h", 1) + b"\x01id\0" + struct.pack(">I", 23),
        19,
        "expected type modifier (4 bytes)",
    ),
    (
        "relation-missing-column",
        False,
        b"R"
        + struct.pack(">I", 1)
        + b"\0t\0d"
        + struct.pack(">h", 2)
        + b"\x01id\0"
        + struct.pack(">Ii", 23, -1),
        23,
        "expected column flags",
    ),
    ("type-unterminated", False, b"Y" + struct.pack(">I", 1) + b"\0int4", 6, "NUL-terminated type name"),
    ("type-in-stream-short", True, b"Y" + struct.pack(">I", 1), 5, "expected oid"),
    # Truncate
    ("truncate-negative-count", False, b"T" + struct.pack(">iB", -1, 0), 1, "negative relation count -1"),
    (
        "truncate-missing-oids",
        False,
        b"T" + struct.pack(">iBI", 3, 0, 5),
        10,
        "expected relation oid 1 (of 3)",
    ),
    ("truncate-huge-count", False, b"T" + struct.pack(">iB", 2**31 - 1, 0), 6, "relation oid 0"),
    ("truncate-trailing", False, b"T" + struct.pack(">iBIB", 1, 0, 5, 0), 10, "1 unexpected trailing"),
    ("truncate-no-options", False, b"T" + struct.pack(">i", 1), 5, "expected option bits"),
    # Message
    (
        "message-negative-length",
        False,
        b"M\x01" + bytes(8) + b"p\0" + struct.pack(">i", -1),
        12,
        "negative content",
    ),
    (
        "message-past-end",
        False,
        b"M\x01" + bytes(8) + b"p\0" + struct.pack(">i", 5) + b"abcd",
        12,
        "runs past the end",
    ),
    ("message-no-length", False, b"M\x01" + bytes(8) + b"p\0\0", 12, "expected content length"),
    ("message-bad-prefix", False, b"M\x01" + bytes(8) + b"\xfe\0", 10, "invalid UTF-8 in the prefix"),
    (
        "message-trailing",
        False,
        b"M\x01" + bytes(8) + b"p\0" + struct.pack(">i", 1) + b"ab",
        17,
        "1 unexpected",
    ),
]


@pytest.mark.parametrize(
    ("in_stream", "data", "offset", "message"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed(in_stream: bool, data: bytes, offset: int, message: str) -> None:
    decoder = in_stream_decoder() if in_stream else Decoder(4)
    with pytest.raises(ProtocolError) as exc:
        decoder.decode(data)
    assert exc.value.offset == offset, str(exc.value)
    assert message in str(exc.value)
    assert str(exc.value).endswith(f" at byte offset {offset}")
    assert decoder.in_stream == in_stream  # a failed decode changes no state


def test_failed_stream_start_leaves_state_unchanged() -> None:
    decoder = Decoder(2)
    with pytest.raises(ProtocolError):
        decoder.decode(b"S" + struct.pack(">IBB", 1, 1, 0))
    assert not decoder.in_stream


def test_every_prefix_of_every_fixture_message_is_rejected_with_an_offset_inside_it() -> None:
    for name, version in FIXTURE_VERSIONS.items():
        decoder = Decoder(version)
        for payload in payloads(name):
            for cut in range(len(payload)):
                prefix = payload[:cut]
                try:
                    message = decoder.decode(prefix)
                except ProtocolError as exc:
                    assert 0 <= exc.offset <= cut, (name, payload[:1], cut, str(exc))
                else:
                    # the only prefix that is itself a message: a v4 Stream Abort without its v4 fields
                    assert isinstance(message, StreamAbort) and cut == 9, (name, payload, cut)
            decoder.decode(payload)  # keep the stream state as in the capture


# --------------------------------------------------------------------------------------------------------
# Property tests: nothing but ProtocolError ever escapes

ALL_PAYLOADS = sorted({p for name in FIXTURE_VERSIONS for p in payloads(name) if len(p) < 600}) + [
    c[2] for c in HAND_BUILT
]


def decode_or_protocol_error(decoder: Decoder, data: bytes) -> None:
    try:
        message = decoder.decode(data)
    except ProtocolError as exc:
        assert 0 <= exc.offset <= len(data)
    else:
        assert isinstance(message, MESSAGE_CLASSES)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=80), version=st.integers(1, 4), in_stream=st.booleans())
def test_random_bytes(data: bytes, version: int, in_stream: bool) -> None:
    decoder = in_stream_decoder(version) if in_stream else Decoder(version)
    decode_or_protocol_error(decoder, data)


@st.composite
def message_with_type_byte(draw: st.DrawFn) -> bytes:
    type_byte = draw(st.sampled_from(b"BCORYIUDTMSEcAbPKrp"))
    return bytes([type_byte]) + draw(st.binary(max_size=60))


@settings(max_examples=400)
@given(data=message_with_type_byte(), version=st.integers(1, 4), in_stream=st.booleans())
def test_random_bodies_of_known_types(data: bytes, version: int, in_stream: bool) -> None:
    decoder = in_stream_decoder(version) if in_stream else Decoder(version)
    decode_or_protocol_error(decoder, data)


@st.composite
def mutated_payload(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(ALL_PAYLOADS)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, len(data)))
        if action == "replace" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 4))]
        else:
            del data[position:]
    return bytes(data)


@settings(max_examples=600)
@given(data=mutated_payload(), version=st.integers(1, 4), in_stream=st.booleans())
def test_mutated_valid_messages(data: bytes, version: int, in_stream: bool) -> None:
    decoder = in_stream_decoder(version) if in_stream else Decoder(version)
    decode_or_protocol_error(decoder, data)
