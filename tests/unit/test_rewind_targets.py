"""`listener rewind` targets: --to-time and --to-lsn text, and the errors that say how to write them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from listener.errors import ListenerError
from listener.ops.rewind_window import parse_target_lsn, parse_time

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", NOW - timedelta(hours=2)),
        ("2h ago", NOW - timedelta(hours=2)),
        ("90m", NOW - timedelta(minutes=90)),
        ("1d", NOW - timedelta(days=1)),
        ("2025-02-28T09:30:00+00:00", datetime(2025, 2, 28, 9, 30, tzinfo=UTC)),
        ("2025-02-28T09:30:00Z", datetime(2025, 2, 28, 9, 30, tzinfo=UTC)),
        ("2025-02-28 09:30:00 UTC", datetime(2025, 2, 28, 9, 30, tzinfo=UTC)),
        ("2025-02-28T10:30:00+01:00", datetime(2025, 2, 28, 10, 30, tzinfo=timezone(timedelta(hours=1)))),
    ],
)
def test_times(text: str, expected: datetime) -> None:
    assert parse_time(text, now=NOW) == expected


def test_a_time_without_offset_is_this_machines_local_time() -> None:
    parsed = parse_time("2025-02-28T09:30:00", now=NOW)
    assert parsed.tzinfo is not None
    assert parsed == datetime(2025, 2, 28, 9, 30).astimezone()


@pytest.mark.parametrize("text", ["yesterday", "next tuesday", "", "ago", "12", "2025-13-01"])
def test_bad_times_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ListenerError) as info:
        parse_time(text, now=NOW)
    assert info.value.message == f"invalid time {text!r} for --to-time"
    assert info.value.hint is not None and "ISO 8601" in info.value.hint and "2h" in info.value.hint


def test_lsns() -> None:
    assert parse_target_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    for text in ("zz", "16B374D848", "0/1/2", "0/100000000"):
        with pytest.raises(ListenerError) as info:
            parse_target_lsn(text)
        assert info.value.message == f"invalid LSN {text!r} for --to-lsn"
        assert info.value.hint is not None and "two hex numbers" in info.value.hint


@pytest.mark.parametrize("text", ["99999999999999999999d", "3000000d ago", "0001-01-01T00:00:00"])
def test_times_beyond_what_a_datetime_holds_are_refused_as_such(text: str) -> None:
    with pytest.raises(ListenerError) as info:
        parse_time(text, now=NOW)
    assert info.value.message.startswith(f"--to-time {text!r} is out of range")
    assert info.value.hint is not None and "ISO 8601" in info.value.hint
