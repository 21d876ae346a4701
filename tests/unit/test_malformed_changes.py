"""Bytes the server should never send, past the decoder: a Truncate of no relation, tuple values that are
not their type's text.  Each raises ProtocolError naming the byte offset, never IndexError, ValueError or
UnicodeDecodeError, and never yields a payload that is not JSON."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listener.errors import ProtocolError
from listener.pg.assembler import Assembler
from listener.pg.changes import Change, change_json
from listener.pg.pgoutput import Decoder
from listener.pg.types import TypeRegistry

REL_OID = 16400
# (name, type oid): int4, int8, bool, text, float8, numeric, jsonb, json, int4[], text[], jsonb[], bytea,
# timestamptz, date
COLUMNS = [
    ("i", 23), ("b8", 20), ("ok", 16), ("t", 25), ("f", 701), ("n", 1700), ("jb", 3802), ("js", 114),
    ("ia", 1007), ("ta", 1009), ("jba", 3807), ("by", 17), ("ts", 1184), ("d", 1082),
]  # fmt: skip
VALID = [
    b"1", b"-9", b"t", b"x", b"1.5", b"2.50", b'{"a": 1}', b"[1]", b"{1,NULL}", b"{a,b}", b'{"[1]"}',
    b"\\x00", b"2024-01-01 00:00:00+00", b"2024-01-01",
]  # fmt: skip


def relation_message() -> bytes:
    out = b"R" + struct.pack(">I", REL_OID) + b"public\0items\0d" + struct.pack(">h", len(COLUMNS))
    for name, oid in COLUMNS:
        out += b"\1" + name.encode() + b"\0" + struct.pack(">Ii", oid, -1)
    return out


def tuple_data(values: Sequence[bytes | None]) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        out += b"n" if v is None else b"t" + struct.pack(">i", len(v)) + v
    return out


def insert_message(values: Sequence[bytes | None]) -> bytes:
    return b"I" + struct.pack(">I", REL_OID) + b"N" + tuple_data(values)


def update_message(old: Sequence[bytes | None], new: Sequence[bytes | None]) -> bytes:
    return b"U" + struct.pack(">I", REL_OID) + b"O" + tuple_data(old) + b"N" + tuple_data(new)


BEGIN = b"B" + struct.pack(">QqI", 0x1000, 0, 7)


def assembled(*messages: bytes) -> Change:
    decoder, assembler = Decoder(), Assembler(TypeRegistry())
    out = None
    for lsn, data in enumerate((BEGIN, relation_message(), *messages), start=1):
        out = assembler.feed(lsn, decoder.decode(data))
    assert isinstance(out, Change)
    return out


def every_rendering(change: Change) -> None:
    """Everything ingest and `tail` make of a change; a payload must be JSON."""
    json.loads(change.payload_json())
    json.dumps(change_json(change))


def test_a_truncate_of_no_relation_is_a_protocol_error() -> None:
    decoder, assembler = Decoder(), Assembler(TypeRegistry())
    assembler.feed(1, decoder.decode(BEGIN))
    with pytest.raises(ProtocolError) as caught:
        assembler.feed(2, decoder.decode(b"T" + struct.pack(">ib", 0, 0)))
    assert "no relation" in str(caught.value) and caught.value.offset == 1


def test_valid_values_render() -> None:
    change = assembled(insert_message(VALID))
    every_rendering(change)
    assert json.loads(change.payload_json())["new"]["i"] == 1


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("i", b"abc"),  # was copied into the payload as is: invalid JSON
        ("i", b"0012"),
        ("i", b"1 2"),
        ("b8", b""),
        ("ok", b"x"),  # was false
        ("t", b"\xff\xfe"),  # UnicodeDecodeError
        ("f", b"abc"),
        ("jb", b"{"),
        ("js", b"\xff"),
        ("ia", b"{a}"),
        ("ia", b"zz"),  # psycopg's DataError
        ("jba", b"{zz}"),
    ],
)
def test_a_value_that_is_not_its_types_text_is_a_protocol_error(column: str, value: bytes) -> None:
    index = [name for name, _ in COLUMNS].index(column)
    values = [*VALID[:index], value, *VALID[index + 1 :]]
    message = insert_message(values)
    change = assembled(message)
    for render in (change.payload_json, lambda: change_json(change)):
        with pytest.raises(ProtocolError) as caught:
            render()
        assert f"column {column!r}" in str(caught.value) and "public.items" in str(caught.value)
        assert message[caught.value.offset :].startswith(value)  # the offset of the value's first byte


def test_the_offset_counts_the_old_tuple_of_an_update() -> None:
    values = [*VALID[:-1], b"not a date"]
    message = update_message(VALID, [b"2", *VALID[1:3], b"\xff", *VALID[4:]])
    change = assembled(message)
    with pytest.raises(ProtocolError) as caught:
        change.payload_json()
    assert message[caught.value.offset :].startswith(b"\xff") and caught.value.offset > len(
        tuple_data(values)
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(
    values=st.lists(
        st.one_of(st.none(), st.binary(max_size=12)), min_size=len(COLUMNS), max_size=len(COLUMNS)
    )
)
def test_random_values_only_ever_raise_protocol_error(values: list[bytes | None]) -> None:
    change = assembled(insert_message(values))
    with contextlib.suppress(ProtocolError):
        every_rendering(change)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(data=st.binary(max_size=120))
def test_random_messages_after_a_relation_only_ever_raise_protocol_error(data: bytes) -> None:
    decoder, assembler = Decoder(), Assembler(TypeRegistry())
    for lsn, message in enumerate((BEGIN, relation_message(), data), start=1):
        try:
            out = assembler.feed(lsn, decoder.decode(message))
        except ProtocolError:
            return
        if isinstance(out, Change):
            try:
                every_rendering(out)
            except ProtocolError:
                return
