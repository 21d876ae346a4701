"""COPY text format and backfill keys (pure functions of listener.pg.copytext and listener.rules.events)."""

from __future__ import annotations

import pytest

from listener.pg.copytext import line_key, line_values, unescape
from listener.rules.events import backfill_key, key_text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b"plain", b"plain"),
        (b"\\N", None),
        (b"", b""),
        (b"tab\\there", b"tab\there"),
        (b"a\\nb\\rc", b"a\nb\rc"),
        (b"back\\\\slash", b"back\\slash"),
        (b"\\b\\f\\v", b"\b\f\v"),
        (b"\\\\N", b"\\N"),  # the text \N, not NULL
        (b"\\\\x00ff", b"\\x00ff"),  # a bytea in hex: its backslash is doubled by COPY
    ],
)
def test_unescape(field: bytes, value: bytes | None) -> None:
    assert unescape(field) == value


def test_lines_and_keys() -> None:
    line = b"42\tname\\twith tab\t\\N\t\\\\x00ff"
    assert line_values(line) == (b"42", b"name\twith tab", None, b"\\x00ff")
    assert line_key(line, [0]) == (b"42",)
    assert line_key(line, [1, 0]) == (b"name\twith tab", b"42")
    assert key_text((b"42",)) == "42"
    assert key_text((b"acme", b"1007")) == '["acme","1007"]'
    assert key_text((b"a/b", b"\xc3\xa9")) == '["a/b","\u00e9"]'
    assert backfill_key("rule", 3, (b"42",)) == "rule/backfill/3/42"
