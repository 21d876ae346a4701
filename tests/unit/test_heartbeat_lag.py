"""A heartbeat read back (listener.ingest.heartbeat.heartbeat_lag): anyone who may write logical messages
can write one under its prefix, so whatever the message holds gives a lag or None, never an error."""

from __future__ import annotations

import json
import time

import pytest

from listener.ingest.heartbeat import heartbeat_lag


def test_this_slots_heartbeat_gives_the_seconds_since_it_was_written() -> None:
    lag = heartbeat_lag(json.dumps({"slot": "s", "at": time.time() - 2.5}).encode(), "s")
    assert lag is not None and 2.4 < lag < 10


def test_a_heartbeat_from_the_future_is_no_lag() -> None:
    assert heartbeat_lag(json.dumps({"slot": "s", "at": time.time() + 60}).encode(), "s") == 0.0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff\xfe",  # not UTF-8
        b"not json",
        b"[1, 2]",
        b'"s"',
        b'{"slot": "other", "at": 1}',  # another slot's
        b'{"slot": "s"}',
        b'{"slot": "s", "at": "soon"}',
        b'{"slot": "s", "at": null}',
        b'{"slot": "s", "at": [1]}',
        b'{"slot": "s", "at": "nan"}',
        b'{"slot": "s", "at": "-inf"}',
        b'{"slot": "s", "at": 1e400}',  # parsed as infinity
        b'{"slot": "s", "at": NaN}',
        b"[" * 100_000 + b"]" * 100_000,  # nested beyond Python's recursion limit
        b'{"slot": ' + b"[" * 100_000,
    ],
)
def test_anything_else_under_the_prefix_is_none(content: bytes) -> None:
    assert heartbeat_lag(content, "s") is None
