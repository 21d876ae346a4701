"""Log sequence numbers: PostgreSQL prints them as two hex halves, ``16/B374D848``."""

from __future__ import annotations

from listener.errors import ListenerError

MAX_LSN = (1 << 64) - 1


def format_lsn(lsn: int) -> str:
    """Format a 64-bit LSN the way PostgreSQL does (``X/X`` upper-case hex, no padding)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """Parse ``X/X`` into a 64-bit integer; raise a clear error otherwise."""
    hi, sep, lo = text.strip().partition("/")
    try:
        if not sep:
            raise ValueError(text)
        value = (int(hi, 16) << 32) | int(lo, 16)
        if int(lo, 16) > 0xFFFFFFFF or value > MAX_LSN or value < 0:
            raise ValueError(text)
    except ValueError:
        raise ListenerError(
            f"invalid LSN {text!r}", hint="write an LSN as two hex numbers separated by '/', e.g. 0/16B3748"
        ) from None
    return value
