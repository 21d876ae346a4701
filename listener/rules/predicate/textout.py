"""PostgreSQL's output functions (value -> text): what the ``*out`` functions of src/backend/utils/adt/
(numeric.c, float.c, date.c, timestamp.c, jsonb.c, bool.c) print under ``DateStyle = ISO``,
``IntervalStyle = postgres`` and ``extra_float_digits = 1``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

from listener.rules.predicate.types import (
    DATEVAL_NOBEGIN,
    DATEVAL_NOEND,
    DT_NOBEGIN,
    DT_NOEND,
    INT_TYPES,
    INTERVAL_NOBEGIN,
    INTERVAL_NOEND,
    JSON_NULL,
    POSTGRES_EPOCH_JDATE,
    USECS_PER_DAY,
    Interval,
    PgType,
    exact_to_f4,
    j2date,
    num_norm,
)


def num_text(d: Decimal) -> str:
    if d.is_nan():
        return "NaN"
    if d.is_infinite():
        return "-Infinity" if d.is_signed() else "Infinity"
    return format(num_norm(d), "f")


def _float8_text(x: float) -> str:
    """float8out with the default extra_float_digits: shortest round-trip digits, exponent form when the
    decimal exponent is < -4 or >= 15."""
    return _float_text(x, repr(x), 15)


def _float4_text(x: float) -> str:
    if math.isfinite(x) and x != 0:
        for digits in range(1, 10):
            s = f"{x:.{digits}g}"
            if exact_to_f4(Fraction(Decimal(s))) == x:  # what strtof would read back
                return _float_text(x, s, 6)
    return _float_text(x, repr(x), 6)


def _float_text(x: float, shortest: str, fixed_below: int) -> str:
    if x != x:
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    sign, digit_tuple, exp = Decimal(shortest).as_tuple()
    digits = list(digit_tuple)
    assert isinstance(exp, int)
    while len(digits) > 1 and digits[-1] == 0:
        digits.pop()
        exp += 1
    e10 = exp + len(digits) - 1
    if -4 <= e10 < fixed_below:
        return format(Decimal((sign, digits, exp)), "f")
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if e10 < 0 else '+'}{abs(e10):02d}"


def _year_text(year: int) -> tuple[str, str]:
    """EncodeDateOnly's year: year 0 is 1 BC; at least four digits."""
    return (f"{year:04d}", "") if year > 0 else (f"{1 - year:04d}", " BC")


def _date_text(d: int) -> str:
    if d == DATEVAL_NOBEGIN:
        return "-infinity"
    if d == DATEVAL_NOEND:
        return "infinity"
    year, month, day = j2date(d + POSTGRES_EPOCH_JDATE)
    y, bc = _year_text(year)
    return f"{y}-{month:02d}-{day:02d}{bc}"


def _timestamp_parts(t: int, zone: str) -> str:
    if t == DT_NOBEGIN:
        return "-infinity"
    if t == DT_NOEND:
        return "infinity"
    days, micros = divmod(t, USECS_PER_DAY)  # floor: the time of day is never negative
    year, month, day = j2date(days + POSTGRES_EPOCH_JDATE)
    seconds, usec = divmod(micros, 1_000_000)
    minutes, sec = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    y, bc = _year_text(year)
    s = f"{y}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{sec:02d}"
    if usec:
        s += f".{usec:06d}".rstrip("0")
    return s + zone + bc


def _ts_text(t: int) -> str:
    return _timestamp_parts(t, "")


def _tstz_text(t: int) -> str:
    return _timestamp_parts(t, "+00")


INFINITIES: Final = {"infinity": 1, "+infinity": 1, "-infinity": -1}


def _interval_text(iv: Interval) -> str:
    """EncodeInterval, IntervalStyle 'postgres' (the default)."""
    if iv == INTERVAL_NOBEGIN:
        return "-infinity"
    if iv == INTERVAL_NOEND:
        return "infinity"
    months, days, micros = iv
    year = int(months / 12)  # C division truncates toward zero
    mon = months - year * 12
    parts: list[str] = []
    is_before = False
    for value, unit in ((year, "year"), (mon, "mon"), (days, "day")):
        if value == 0:
            continue
        parts.append(f"{'+' if is_before and value > 0 else ''}{value} {unit}{'' if value == 1 else 's'}")
        is_before = value < 0
    if not parts or micros != 0:
        negative = micros < 0
        a = abs(micros)
        hours, rest = divmod(a, 3_600_000_000)
        minutes, rest = divmod(rest, 60_000_000)
        seconds, frac = divmod(rest, 1_000_000)
        sign = "-" if negative else ("+" if is_before else "")
        clock = f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"
        if frac:
            clock += f".{frac:06d}".rstrip("0")
        parts.append(clock)
    return " ".join(parts)


def _json_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def jsonb_text(v: Any) -> str:
    """jsonb_out: keys ordered by length then bytes, ', ' and ': ' separators, numbers as numeric_out."""
    if v is None or v is JSON_NULL:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return _json_str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, Decimal):
        return num_text(v)
    if isinstance(v, list):
        return "[" + ", ".join(jsonb_text(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: (len(k.encode()), k.encode()))
        return "{" + ", ".join(f"{_json_str(k)}: {jsonb_text(v[k])}" for k in keys) + "}"
    raise TypeError(f"not a jsonb value: {v!r}")


def _bool_out(b: bool) -> str:
    return "t" if b else "f"


def bool_text(b: bool) -> str:
    return "true" if b else "false"


def output_function(t: PgType) -> Callable[[Any], str]:
    """Value -> text as the type's output function writes it (``||`` and casts to text through I/O)."""
    name = t.name
    if name in INT_TYPES:
        return str
    if name == "numeric":
        return num_text
    if name == "float8":
        return _float8_text
    if name == "float4":
        return _float4_text
    if name == "bool":
        return _bool_out
    if name == "date":
        return _date_text
    if name == "timestamp":
        return _ts_text
    if name == "timestamptz":
        return _tstz_text
    if name == "interval":
        return _interval_text
    if name == "uuid":
        return str
    if name == "jsonb":
        return jsonb_text
    return _identity_text


def _identity_text(v: Any) -> str:
    return v  # type: ignore[no-any-return]
