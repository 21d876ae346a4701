"""The replication stream's framing, as bytes: XLogData, keepalive, standby status update."""

from __future__ import annotations

import struct

import pytest

from listener.errors import ProtocolError
from listener.pg.replication import (
    XLOGDATA_HEADER_SIZE,
    encode_status_update,
    parse_keepalive,
    parse_xlogdata_header,
    pg_now_us,
    protocol_version_for,
)


def test_xlogdata_header() -> None:
    msg = b"w" + struct.pack(">QQq", 0x1_0000_0010, 0x1_0000_0020, 123) + b"payload"
    assert parse_xlogdata_header(msg) == (0x1_0000_0010, 0x1_0000_0020)
    assert msg[XLOGDATA_HEADER_SIZE:] == b"payload"


def test_short_xlogdata_names_its_length() -> None:
    with pytest.raises(ProtocolError, match="XLogData message of 10 bytes") as info:
        parse_xlogdata_header(b"w" + b"\0" * 9)
    assert info.value.offset == 10


def test_keepalive() -> None:
    ka = parse_keepalive(b"k" + struct.pack(">QqB", 0xABCDEF, 42, 1))
    assert (ka.wal_end, ka.send_time, ka.reply_requested) == (0xABCDEF, 42, True)


@pytest.mark.parametrize("size", [0, 1, 17, 19])
def test_malformed_keepalive_is_a_protocol_error(size: int) -> None:
    with pytest.raises(ProtocolError, match="keepalive") as info:
        parse_keepalive(b"k" + b"\0" * (size - 1) if size else b"")
    assert info.value.offset == min(size, 18)


def test_status_update_layout() -> None:
    before = pg_now_us()
    msg = encode_status_update(300, 200, 100, reply=True)
    kind, write, flush, apply, clock, reply = struct.unpack(">cQQQqB", msg)
    assert (kind, write, flush, apply, reply) == (b"r", 300, 200, 100, 1)
    assert before <= clock <= pg_now_us()
    # 2000-01-01 is the protocol's epoch: "now" is about 26 years of microseconds after it
    assert 26 * 365 * 86400 * 10**6 < clock < 30 * 365 * 86400 * 10**6


@pytest.mark.parametrize(
    ("server", "version"), [(180006, 4), (160000, 4), (150004, 3), (140011, 2), (130000, 1), (100000, 1)]
)
def test_highest_protocol_version_the_server_supports(server: int, version: int) -> None:
    assert protocol_version_for(server) == version


def test_a_protocol_error_can_name_the_lsn_of_its_message() -> None:
    from listener.pg import pgoutput as po

    with pytest.raises(ProtocolError) as info:
        po.Decoder(1).decode(b"I\x00\x00")
    located = info.value.at_lsn(0x16_B374D848)
    assert str(located).startswith(info.value.what)
    assert f"at byte offset {info.value.offset} of the message at LSN 16/B374D848" in str(located)
    assert located.lsn == 0x16_B374D848 and located.offset == info.value.offset
