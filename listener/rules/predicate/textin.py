"""PostgreSQL's input functions (text -> value): what the ``*in`` functions of src/backend/utils/adt/
(int.c, numeric.c, float.c, bool.c, uuid.c, datetime.c, timestamp.c, jsonb.c) accept and refuse, with
the SQLSTATE PostgreSQL raises on invalid input.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final
from uuid import UUID

from listener.rules.predicate.errors import (
    DATETIME_OVERFLOW,
    INTERVAL_FIELD_OVERFLOW,
    INVALID_TEXT,
    NUMERIC_OUT_OF_RANGE,
    UNTRANSLATABLE,
    EvaluationError,
    invalid,
    unread,
)
from listener.rules.predicate.textout import INFINITIES
from listener.rules.predicate.types import (
    BY_OID,
    DATEVAL_NOBEGIN,
    DATEVAL_NOEND,
    DT_NOBEGIN,
    DT_NOEND,
    EXACT,
    INT_LIMITS,
    INT_TYPES,
    INTERVAL_NOBEGIN,
    INTERVAL_NOEND,
    JSON_NULL,
    POSTGRES_EPOCH_JDATE,
    USECS_PER_DAY,
    WS,
    Interval,
    PgType,
    date2j,
    date_of,
    days_in_month,
    exact_to_f4,
    interval_checked,
    num_norm,
    timestamp_of,
    valid_date,
    valid_julian,
    valid_timestamp,
)

# ----------------------------------------------------------------------- input functions (text -> value)

_INT_RE = re.compile(
    r"[ \t\n\r\v\f]*([+-]?)(0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+|[0-9](?:_?[0-9])*)"
    r"[ \t\n\r\v\f]*\Z"
)


def parse_integer(s: str) -> int | None:
    m = _INT_RE.match(s)
    if m is None:
        return None
    sign, body = m.groups()
    body = body.replace("_", "")
    base = {"x": 16, "o": 8, "b": 2}.get(body[1:2].lower(), 10) if len(body) > 1 and body[0] == "0" else 10
    # more than 4000 digits: out of range for every integer type (and int() refuses to read them)
    value = 10**4000 if base == 10 and len(body) > 4000 else int(body[2:] if base != 10 else body, base)
    return -value if sign == "-" else value


def _int_in(s: str, type_name: str = "int4") -> int:
    """pg_strtoint32/64: decimal with underscores between digits, 0x/0o/0b prefixes, surrounding space."""
    value = parse_integer(s)
    label = LABELS[type_name]
    if value is None:
        raise invalid(label, s)
    lo, hi, _ = INT_LIMITS[type_name]
    if not lo <= value <= hi:
        raise EvaluationError(f'value "{s}" is out of range for type {label}', NUMERIC_OUT_OF_RANGE)
    return value


_NUM_RE = re.compile(
    r"[ \t\n\r\v\f]*([+-]?)(?:([0-9](?:_?[0-9])*)(?:\.((?:[0-9](?:_?[0-9])*)?))?|\.([0-9](?:_?[0-9])*))"
    r"(?:[eE]([+-]?[0-9](?:_?[0-9])*))?[ \t\n\r\v\f]*\Z"
)
_NUM_SPECIAL: Final = {
    "nan": Decimal("NaN"), "infinity": Decimal("Infinity"), "+infinity": Decimal("Infinity"),
    "-infinity": Decimal("-Infinity"), "inf": Decimal("Infinity"), "+inf": Decimal("Infinity"),
    "-inf": Decimal("-Infinity"),
}  # fmt: skip
NUMERIC_MAX_EXPONENT: Final = 100_000  # far beyond any value numeric can hold; keeps Decimal bounded


def num_in(s: str) -> Decimal:
    special = _NUM_SPECIAL.get(s.strip(WS).lower())
    if special is not None:
        return special
    m = _NUM_RE.match(s)
    if m is None:
        value = parse_integer(s)  # non-decimal integers: 0x1F
        if value is None:
            raise invalid("numeric", s)
        return Decimal(value)
    sign, whole, frac, only_frac, exp = m.groups()
    text = f"{sign}{whole or ''}.{frac or only_frac or ''}".replace("_", "")
    if exp is not None:
        exponent = int(exp.replace("_", ""))
        if abs(exponent) > NUMERIC_MAX_EXPONENT:
            raise EvaluationError("value overflows numeric format", NUMERIC_OUT_OF_RANGE)
        text += f"E{exponent}"
    return num_norm(Decimal(text))


_FLOAT_RE = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|0[xX][0-9a-fA-F]*\.?[0-9a-fA-F]*(?:[pP][+-]?[0-9]+)?)\Z"
)
_FLOAT_SPECIAL: Final = {
    "nan": math.nan, "+nan": math.nan, "-nan": math.nan, "infinity": math.inf, "+infinity": math.inf,
    "-infinity": -math.inf, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf,
}  # fmt: skip


def _float_in(s: str, type_name: str = "float8") -> float:
    label = LABELS[type_name]
    body = s.strip(WS)
    special = _FLOAT_SPECIAL.get(body.lower())
    if special is not None:
        return special
    if not body or _FLOAT_RE.match(body) is None:
        raise invalid(label, s)
    out_of_range = EvaluationError(f'"{s}" is out of range for type {label}', NUMERIC_OUT_OF_RANGE)
    if "x" in body.lower():
        try:
            value = float.fromhex(body)
        except OverflowError:
            raise out_of_range from None
        except ValueError:
            raise invalid(label, s) from None
        exact = Fraction(value)
    else:
        d = Decimal(body)
        if not d.is_zero() and not -400 < d.adjusted() < 400:  # far outside float8, and cheap to tell
            raise out_of_range
        exact = Fraction(d)
        value = float(body)  # correctly rounded, as strtod; keeps the sign of zero
    if type_name == "float4":
        value = math.copysign(exact_to_f4(exact), value)
    if math.isinf(value) or (value == 0 and exact != 0):
        raise out_of_range
    return value


def _bool_in(s: str) -> bool:
    v = s.strip(WS).lower()
    if v:
        if v[0] == "t" and "true".startswith(v):
            return True
        if v[0] == "f" and "false".startswith(v):
            return False
        if v[0] == "y" and "yes".startswith(v):
            return True
        if v[0] == "n" and "no".startswith(v):
            return False
        if v in ("on",):
            return True
        if v in ("of", "off"):
            return False
        if v == "1":
            return True
        if v == "0":
            return False
    raise invalid("boolean", s)


_HEX = frozenset("0123456789abcdefABCDEF")


def _uuid_in(s: str) -> UUID:
    """string_to_uuid: optional braces, hex pairs, a hyphen allowed after each group of four digits."""
    src = s[1:] if s.startswith("{") else s
    out = []
    i = 0
    for byte in range(16):
        pair = src[i : i + 2]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise invalid("uuid", s)
        out.append(pair)
        i += 2
        if src[i : i + 1] == "-" and byte % 2 == 1 and byte < 15:
            i += 1
    rest = src[i:]
    if s.startswith("{"):
        if not rest.startswith("}"):
            raise invalid("uuid", s)
        rest = rest[1:]
    if rest:
        raise invalid("uuid", s)
    return UUID("".join(out))


_DT_RE = re.compile(
    r"[ \t\n\r\v\f]*([0-9]{4,})-([0-9]{1,2})-([0-9]{1,2})"
    r"(?:(?:[Tt]|[ \t\n\r\v\f]+)([0-9]{1,2}):([0-9]{1,2})(?::([0-9]{1,2})(?:\.([0-9]*))?)?"
    r"[ \t\n\r\v\f]*(?:([zZ]|UTC|utc|GMT|gmt)|([+-])([0-9]{1,2})(?::?([0-9]{2}))?(?::?([0-9]{2}))?)?)?"
    r"(?:[ \t\n\r\v\f]+((?i:bc|ad)))?"
    r"[ \t\n\r\v\f]*\Z"
)


def datetime_in(s: str, type_name: str) -> int:
    """ISO 8601 date/time input (the subset listener supports of PostgreSQL's datetime parser), with
    ``infinity``, ``-infinity``, ``epoch``, ``BC`` and years past 9999 up to PostgreSQL's limits.

    Returns the value as PostgreSQL stores it: days for 'date', microseconds for 'timestamp' (a zone in
    the text is ignored, as PostgreSQL does) and 'timestamptz' (in UTC; no zone means UTC, the session
    zone)."""
    label = LABELS[type_name]
    word = s.strip(WS).lower()
    if word in INFINITIES:
        later = INFINITIES[word] > 0
        if type_name == "date":
            return DATEVAL_NOEND if later else DATEVAL_NOBEGIN
        return DT_NOEND if later else DT_NOBEGIN
    if word == "epoch":
        return date_of(date(1970, 1, 1)) if type_name == "date" else timestamp_of(datetime(1970, 1, 1))
    m = _DT_RE.match(s)
    if m is None:
        raise unread(label, s)
    year, month, day, hour, minute, second, frac, utc, zsign, zh, zm, zs, era = m.groups()
    y, mo, d = int(year), int(month), int(day)
    if y == 0:  # there is no year 0 in AD/BC notation
        raise EvaluationError(f'date/time field value out of range: "{s}"', DATETIME_OVERFLOW)
    if era is not None and era.lower() == "bc":
        y = 1 - y  # 1 BC is year 0
    if not 1 <= mo <= 12 or not 1 <= d <= days_in_month(y, mo):
        raise EvaluationError(f'date/time field value out of range: "{s}"', DATETIME_OVERFLOW)
    what = "date" if type_name == "date" else "timestamp"
    if not valid_julian(y, mo):
        raise EvaluationError(f'{what} out of range: "{s}"', DATETIME_OVERFLOW)
    days = date2j(y, mo, d) - POSTGRES_EPOCH_JDATE
    if type_name == "date":
        if not valid_date(days):
            raise EvaluationError(f'date out of range: "{s}"', DATETIME_OVERFLOW)
        return days
    h = int(hour or 0)
    mi = int(minute or 0)
    sec = int(second or 0)
    # ParseFractionalSecond: rint() of a double, as PostgreSQL computes it
    usec = round(float("0." + frac) * 1_000_000) if frac else 0
    if mi > 59 or sec > 60 or h > 24 or (h == 24 and (mi or sec or usec)) or (sec == 60 and usec):
        raise EvaluationError(f'date/time field value out of range: "{s}"', DATETIME_OVERFLOW)
    offset = 0
    if zsign is not None:
        zhv, zmv, zsv = int(zh), int(zm or 0), int(zs or 0)
        if zhv > 15 or zmv > 59 or zsv > 59:
            raise EvaluationError(f'time zone displacement out of range: "{s}"', DATETIME_OVERFLOW)
        offset = (zhv * 3600 + zmv * 60 + zsv) * (-1 if zsign == "-" else 1)
    value = days * USECS_PER_DAY + ((h * 60 + mi) * 60 + sec) * 1_000_000 + usec
    if type_name == "timestamptz":
        value -= offset * 1_000_000
    if not valid_timestamp(value):
        raise EvaluationError(f'timestamp out of range: "{s}"', DATETIME_OVERFLOW)
    del utc
    return value


_INTERVAL_UNITS: Final[dict[str, str]] = {}
for _unit, _names in {
    "microsecond": "us usec usecs usecond useconds microsecon microsecond microseconds",
    "millisecond": "ms msec msecs msecond mseconds millisecon millisecond milliseconds",
    "second": "s sec secs second seconds",
    "minute": "m min mins minute minutes",
    "hour": "h hr hrs hour hours",
    "day": "d day days",
    "week": "w week weeks",
    "month": "mon mons month months",
    "year": "y yr yrs year years",
    "decade": "dec decs decade decades",
    "century": "c cent century centuries",
    "millennium": "mil mils millennium millennia",
}.items():
    for _name in _names.split():
        _INTERVAL_UNITS[_name] = _unit

_IV_TOKEN = re.compile(
    r"[ \t\n\r\v\f]*(?:(?P<clock>[+-]?[0-9]+:[0-9]{1,2}(?::[0-9]{1,2}(?:\.[0-9]*)?)?)"
    r"|(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:[ \t\n\r\v\f]*(?P<unit>(?!ago\b)[a-zA-Z]+))?"
    r"|(?P<word>@|ago\b))",
    re.IGNORECASE,
)
_MICROS: Final = {
    "microsecond": 1, "millisecond": 1000, "second": 1_000_000, "minute": 60_000_000, "hour": 3_600_000_000,
}  # fmt: skip
_YEARS: Final = {"year": 1, "decade": 10, "century": 100, "millennium": 1000}


def _c_trunc(x: float) -> int:
    return int(x)  # C's (int) cast truncates toward zero, as Python's int() does


def interval_in(s: str) -> Interval:
    """Interval input: ``[@] quantity unit ... [HH:MM[:SS[.frac]]] [ago]`` with DecodeInterval's rules for
    fractional units; a bare number is seconds, or days before a clock.  That covers IntervalStyle
    'postgres' output; ISO 8601 and SQL-standard forms are not read."""
    body = s.strip(WS)
    if body.lower() in INFINITIES:
        return INTERVAL_NOEND if INFINITIES[body.lower()] > 0 else INTERVAL_NOBEGIN
    tokens: list[re.Match[str]] = []
    pos = 0
    ago = False
    while pos < len(body):
        m = _IV_TOKEN.match(body, pos)
        if m is None or m.end() == pos or ago:
            raise unread("interval", s)
        pos = m.end()
        word = (m["word"] or "").lower()
        if word == "ago":
            ago = True
        elif word != "@":
            tokens.append(m)
    if not tokens:
        raise unread("interval", s)
    months = days = micros = 0
    for index, m in enumerate(tokens):
        if m["clock"] is not None:
            micros += _clock_micros(m["clock"], s)
            continue
        num = m["num"]
        if m["unit"] is not None:
            unit = _INTERVAL_UNITS.get(m["unit"].lower())
            if unit is None:
                raise unread("interval", s)
        else:  # a bare number: days before a clock; seconds when it is all there is
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if following is not None and following["clock"] is not None:
                unit = "day"
            elif len(tokens) == 1:
                unit = "second"
            else:
                raise unread("interval", s)
        whole_text, _, frac_text = num.partition(".")
        digits = whole_text.lstrip("+-")
        if len(digits) > 18:
            raise EvaluationError(f'interval field value out of range: "{s}"', INTERVAL_FIELD_OVERFLOW)
        val = int(digits or "0") * (-1 if num.startswith("-") else 1)
        fval = float("0." + frac_text) if frac_text else 0.0
        if num.startswith("-"):
            fval = -fval
        if unit in _MICROS:
            scale = _MICROS[unit]
            micros += val * scale + _fract_micros(fval * scale)
        elif unit in ("day", "week"):
            scale = 1 if unit == "day" else 7
            days += val * scale
            f = fval * scale
            days += _c_trunc(f)
            micros += _fract_micros((f - _c_trunc(f)) * USECS_PER_DAY)
        elif unit == "month":
            months += val
            f = fval * 30
            days += _c_trunc(f)
            micros += _fract_micros((f - _c_trunc(f)) * USECS_PER_DAY)
        else:
            scale = _YEARS[unit]
            months += val * scale * 12 + round(fval * scale * 12)
    if ago:
        months, days, micros = -months, -days, -micros
    return interval_checked(months, days, micros, INTERVAL_FIELD_OVERFLOW)


def _fract_micros(f: float) -> int:
    """AdjustFractMicroseconds: whole microseconds, then rint() of the rest."""
    return _c_trunc(f) + round(f - _c_trunc(f))


def _clock_micros(clock: str, s: str) -> int:
    negative = clock.startswith("-")
    fields = clock.lstrip("+-").split(":")
    sec, _, frac = (fields[2] if len(fields) > 2 else "0").partition(".")
    if len(fields[0]) > 18 or int(fields[1]) > 59 or int(sec) > 60:
        raise EvaluationError(f'interval field value out of range: "{s}"', INTERVAL_FIELD_OVERFLOW)
    total = (int(fields[0]) * 3600 + int(fields[1]) * 60 + int(sec)) * 1_000_000
    total += round(float("0." + frac) * 1e6) if frac else 0
    return -total if negative else total


class _JsonInputError(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _JsonInputError(f"invalid token {name}")


def json_int(s: str) -> int | Decimal:
    return int(s) if len(s) < 4000 else Decimal(s)


def json_float(s: str) -> Decimal:
    return Decimal(s)


_decode_json = json.JSONDecoder(
    parse_float=json_float, parse_int=json_int, parse_constant=_no_constant
).decode


def _check_json_strings(v: Any, *, nul_ok: bool = False) -> None:
    """PostgreSQL refuses lone surrogates, and jsonb refuses \\u0000, which Python's decoder accepts."""
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if any("\ud800" <= c <= "\udfff" for c in x):
                raise _JsonInputError("a Unicode surrogate must come in a pair")
            if not nul_ok and "\x00" in x:
                raise EvaluationError("unsupported Unicode escape sequence", UNTRANSLATABLE)
        elif isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x)
            stack.extend(x.values())


def jsonb_in(s: str, *, nul_ok: bool = False) -> Any:
    try:
        value = _decode_json(s)
        _check_json_strings(value, nul_ok=nul_ok)
    except ValueError as exc:  # a RecursionError goes on to Predicate.evaluate (see _evaluate_deep)
        raise EvaluationError(f"invalid input syntax for type json: {exc}", INVALID_TEXT) from None
    return JSON_NULL if value is None else value


def _json_in(s: str) -> str:
    jsonb_in(s, nul_ok=True)  # validates; json keeps its text (and may hold \\u0000)
    return s


LABELS: Final = {t.name: t.label for t in BY_OID.values() if t.oid != 19}


def input_function(t: PgType) -> Callable[[str], Any]:
    """Text -> value as the type's input function would read it (a literal, or a cast from text)."""
    name = t.name
    if name in INT_TYPES:
        return lambda s: _int_in(s, name)
    if name == "numeric":
        if t.typmod:
            coerce = numeric_typmod(t.typmod)
            return lambda s: coerce(num_in(s))
        return num_in
    if name in ("float4", "float8"):
        return lambda s: _float_in(s, name)
    if name == "bool":
        return _bool_in
    if name == "text" or name == "enum":
        return str
    if name == "varchar":
        return varchar_typmod(t.typmod) if t.typmod else str
    if name == "bpchar":
        return lambda s: s.rstrip(" ")
    if name in ("date", "timestamp", "timestamptz"):
        return lambda s: datetime_in(s, name)
    if name == "interval":
        return interval_in
    if name == "uuid":
        return _uuid_in
    if name == "jsonb":
        return jsonb_in
    if name == "json":
        return _json_in
    raise AssertionError(name)


def varchar_typmod(typmod: tuple[int, ...]) -> Callable[[str], str]:
    n = typmod[0]
    return lambda s: s[:n]


def numeric_typmod(typmod: tuple[int, ...]) -> Callable[[Decimal], Decimal]:
    """apply_typmod: round to the scale, then refuse more integer digits than precision - scale."""
    precision = typmod[0]
    scale = typmod[1] if len(typmod) > 1 else 0
    quantum = Decimal((0, (1,), -scale))
    limit = Decimal(10) ** (precision - scale)

    def coerce(d: Decimal) -> Decimal:
        if d.is_nan():
            return d
        if d.is_infinite():
            raise EvaluationError("numeric field overflow", NUMERIC_OUT_OF_RANGE)
        rounded = d.quantize(quantum, context=EXACT)
        if abs(rounded) >= limit:
            raise EvaluationError("numeric field overflow", NUMERIC_OUT_OF_RANGE)
        return num_norm(rounded)

    return coerce
