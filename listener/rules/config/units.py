"""Durations (``1h30m``), sizes (``10GB``, PostgreSQL's binary units) and rates (``60/minute``) as the
configuration writes them.
"""

from __future__ import annotations

import re

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")
_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def parse_rate(text: str) -> tuple[int, float]:
    """``"60/minute"`` -> (60, 60.0)."""
    match = _RATE.match(text)
    if match is None or int(match[1]) < 1:
        raise ValueError(text)
    return int(match[1]), _PERIODS[match[2]]


_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(w|d|h|min|m|s)\s*", re.IGNORECASE)
_DURATION_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
DURATION_HINT = "write a number and a unit, e.g. 90s, 15m, 24h, 7d or 1h30m (s, m, h, d, w)"
SIZE_HINT = "write a number and a unit, e.g. 512MB, 10GB or 1.5TB (B, kB, MB, GB, TB; 1kB = 1024 bytes)"


def parse_duration(text: str) -> float:
    """``"1h30m"`` -> 5400.0 seconds; raise ``ValueError`` for anything else (a bare number has no unit)."""
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(text)
        total += float(match[1]) * _DURATION_UNITS[match[2].lower()]
        pos = match.end()
    if pos == 0:
        raise ValueError(text)
    return total


def parse_size(text: str) -> int:
    """``"1.5GB"`` -> bytes, in PostgreSQL's binary units (1kB = 1024 bytes); ``ValueError`` otherwise."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(text)
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])
