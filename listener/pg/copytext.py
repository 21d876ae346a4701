"""PostgreSQL's COPY text format, as ``COPY ... TO STDOUT`` writes it: one line a row, tab-separated
fields, ``\\N`` for NULL, backslash escapes (https://www.postgresql.org/docs/current/sql-copy.html, "Text
Format").  Pure: bytes in, bytes out."""

from __future__ import annotations

import re
from collections.abc import Sequence

Key = tuple[bytes | None, ...]

_ESCAPE = re.compile(rb"\\(.)", re.S)
_UNESCAPE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def _unescape_one(match: re.Match[bytes]) -> bytes:
    char = match[1]
    return _UNESCAPE.get(char, char)


def unescape(value: bytes) -> bytes | None:
    """A COPY text field → the value's text (None: SQL NULL).  COPY TO writes only these escapes."""
    if value == b"\\N":
        return None
    if b"\\" not in value:
        return value
    return _ESCAPE.sub(_unescape_one, value)


def line_values(line: bytes) -> tuple[bytes | None, ...]:
    return tuple(unescape(f) for f in line.split(b"\t"))


def line_key(line: bytes, positions: Sequence[int]) -> Key:
    fields = line.split(b"\t", max(positions) + 1)
    return tuple(unescape(fields[p]) for p in positions)
