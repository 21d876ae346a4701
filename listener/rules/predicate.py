"""Rule predicates: SQL boolean expressions with PostgreSQL's own semantics, compiled once to closures.

A rule's ``when:`` is a SQL expression over ``new.<col>`` and ``old.<col>`` (a bare column means
``new.<col>``).  :func:`compile_predicate` parses it with pglast (the real PostgreSQL parser), checks every
column and type against the table at load time, and compiles it into nested Python closures; evaluation
never sends the text to a database and never walks the syntax tree again.

What "PostgreSQL's semantics" means here (tests/integration/test_predicate_conformance.py runs generated
expressions through a real server and this module and compares results and SQLSTATEs):

* three-valued logic; strict operators evaluate all their arguments, then return NULL on a NULL input;
  AND/OR/CASE/COALESCE are lazy, left to right;
* constant subexpressions are folded at load time under the planner's rules (``eval_const_expressions``):
  a constant that always fails (``1/0``) is a load-time error, as it is a plan-time error in PostgreSQL,
  unless the planner would never reach it (``false AND 1/0 = 1``);
* operator resolution: unknown-typed literals take the other operand's type (``new.amount > '10.5'``),
  numeric promotion int2 < int4 < int8 < numeric < float8; ``IN`` lists, CASE and COALESCE use
  ``select_common_type``; integer overflow, division by zero and invalid input raise
  :class:`EvaluationError` carrying PostgreSQL's SQLSTATE;
* numeric arithmetic is exact with PostgreSQL's result scales (``select_div_scale`` for division);
  numeric NaN and +-Infinity, float8 NaN, +-Infinity and -0 behave as in PostgreSQL (NaN equals NaN and
  sorts above everything); float8/float4 text follows ``float8out``/``float4out`` (shortest digits);
* text ordering is code-point order, which is PostgreSQL's only under the "C" collation: under another
  database collation an ordering comparison (and lower/upper/ILIKE) needs an explicit ``COLLATE "C"``;
* the session is fixed at ``TimeZone = 'UTC'``, ``DateStyle = ISO``, ``IntervalStyle = postgres``;
  ``now()``/``current_timestamp`` is the ``now`` argument (the change's commit time).

Dates and timestamps are held as PostgreSQL holds them (days / microseconds since 2000-01-01, the
infinities at the ends of the integer range), so infinities, BC and years past 9999 compare, add and
print as in PostgreSQL (see ``date2j``).

Values arrive as PostgreSQL text (pgoutput).  They are loaded lazily, only for referenced columns, with
psycopg's loaders chosen by type OID.  Two exceptions, both because psycopg's loader would lose meaning:
``interval`` (psycopg folds months into 30-day timedeltas, PostgreSQL adds calendar months) and jsonb
numbers (loaded as :class:`~decimal.Decimal`, not float, so ``->>`` and equality match).

Deliberately not supported, refused at load time with a hint (or an :class:`EvaluationError` whose
``sqlstate`` is None at run time, never a guessed answer): date/time text other than ISO 8601
(``'2024-01-31 12:00:00+02'``; PostgreSQL reads many more forms), time zone names other than UTC, the
``time`` types, jsonb ordering, arrays, regular expressions, ``LIKE`` on character(n), enum ordering
(the declared order is not known here; enum labels are not validated either), and the ``json`` type's
operators (cast to ``jsonb``).
"""

from __future__ import annotations

import difflib
import json
import math
import operator
import re
import struct
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_UP, Context, Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Any, Final, NamedTuple
from uuid import UUID

import psycopg
import psycopg.types.json
from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, BoolExprType, BoolTestType, NullTestType, SetOperation
from pglast.enums import SQLValueFunctionOp as SVF
from pglast.parser import ParseError, parse_sql_json
from pglast.stream import RawStream
from psycopg import pq
from psycopg.adapt import AdaptersMap, Transformer

from listener.errors import ListenerError

# ---------------------------------------------------------------------------------------------- errors


class PredicateError(ListenerError, ValueError):
    """A ``when:`` expression that cannot be compiled: says what is wrong, quotes the part, gives the fix.

    ``fragment`` is the offending part (as PostgreSQL deparses it), ``position`` its 0-based character
    offset in the predicate text, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        text: str | None = None,
        fragment: str | None = None,
        position: int | None = None,
        hint: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        shown = message
        if text is not None and position is not None:
            shown += "\n" + _caret(text, position)
        super().__init__(shown, hint=hint)
        self.what = message
        self.text = text
        self.fragment = fragment
        self.position = position
        self.sqlstate = sqlstate  # set when a constant part always fails: the error PostgreSQL raises
        # True when PostgreSQL would accept the expression but listener cannot evaluate it exactly
        self.limitation = False


class EvaluationError(ListenerError):
    """Raised while evaluating, where PostgreSQL would raise (``sqlstate`` is its SQLSTATE).

    ``sqlstate`` is None when the failure is a limit of listener rather than an error PostgreSQL would
    raise (a date format listener does not parse)."""

    def __init__(self, message: str, sqlstate: str | None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.sqlstate = sqlstate


class MissingValue(KeyError):
    """The change carries no value for a referenced column (an unchanged TOAST value, or a key-only old
    row): the caller decides what that means."""

    def __init__(self, side: str, column: str) -> None:
        super().__init__(f"{side}.{column}")
        self.side = side
        self.column = column


def _caret(text: str, position: int) -> str:
    """The line of ``text`` holding ``position``, with a caret under it."""
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    line = text[start : end if end >= 0 else len(text)]
    return f"  {line}\n  {' ' * (position - start)}^"


# SQLSTATEs raised at evaluation, as PostgreSQL names them
NUMERIC_OUT_OF_RANGE: Final = "22003"
DIVISION_BY_ZERO: Final = "22012"
INVALID_TEXT: Final = "22P02"
DATETIME_OVERFLOW: Final = "22008"
INVALID_PARAMETER: Final = "22023"
INVALID_ESCAPE: Final = "22025"
INTERVAL_FIELD_OVERFLOW: Final = "22015"
UNTRANSLATABLE: Final = "22P05"
NOT_SUPPORTED: Final = "0A000"


def _invalid(type_label: str, text: str, sqlstate: str = INVALID_TEXT) -> EvaluationError:
    return EvaluationError(f'invalid input syntax for type {type_label}: "{text}"', sqlstate)


def _unsupported(what: str) -> EvaluationError:
    return EvaluationError(what, None)


def _unread(type_label: str, text: str) -> EvaluationError:
    """Text in a form PostgreSQL's date/time parser may accept but listener does not read."""
    return EvaluationError(
        f'listener cannot read "{text}" as {type_label}',
        None,
        hint="write dates and times in ISO 8601 ('2024-01-31 12:00:00+00') and intervals as "
        "'1 day 02:00:00' / '3 mons'",
    )


# ----------------------------------------------------------------------------------------------- types


@dataclass(frozen=True)
class ColumnType:
    """A table column as the caller knows it from the catalog.

    ``type_oid``: the column's type (domains resolved to their base type); ``type_name``: its
    ``format_type()`` spelling; ``category``: ``pg_type.typcategory`` when known ('E' for enums)."""

    name: str
    type_oid: int
    type_name: str
    category: str = ""


@dataclass(frozen=True, slots=True)
class PgType:
    """A PostgreSQL type as the compiler reasons about it."""

    name: str  # 'int4', 'text', ... ; 'enum', 'other' (unsupported, raw text), 'unknown' (a literal)
    label: str  # format_type() spelling, for messages
    category: str  # pg_type.typcategory: N S B D T U E ...
    preferred: bool = False
    typmod: tuple[int, ...] = ()
    oid: int = 0

    def __str__(self) -> str:
        return self.label


BOOL = PgType("bool", "boolean", "B", True, oid=16)
INT2 = PgType("int2", "smallint", "N", oid=21)
INT4 = PgType("int4", "integer", "N", oid=23)
INT8 = PgType("int8", "bigint", "N", oid=20)
NUMERIC = PgType("numeric", "numeric", "N", oid=1700)
FLOAT4 = PgType("float4", "real", "N", oid=700)
FLOAT8 = PgType("float8", "double precision", "N", True, oid=701)
TEXT = PgType("text", "text", "S", True, oid=25)
VARCHAR = PgType("varchar", "character varying", "S", oid=1043)
BPCHAR = PgType("bpchar", "character", "S", oid=1042)
DATE = PgType("date", "date", "D", oid=1082)
TIMESTAMP = PgType("timestamp", "timestamp without time zone", "D", oid=1114)
TIMESTAMPTZ = PgType("timestamptz", "timestamp with time zone", "D", True, oid=1184)
INTERVAL = PgType("interval", "interval", "T", True, oid=1186)
JSONB = PgType("jsonb", "jsonb", "U", oid=3802)
JSON = PgType("json", "json", "U", oid=114)
UUID_T = PgType("uuid", "uuid", "U", oid=2950)
UNKNOWN = PgType("unknown", "unknown", "X")

_BY_OID: Final[dict[int, PgType]] = {
    t.oid: t
    for t in (BOOL, INT2, INT4, INT8, NUMERIC, FLOAT4, FLOAT8, TEXT, VARCHAR, BPCHAR, DATE, TIMESTAMP,
              TIMESTAMPTZ, INTERVAL, JSONB, JSON, UUID_T)
}  # fmt: skip
_BY_OID[19] = PgType("text", "name", "S", oid=19)  # name behaves as text in every supported operation

INT_TYPES: Final = ("int2", "int4", "int8")
_INT_RANK: Final = {"int2": 0, "int4": 1, "int8": 2}
_INT_LIMITS: Final = {
    "int2": (-(2**15), 2**15 - 1, "smallint out of range"),
    "int4": (-(2**31), 2**31 - 1, "integer out of range"),
    "int8": (-(2**63), 2**63 - 1, "bigint out of range"),
}
_NUM_RANK: Final = {"int2": 0, "int4": 1, "int8": 2, "numeric": 3, "float4": 4, "float8": 5}
_DT_RANK: Final = {"date": 0, "timestamp": 1, "timestamptz": 2}
TEXTLIKE: Final = ("text", "varchar", "bpchar")

# type names a cast may target (TypeName.names[-1], as the parser spells them)
_CAST_NAMES: Final[dict[str, PgType]] = {
    "int2": INT2, "smallint": INT2, "int4": INT4, "int": INT4, "integer": INT4, "int8": INT8,
    "bigint": INT8, "numeric": NUMERIC, "decimal": NUMERIC, "float4": FLOAT4, "real": FLOAT4,
    "float8": FLOAT8, "text": TEXT, "varchar": VARCHAR, "bool": BOOL, "boolean": BOOL, "date": DATE,
    "timestamp": TIMESTAMP, "timestamptz": TIMESTAMPTZ, "interval": INTERVAL, "jsonb": JSONB,
    "json": JSON, "uuid": UUID_T,
}  # fmt: skip

# examples for hints, by type name
_EXAMPLES: Final = {
    "int2": "42", "int4": "42", "int8": "42", "numeric": "10.5", "float4": "1.5", "float8": "1.5",
    "bool": "true", "date": "'2024-01-31'", "timestamp": "'2024-01-31 12:00:00'",
    "timestamptz": "'2024-01-31 12:00:00+00'", "interval": "interval '1 day'",
    "jsonb": """'{"key": "value"}'""", "uuid": "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
    "text": "'text'", "varchar": "'text'", "bpchar": "'text'",
}  # fmt: skip


def column_pg_type(column: ColumnType) -> PgType:
    """The compiler's view of a column's type (unsupported types become 'other': usable only in
    ``IS [NOT] NULL`` and ``::text``)."""
    known = _BY_OID.get(column.type_oid)
    if known is not None:
        if known.name == "varchar" and "(" in column.type_name:
            return PgType("varchar", column.type_name, "S", oid=known.oid)
        return known
    if column.category == "E":
        return PgType("enum", column.type_name, "E", oid=column.type_oid)
    return PgType("other", column.type_name, column.category or "X", oid=column.type_oid)


# ---------------------------------------------------------------------------------------------- values


class Interval(NamedTuple):
    """PostgreSQL's interval: months, days and microseconds are separate fields (a month is not 30 days
    when added to a timestamp; it is when intervals are compared)."""

    months: int
    days: int
    micros: int


# PostgreSQL 17+'s infinite intervals: every field at its minimum / maximum
INTERVAL_NOBEGIN: Final = Interval(-(2**31), -(2**31), -(2**63))
INTERVAL_NOEND: Final = Interval(2**31 - 1, 2**31 - 1, 2**63 - 1)


class _JsonNull:
    """JSON ``null`` as a whole jsonb value (inside containers it stays None); SQL NULL is None."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "JSON_NULL"


JSON_NULL: Final = _JsonNull()

USECS_PER_DAY: Final = 86_400_000_000

# exact decimal arithmetic: add/subtract/multiply never round with this much precision
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, rounding=ROUND_HALF_UP)
_ONE = Decimal(1)
NUMERIC_MIN_SIG_DIGITS: Final = 16  # numeric.c: result scale of division
NUMERIC_MAX_DISPLAY_SCALE: Final = 1000
NUMERIC_DSCALE_MAX: Final = 0x3FFF
_WS: Final = " \t\n\r\v\f"


def _num_norm(d: Decimal) -> Decimal:
    """PostgreSQL's numeric has no negative zero and no positive exponent (a display scale >= 0)."""
    if not d.is_finite():
        return d
    if d.is_zero() and d.is_signed():
        d = d.copy_abs()
    if d.as_tuple().exponent > 0:  # type: ignore[operator]
        d = d.quantize(_ONE, context=_EXACT)
    return d


def _dscale(d: Decimal) -> int:
    exp = d.as_tuple().exponent
    return max(0, -exp) if isinstance(exp, int) else 0


def _num_text(d: Decimal) -> str:
    if d.is_nan():
        return "NaN"
    if d.is_infinite():
        return "-Infinity" if d.is_signed() else "Infinity"
    return format(_num_norm(d), "f")


def _float8_text(x: float) -> str:
    """float8out with the default extra_float_digits: shortest round-trip digits, exponent form when the
    decimal exponent is < -4 or >= 15."""
    return _float_text(x, repr(x), 15)


def _float4_text(x: float) -> str:
    if math.isfinite(x) and x != 0:
        for digits in range(1, 10):
            s = f"{x:.{digits}g}"
            if _exact_to_f4(Fraction(Decimal(s))) == x:  # what strtof would read back
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


_F4 = struct.Struct("f")
FLT_MAX: Final = 3.4028234663852886e38


def _round_f4(x: float) -> float:
    """A float8 rounded to float4 (one rounding: exact for results of float4 arithmetic)."""
    try:
        return float(_F4.unpack(_F4.pack(x))[0])
    except OverflowError:  # beyond the largest float4 even after rounding
        return math.copysign(math.inf, x)


def _exact_to_f4(q: Fraction) -> float:
    """An exact rational rounded once to the nearest float4 (ties to even), as strtof would."""
    if q == 0:
        return 0.0
    negative = q < 0
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** e > q:
        e -= 1
    e = max(e, -126)
    step = Fraction(2) ** (e - 23)
    rounded = round(q / step) * step
    value = math.inf if rounded > FLT_MAX else float(rounded)
    return -value if negative else value


# ------------------------------------------------------------ dates and timestamps as PostgreSQL stores them
# date: days since 2000-01-01; timestamp and timestamptz: microseconds since 2000-01-01 00:00 (UTC for
# timestamptz; the session zone is UTC, so the two share one value).  Plain ints: ordering, equality and
# the infinities (the ends of int32 / int64, as in PostgreSQL) need no special case; BC and years past
# 9999 (Python's datetime holds neither) are ordinary values.  datatype/timestamp.h, utils/adt/datetime.c.
POSTGRES_EPOCH_JDATE: Final = 2451545
DATEVAL_NOBEGIN: Final = -(2**31)
DATEVAL_NOEND: Final = 2**31 - 1
DT_NOBEGIN: Final = -(2**63)
DT_NOEND: Final = 2**63 - 1
_DATE_MIN: Final = 0 - POSTGRES_EPOCH_JDATE  # 4714-11-24 BC
_DATE_END: Final = 2147483494 - POSTGRES_EPOCH_JDATE  # 5874898-01-01
_TIMESTAMP_END_DAYS: Final = 109203528 - POSTGRES_EPOCH_JDATE  # 294277-01-01
MIN_TIMESTAMP: Final = -211813488000000000
END_TIMESTAMP: Final = 9223371331200000000
_PG_EPOCH: Final = datetime(2000, 1, 1)
_PG_EPOCH_TZ: Final = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_ORDINAL: Final = _PG_EPOCH.toordinal()
_ONE_USEC: Final = timedelta(microseconds=1)


def date2j(year: int, month: int, day: int) -> int:
    """Julian day of a proleptic Gregorian date; ``year`` 0 is 1 BC (datetime.c)."""
    if month > 2:
        month += 1
        year += 4800
    else:
        month += 13
        year += 4799
    century = year // 100
    julian = year * 365 - 32167
    julian += year // 4 - century + century // 4
    return julian + 7834 * month // 256 + day


def j2date(jd: int) -> tuple[int, int, int]:
    """(year, month, day) of a Julian day (datetime.c); year 0 is 1 BC."""
    julian = jd + 32044
    quad = julian // 146097
    extra = (julian - quad * 146097) * 4 + 3
    julian += 60 + quad * 3 + extra // 146097
    quad = julian // 1461
    julian -= quad * 1461
    y = julian * 4 // 1461
    julian = ((julian + 305) % 365 if y != 0 else (julian + 306) % 366) + 123
    y += quad * 4
    quad = julian * 2141 // 65536
    return y - 4800, (quad + 10) % 12 + 1, julian - 7834 * quad // 256


def _valid_date(d: int) -> bool:
    return _DATE_MIN <= d < _DATE_END


def _valid_timestamp(t: int) -> bool:
    return MIN_TIMESTAMP <= t < END_TIMESTAMP


def _date_out_of_range() -> EvaluationError:
    return EvaluationError("date out of range", DATETIME_OVERFLOW)


def _ts_out_of_range() -> EvaluationError:
    return EvaluationError("timestamp out of range", DATETIME_OVERFLOW)


def date_of(d: date) -> int:
    """A Python date as the evaluator's date value."""
    return d.toordinal() - _PG_EPOCH_ORDINAL


def timestamp_of(d: datetime) -> int:
    """A Python datetime (naive: as is; aware: in UTC) as the evaluator's timestamp value."""
    return (d - (_PG_EPOCH if d.tzinfo is None else _PG_EPOCH_TZ)) // _ONE_USEC


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


_INFINITIES: Final = {"infinity": 1, "+infinity": 1, "-infinity": -1}


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


def _jsonb_text(v: Any) -> str:
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
        return _num_text(v)
    if isinstance(v, list):
        return "[" + ", ".join(_jsonb_text(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: (len(k.encode()), k.encode()))
        return "{" + ", ".join(f"{_json_str(k)}: {_jsonb_text(v[k])}" for k in keys) + "}"
    raise TypeError(f"not a jsonb value: {v!r}")


def _bool_out(b: bool) -> str:
    return "t" if b else "f"


def _bool_text(b: bool) -> str:
    return "true" if b else "false"


# ----------------------------------------------------------------------- input functions (text -> value)

_INT_RE = re.compile(
    r"[ \t\n\r\v\f]*([+-]?)(0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+|[0-9](?:_?[0-9])*)"
    r"[ \t\n\r\v\f]*\Z"
)


def _parse_int(s: str) -> int | None:
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
    value = _parse_int(s)
    label = _LABELS[type_name]
    if value is None:
        raise _invalid(label, s)
    lo, hi, _ = _INT_LIMITS[type_name]
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


def _num_in(s: str) -> Decimal:
    special = _NUM_SPECIAL.get(s.strip(_WS).lower())
    if special is not None:
        return special
    m = _NUM_RE.match(s)
    if m is None:
        value = _parse_int(s)  # non-decimal integers: 0x1F
        if value is None:
            raise _invalid("numeric", s)
        return Decimal(value)
    sign, whole, frac, only_frac, exp = m.groups()
    text = f"{sign}{whole or ''}.{frac or only_frac or ''}".replace("_", "")
    if exp is not None:
        exponent = int(exp.replace("_", ""))
        if abs(exponent) > NUMERIC_MAX_EXPONENT:
            raise EvaluationError("value overflows numeric format", NUMERIC_OUT_OF_RANGE)
        text += f"E{exponent}"
    return _num_norm(Decimal(text))


_FLOAT_RE = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|0[xX][0-9a-fA-F]*\.?[0-9a-fA-F]*(?:[pP][+-]?[0-9]+)?)\Z"
)
_FLOAT_SPECIAL: Final = {
    "nan": math.nan, "+nan": math.nan, "-nan": math.nan, "infinity": math.inf, "+infinity": math.inf,
    "-infinity": -math.inf, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf,
}  # fmt: skip


def _float_in(s: str, type_name: str = "float8") -> float:
    label = _LABELS[type_name]
    body = s.strip(_WS)
    special = _FLOAT_SPECIAL.get(body.lower())
    if special is not None:
        return special
    if not body or _FLOAT_RE.match(body) is None:
        raise _invalid(label, s)
    out_of_range = EvaluationError(f'"{s}" is out of range for type {label}', NUMERIC_OUT_OF_RANGE)
    if "x" in body.lower():
        try:
            value = float.fromhex(body)
        except OverflowError:
            raise out_of_range from None
        except ValueError:
            raise _invalid(label, s) from None
        exact = Fraction(value)
    else:
        d = Decimal(body)
        if not d.is_zero() and not -400 < d.adjusted() < 400:  # far outside float8, and cheap to tell
            raise out_of_range
        exact = Fraction(d)
        value = float(body)  # correctly rounded, as strtod; keeps the sign of zero
    if type_name == "float4":
        value = math.copysign(_exact_to_f4(exact), value)
    if math.isinf(value) or (value == 0 and exact != 0):
        raise out_of_range
    return value


def _bool_in(s: str) -> bool:
    v = s.strip(_WS).lower()
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
    raise _invalid("boolean", s)


_HEX = frozenset("0123456789abcdefABCDEF")


def _uuid_in(s: str) -> UUID:
    """string_to_uuid: optional braces, hex pairs, a hyphen allowed after each group of four digits."""
    src = s[1:] if s.startswith("{") else s
    out = []
    i = 0
    for byte in range(16):
        pair = src[i : i + 2]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise _invalid("uuid", s)
        out.append(pair)
        i += 2
        if src[i : i + 1] == "-" and byte % 2 == 1 and byte < 15:
            i += 1
    rest = src[i:]
    if s.startswith("{"):
        if not rest.startswith("}"):
            raise _invalid("uuid", s)
        rest = rest[1:]
    if rest:
        raise _invalid("uuid", s)
    return UUID("".join(out))


_DT_RE = re.compile(
    r"[ \t\n\r\v\f]*([0-9]{4,})-([0-9]{1,2})-([0-9]{1,2})"
    r"(?:(?:[Tt]|[ \t\n\r\v\f]+)([0-9]{1,2}):([0-9]{1,2})(?::([0-9]{1,2})(?:\.([0-9]*))?)?"
    r"[ \t\n\r\v\f]*(?:([zZ]|UTC|utc|GMT|gmt)|([+-])([0-9]{1,2})(?::?([0-9]{2}))?(?::?([0-9]{2}))?)?)?"
    r"(?:[ \t\n\r\v\f]+((?i:bc|ad)))?"
    r"[ \t\n\r\v\f]*\Z"
)
_DAYS_IN_MONTH: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in_month(year: int, month: int) -> int:
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)  # year 0 (1 BC) is a leap year
    return _DAYS_IN_MONTH[month - 1] + (1 if month == 2 and leap else 0)


def _valid_julian(year: int, month: int) -> bool:
    """IS_VALID_JULIAN: from 4714-11 BC (year -4713) to 5874898-06 (exclusive), by month."""
    return (year > -4713 or (year == -4713 and month >= 11)) and (
        year < 5874898 or (year == 5874898 and month < 6)
    )


def _datetime_in(s: str, type_name: str) -> int:
    """ISO 8601 date/time input (the subset listener supports of PostgreSQL's datetime parser), with
    ``infinity``, ``-infinity``, ``epoch``, ``BC`` and years past 9999 up to PostgreSQL's limits.

    Returns the value as PostgreSQL stores it: days for 'date', microseconds for 'timestamp' (a zone in
    the text is ignored, as PostgreSQL does) and 'timestamptz' (in UTC; no zone means UTC, the session
    zone)."""
    label = _LABELS[type_name]
    word = s.strip(_WS).lower()
    if word in _INFINITIES:
        later = _INFINITIES[word] > 0
        if type_name == "date":
            return DATEVAL_NOEND if later else DATEVAL_NOBEGIN
        return DT_NOEND if later else DT_NOBEGIN
    if word == "epoch":
        return date_of(date(1970, 1, 1)) if type_name == "date" else timestamp_of(datetime(1970, 1, 1))
    m = _DT_RE.match(s)
    if m is None:
        raise _unread(label, s)
    year, month, day, hour, minute, second, frac, utc, zsign, zh, zm, zs, era = m.groups()
    y, mo, d = int(year), int(month), int(day)
    if y == 0:  # there is no year 0 in AD/BC notation
        raise EvaluationError(f'date/time field value out of range: "{s}"', DATETIME_OVERFLOW)
    if era is not None and era.lower() == "bc":
        y = 1 - y  # 1 BC is year 0
    if not 1 <= mo <= 12 or not 1 <= d <= _days_in_month(y, mo):
        raise EvaluationError(f'date/time field value out of range: "{s}"', DATETIME_OVERFLOW)
    what = "date" if type_name == "date" else "timestamp"
    if not _valid_julian(y, mo):
        raise EvaluationError(f'{what} out of range: "{s}"', DATETIME_OVERFLOW)
    days = date2j(y, mo, d) - POSTGRES_EPOCH_JDATE
    if type_name == "date":
        if not _valid_date(days):
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
    if not _valid_timestamp(value):
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


def _interval_in(s: str) -> Interval:
    """Interval input: ``[@] quantity unit ... [HH:MM[:SS[.frac]]] [ago]`` with DecodeInterval's rules for
    fractional units; a bare number is seconds, or days before a clock.  That covers IntervalStyle
    'postgres' output; ISO 8601 and SQL-standard forms are not read."""
    body = s.strip(_WS)
    if body.lower() in _INFINITIES:
        return INTERVAL_NOEND if _INFINITIES[body.lower()] > 0 else INTERVAL_NOBEGIN
    tokens: list[re.Match[str]] = []
    pos = 0
    ago = False
    while pos < len(body):
        m = _IV_TOKEN.match(body, pos)
        if m is None or m.end() == pos or ago:
            raise _unread("interval", s)
        pos = m.end()
        word = (m["word"] or "").lower()
        if word == "ago":
            ago = True
        elif word != "@":
            tokens.append(m)
    if not tokens:
        raise _unread("interval", s)
    months = days = micros = 0
    for index, m in enumerate(tokens):
        if m["clock"] is not None:
            micros += _clock_micros(m["clock"], s)
            continue
        num = m["num"]
        if m["unit"] is not None:
            unit = _INTERVAL_UNITS.get(m["unit"].lower())
            if unit is None:
                raise _unread("interval", s)
        else:  # a bare number: days before a clock; seconds when it is all there is
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if following is not None and following["clock"] is not None:
                unit = "day"
            elif len(tokens) == 1:
                unit = "second"
            else:
                raise _unread("interval", s)
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
    return _interval_checked(months, days, micros, INTERVAL_FIELD_OVERFLOW)


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


def _interval_checked(months: int, days: int, micros: int, sqlstate: str = DATETIME_OVERFLOW) -> Interval:
    if not (-(2**31) <= months < 2**31 and -(2**31) <= days < 2**31 and -(2**63) <= micros < 2**63):
        raise EvaluationError("interval out of range", sqlstate)
    return Interval(months, days, micros)


class _JsonInputError(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _JsonInputError(f"invalid token {name}")


def _json_int(s: str) -> int | Decimal:
    return int(s) if len(s) < 4000 else Decimal(s)


def _json_float(s: str) -> Decimal:
    return Decimal(s)


_decode_json = json.JSONDecoder(
    parse_float=_json_float, parse_int=_json_int, parse_constant=_no_constant
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


def _jsonb_in(s: str, *, nul_ok: bool = False) -> Any:
    try:
        value = _decode_json(s)
        _check_json_strings(value, nul_ok=nul_ok)
    except ValueError as exc:  # a RecursionError goes on to Predicate.evaluate (see _evaluate_deep)
        raise EvaluationError(f"invalid input syntax for type json: {exc}", INVALID_TEXT) from None
    return JSON_NULL if value is None else value


def _json_in(s: str) -> str:
    _jsonb_in(s, nul_ok=True)  # validates; json keeps its text (and may hold \\u0000)
    return s


_LABELS: Final = {t.name: t.label for t in _BY_OID.values() if t.oid != 19}


def input_function(t: PgType) -> Callable[[str], Any]:
    """Text -> value as the type's input function would read it (a literal, or a cast from text)."""
    name = t.name
    if name in INT_TYPES:
        return lambda s: _int_in(s, name)
    if name == "numeric":
        if t.typmod:
            coerce = _numeric_typmod(t.typmod)
            return lambda s: coerce(_num_in(s))
        return _num_in
    if name in ("float4", "float8"):
        return lambda s: _float_in(s, name)
    if name == "bool":
        return _bool_in
    if name == "text" or name == "enum":
        return str
    if name == "varchar":
        return _varchar_typmod(t.typmod) if t.typmod else str
    if name == "bpchar":
        return lambda s: s.rstrip(" ")
    if name in ("date", "timestamp", "timestamptz"):
        return lambda s: _datetime_in(s, name)
    if name == "interval":
        return _interval_in
    if name == "uuid":
        return _uuid_in
    if name == "jsonb":
        return _jsonb_in
    if name == "json":
        return _json_in
    raise AssertionError(name)


def _varchar_typmod(typmod: tuple[int, ...]) -> Callable[[str], str]:
    n = typmod[0]
    return lambda s: s[:n]


def _numeric_typmod(typmod: tuple[int, ...]) -> Callable[[Decimal], Decimal]:
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
        rounded = d.quantize(quantum, context=_EXACT)
        if abs(rounded) >= limit:
            raise EvaluationError("numeric field overflow", NUMERIC_OUT_OF_RANGE)
        return _num_norm(rounded)

    return coerce


def output_function(t: PgType) -> Callable[[Any], str]:
    """Value -> text as the type's output function writes it (``||`` and casts to text through I/O)."""
    name = t.name
    if name in INT_TYPES:
        return str
    if name == "numeric":
        return _num_text
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
        return _jsonb_text
    return _identity_text


def _identity_text(v: Any) -> str:
    return v  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------ arithmetic


def _div0() -> EvaluationError:
    return EvaluationError("division by zero", DIVISION_BY_ZERO)


def int_ops(type_name: str) -> dict[str, Callable[..., int]]:
    """+ - * / % and unary minus for one integer width, raising PostgreSQL's out-of-range error."""
    lo, hi, message = _INT_LIMITS[type_name]

    def check(v: int) -> int:
        if lo <= v <= hi:
            return v
        raise EvaluationError(message, NUMERIC_OUT_OF_RANGE)

    def add(a: int, b: int) -> int:
        return check(a + b)

    def sub(a: int, b: int) -> int:
        return check(a - b)

    def mul(a: int, b: int) -> int:
        return check(a * b)

    def div(a: int, b: int) -> int:
        if b == 0:
            raise _div0()
        q = abs(a) // abs(b)  # C division truncates toward zero
        return check(-q if (a < 0) != (b < 0) else q)

    def mod(a: int, b: int) -> int:
        if b == 0:
            raise _div0()
        r = abs(a) % abs(b)  # the remainder takes the dividend's sign
        return -r if a < 0 else r

    def neg(a: int) -> int:
        return check(-a)

    return {"+": add, "-": sub, "*": mul, "/": div, "%": mod, "neg": neg}


_NAN = Decimal("NaN")
_ZERO = Decimal(0)


def _num_sign(d: Decimal) -> int:
    return 0 if d.is_zero() else (-1 if d.is_signed() else 1)


def _signed_inf(negative: bool) -> Decimal:
    return Decimal("-Infinity") if negative else Decimal("Infinity")


def num_add(a: Decimal, b: Decimal) -> Decimal:
    if a.is_finite() and b.is_finite():
        return _num_norm(_EXACT.add(a, b))
    if a.is_nan() or b.is_nan():
        return _NAN
    if a.is_infinite() and b.is_infinite():
        return a if a == b else _NAN
    return a if a.is_infinite() else b


def num_neg(a: Decimal) -> Decimal:
    return a if a.is_nan() else _num_norm(_EXACT.minus(a))


def num_sub(a: Decimal, b: Decimal) -> Decimal:
    return num_add(a, num_neg(b))


def num_mul(a: Decimal, b: Decimal) -> Decimal:
    if a.is_finite() and b.is_finite():
        r = _EXACT.multiply(a, b)
        if _dscale(r) > NUMERIC_DSCALE_MAX:
            r = r.quantize(Decimal((0, (1,), -NUMERIC_DSCALE_MAX)), context=_EXACT)
        return _num_norm(r)
    if a.is_nan() or b.is_nan():
        return _NAN
    sa, sb = _num_sign(a), _num_sign(b)
    if sa == 0 or sb == 0:
        return _NAN  # infinity times zero
    return _signed_inf(sa * sb < 0)


def _weight_first(d: Decimal) -> tuple[int, int]:
    """numeric.c's view of a value in base 10000: the weight and the value of its first nonzero digit."""
    if d.is_zero():
        return 0, 0
    _, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    coefficient = int("".join(map(str, digits)))
    weight = (exp + len(digits) - 1) // 4
    shift = 4 * weight - exp
    first = coefficient // 10**shift if shift >= 0 else coefficient * 10**-shift
    return weight, first


def div_scale(a: Decimal, b: Decimal) -> int:
    """select_div_scale (numeric.c): the result scale of numeric division."""
    w1, f1 = _weight_first(a)
    w2, f2 = _weight_first(b)
    qweight = w1 - w2
    if f1 <= f2:
        qweight -= 1
    rscale = NUMERIC_MIN_SIG_DIGITS - qweight * 4
    rscale = max(rscale, _dscale(a), _dscale(b), 0)
    return min(rscale, NUMERIC_MAX_DISPLAY_SCALE)


def num_div(a: Decimal, b: Decimal) -> Decimal:
    if a.is_nan() or b.is_nan():
        return _NAN
    if a.is_infinite():
        if b.is_infinite():
            return _NAN
        if b.is_zero():
            raise _div0()
        return _signed_inf(a.is_signed() != b.is_signed())
    if b.is_infinite():
        return _ZERO
    if b.is_zero():
        raise _div0()
    rscale = div_scale(a, b)
    sa, da, ea = a.as_tuple()
    sb, db, eb = b.as_tuple()
    assert isinstance(ea, int) and isinstance(eb, int)
    num = int("".join(map(str, da)))
    den = int("".join(map(str, db)))
    k = ea - eb + rscale
    if k >= 0:
        num *= 10**k
    else:
        den *= 10**-k
    q, r = divmod(num, den)
    if 2 * r >= den:  # round half away from zero
        q += 1
    return _num_norm(Decimal((sa != sb, tuple(map(int, str(q))), -rscale)))


def num_mod(a: Decimal, b: Decimal) -> Decimal:
    if a.is_nan() or b.is_nan():
        return _NAN
    if a.is_infinite():
        if b.is_zero():
            raise _div0()
        return _NAN
    if b.is_infinite():
        return a
    if b.is_zero():
        raise _div0()
    return _num_norm(_EXACT.remainder(a, b))


_NUM_OPS: Final[dict[str, Callable[..., Decimal]]] = {
    "+": num_add, "-": num_sub, "*": num_mul, "/": num_div, "%": num_mod, "neg": num_neg,
}  # fmt: skip


def _overflow() -> EvaluationError:
    return EvaluationError("value out of range: overflow", NUMERIC_OUT_OF_RANGE)


def _underflow() -> EvaluationError:
    return EvaluationError("value out of range: underflow", NUMERIC_OUT_OF_RANGE)


def float_ops(single: bool) -> dict[str, Callable[..., float]]:
    """float8 (or float4) arithmetic with float.c's overflow, underflow and division-by-zero checks."""
    rnd: Callable[[float], float] = _round_f4 if single else float
    isinf = math.isinf

    def add(a: float, b: float) -> float:
        r = rnd(a + b)
        if isinf(r) and not isinf(a) and not isinf(b):
            raise _overflow()
        return r

    def sub(a: float, b: float) -> float:
        r = rnd(a - b)
        if isinf(r) and not isinf(a) and not isinf(b):
            raise _overflow()
        return r

    def mul(a: float, b: float) -> float:
        r = rnd(a * b)
        if isinf(r) and not isinf(a) and not isinf(b):
            raise _overflow()
        if r == 0 and a != 0 and b != 0:
            raise _underflow()
        return r

    def div(a: float, b: float) -> float:
        if b == 0:
            if a != a:
                return math.nan
            raise _div0()
        r = rnd(a / b)
        if isinf(r) and not isinf(a):
            raise _overflow()
        if r == 0 and a != 0 and not isinf(b):
            raise _underflow()
        return r

    def neg(a: float) -> float:
        return -a

    return {"+": add, "-": sub, "*": mul, "/": div, "neg": neg}


# ---------------------------------------------------------------------------- dates, times, intervals


def _checked_timestamp(t: int) -> int:
    if not _valid_timestamp(t):
        raise _ts_out_of_range()
    return t


def add_interval(ts: int, iv: Interval) -> int:
    """timestamp[tz] + interval (timestamp_pl_interval): calendar months first (clamping the day), then
    days, then time, each step checked against the timestamp range.  An infinite timestamp stays; an
    infinite interval makes the timestamp infinite (the opposite infinity is out of range)."""
    if iv in (INTERVAL_NOBEGIN, INTERVAL_NOEND):
        if ts == (DT_NOEND if iv == INTERVAL_NOBEGIN else DT_NOBEGIN):
            raise _ts_out_of_range()
        return DT_NOBEGIN if iv == INTERVAL_NOBEGIN else DT_NOEND
    if ts in (DT_NOBEGIN, DT_NOEND):
        return ts
    months, days, micros = iv
    if months:
        day_number, time = divmod(ts, USECS_PER_DAY)
        year, month, day = j2date(day_number + POSTGRES_EPOCH_JDATE)
        year, month0 = divmod(year * 12 + month - 1 + months, 12)
        if not _valid_julian(year, month0 + 1):
            raise _ts_out_of_range()
        day = min(day, _days_in_month(year, month0 + 1))
        ts = _checked_timestamp((date2j(year, month0 + 1, day) - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY + time)
    if days:
        ts = _checked_timestamp(ts + days * USECS_PER_DAY)
    if micros:
        ts = _checked_timestamp(ts + micros)
    return ts


def _infinite_interval(iv: Interval) -> bool:
    return iv in (INTERVAL_NOBEGIN, INTERVAL_NOEND)


def interval_neg(iv: Interval) -> Interval:
    if _infinite_interval(iv):
        return INTERVAL_NOEND if iv == INTERVAL_NOBEGIN else INTERVAL_NOBEGIN
    return _interval_checked(-iv.months, -iv.days, -iv.micros)


def sub_interval(ts: int, iv: Interval) -> int:
    return add_interval(ts, interval_neg(iv))  # timestamp_mi_interval


def interval_add(a: Interval, b: Interval) -> Interval:
    if _infinite_interval(a) or _infinite_interval(b):  # interval_pl: opposite infinities are an error
        if _infinite_interval(a) and _infinite_interval(b) and a != b:
            raise EvaluationError("interval out of range", DATETIME_OVERFLOW)
        return a if _infinite_interval(a) else b
    return _interval_checked(a.months + b.months, a.days + b.days, a.micros + b.micros)


def interval_sub(a: Interval, b: Interval) -> Interval:
    if _infinite_interval(a) or _infinite_interval(b):  # interval_mi: equal infinities are an error
        if a == b:
            raise EvaluationError("interval out of range", DATETIME_OVERFLOW)
        return a if _infinite_interval(a) else interval_neg(b)
    return _interval_checked(a.months - b.months, a.days - b.days, a.micros - b.micros)


def _interval_out_of_range() -> EvaluationError:
    return EvaluationError("interval out of range", DATETIME_OVERFLOW)


def _tsround(x: float) -> float:
    return round(x * 1_000_000.0) / 1_000_000.0  # TSROUND: rint to microsecond precision


def _fits_int32(x: float) -> bool:
    return -(2.0**31) <= x < 2.0**31  # FLOAT8_FITS_IN_INT32 (false for NaN)


def _add_int32(a: int, b: int) -> int:
    if not -(2**31) <= a + b < 2**31:
        raise _interval_out_of_range()
    return a + b


def _interval_scaled(iv: Interval, scale: Callable[[float], float]) -> Interval:
    """interval_mul / interval_div on a finite interval: each field scaled in float8, the fractions of
    months and days cascaded down (a month is 30 days, a day 86400 seconds), never up."""
    month_product, day_product = scale(float(iv.months)), scale(float(iv.days))
    if not (_fits_int32(month_product) and _fits_int32(day_product)):
        raise _interval_out_of_range()
    months, days = int(month_product), int(day_product)
    month_remainder_days = _tsround((month_product - months) * 30)
    sec_remainder = _tsround((day_product - days + month_remainder_days - int(month_remainder_days)) * 86400)
    if abs(sec_remainder) >= 86400:
        days = _add_int32(days, int(sec_remainder / 86400))
        sec_remainder -= int(sec_remainder / 86400) * 86400
    days = _add_int32(days, int(month_remainder_days))
    time = scale(float(iv.micros)) + sec_remainder * 1_000_000.0
    if not math.isfinite(time) or not -(2.0**63) <= round(time) < 2.0**63:
        raise _interval_out_of_range()
    result = Interval(months, days, round(time))
    if _infinite_interval(result):
        raise _interval_out_of_range()
    return result


def interval_mul(iv: Interval, factor: float) -> Interval:
    """interval * float8 (interval_mul): 0 * infinity and NaN are out of range."""
    if math.isnan(factor):
        raise _interval_out_of_range()
    if _infinite_interval(iv):
        if factor == 0.0:
            raise _interval_out_of_range()
        return interval_neg(iv) if factor < 0.0 else iv
    if math.isinf(factor):
        key = interval_key(iv)
        if key == 0:
            raise _interval_out_of_range()
        return INTERVAL_NOBEGIN if (factor < 0) != (key < 0) else INTERVAL_NOEND
    return _interval_scaled(iv, lambda x: x * factor)


def interval_div(iv: Interval, factor: float) -> Interval:
    """interval / float8 (interval_div): division by zero; infinity / infinity is out of range."""
    if factor == 0.0:
        raise EvaluationError("division by zero", DIVISION_BY_ZERO)
    if math.isnan(factor):
        raise _interval_out_of_range()
    if _infinite_interval(iv):
        if math.isinf(factor):
            raise _interval_out_of_range()
        return interval_neg(iv) if factor < 0.0 else iv
    return _interval_scaled(iv, lambda x: x / factor)


def ts_diff(a: int, b: int) -> Interval:
    """timestamp - timestamp: microseconds, then justify_hours (whole days out, same sign)."""
    if a in (DT_NOBEGIN, DT_NOEND) or b in (DT_NOBEGIN, DT_NOEND):  # timestamp_mi
        if a == b:
            raise EvaluationError("interval out of range", DATETIME_OVERFLOW)
        return INTERVAL_NOBEGIN if a == DT_NOBEGIN or b == DT_NOEND else INTERVAL_NOEND
    micros = a - b
    if not -(2**63) <= micros < 2**63:
        raise EvaluationError("interval out of range", DATETIME_OVERFLOW)
    days = abs(micros) // USECS_PER_DAY * (1 if micros >= 0 else -1)  # TMODULO truncates toward zero
    micros -= days * USECS_PER_DAY
    return _interval_checked(0, days, micros)


def _date_plus_days(d: int, n: int) -> int:
    if d in (DATEVAL_NOBEGIN, DATEVAL_NOEND):
        return d
    result = d + n
    if not _valid_date(result):
        raise _date_out_of_range()
    return result


def date_pli(d: int, n: int) -> int:
    return _date_plus_days(d, n)


def date_mii(d: int, n: int) -> int:
    return _date_plus_days(d, -n)


def date_mi(a: int, b: int) -> int:
    if a in (DATEVAL_NOBEGIN, DATEVAL_NOEND) or b in (DATEVAL_NOBEGIN, DATEVAL_NOEND):
        raise EvaluationError("cannot subtract infinite dates", DATETIME_OVERFLOW)
    return a - b


def _date_ts(d: int) -> int:
    """date2timestamp: the infinities map to the timestamp's; a date past 294276 AD does not convert."""
    if d == DATEVAL_NOBEGIN:
        return DT_NOBEGIN
    if d == DATEVAL_NOEND:
        return DT_NOEND
    if d >= _TIMESTAMP_END_DAYS:
        raise EvaluationError("date out of range for timestamp", DATETIME_OVERFLOW)
    return d * USECS_PER_DAY


def _date_ts_compared(d: int) -> int:
    """date2timestamp_opt_overflow, as date-vs-timestamp comparisons use it: a date past the timestamp
    range is later than every finite timestamp and earlier than infinity, never an error."""
    if DATEVAL_NOBEGIN < d < DATEVAL_NOEND and d >= _TIMESTAMP_END_DAYS:
        return END_TIMESTAMP
    return _date_ts(d)


def _ts_date(t: int) -> int:
    if t == DT_NOBEGIN:
        return DATEVAL_NOBEGIN
    if t == DT_NOEND:
        return DATEVAL_NOEND
    return t // USECS_PER_DAY  # the day it falls in (floor)


def interval_key(iv: Interval) -> int:
    """interval_cmp_value: a month counts 30 days, a day 24 hours."""
    return (iv.months * 30 + iv.days) * USECS_PER_DAY + iv.micros


# ------------------------------------------------------------------------------------------ comparison


def _nan_eq(a: Any, b: Any) -> bool:
    # NaN equals NaN and sorts above everything else (float.c, numeric.c)
    if a != a:
        return b != b  # type: ignore[no-any-return]
    if b != b:
        return False
    return a == b  # type: ignore[no-any-return]


def _nan_ne(a: Any, b: Any) -> bool:
    return not _nan_eq(a, b)


def _nan_lt(a: Any, b: Any) -> bool:
    if a != a:
        return False
    if b != b:
        return True
    return a < b  # type: ignore[no-any-return]


def _nan_le(a: Any, b: Any) -> bool:
    if b != b:
        return True
    if a != a:
        return False
    return a <= b  # type: ignore[no-any-return]


def _nan_gt(a: Any, b: Any) -> bool:
    return _nan_lt(b, a)


def _nan_ge(a: Any, b: Any) -> bool:
    return _nan_le(b, a)


_PLAIN_CMP: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq, "<>": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge,
}  # fmt: skip
_NAN_CMP: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": _nan_eq, "<>": _nan_ne, "<": _nan_lt, "<=": _nan_le, ">": _nan_gt, ">=": _nan_ge,
}  # fmt: skip


def _keyed(cmp: Callable[[Any, Any], bool], key: Callable[[Any], Any]) -> Callable[[Any, Any], bool]:
    return lambda a, b: cmp(key(a), key(b))


# ------------------------------------------------------------------------------------------------ jsonb


def _jkind(v: Any) -> int:
    if v is None or v is JSON_NULL:
        return 0
    if v is True or v is False:
        return 1
    if isinstance(v, (int, Decimal)):
        return 2
    if isinstance(v, str):
        return 3
    if isinstance(v, list):
        return 4
    return 5


def jsonb_eq(a: Any, b: Any) -> bool:
    """jsonb equality: same kinds all the way down (true is not 1), numbers by value, arrays in order."""
    ka, kb = _jkind(a), _jkind(b)
    if ka != kb:
        return False
    if ka == 0:
        return True
    if ka == 4:
        return len(a) == len(b) and all(jsonb_eq(x, y) for x, y in zip(a, b, strict=True))
    if ka == 5:
        return a.keys() == b.keys() and all(jsonb_eq(a[k], b[k]) for k in a)
    return a == b  # type: ignore[no-any-return]


def _jsonb_ne(a: Any, b: Any) -> bool:
    return not jsonb_eq(a, b)


def jsonb_contains(a: Any, b: Any) -> bool:
    """``a @> b`` (JsonbDeepContains).  A top-level scalar is a one-element array that may be contained
    in an array but may not contain one."""
    ka, kb = _jkind(a), _jkind(b)
    if ka < 4 and kb < 4:
        return jsonb_eq(a, b)
    if ka < 4:
        return False  # a scalar contains no container
    if kb < 4:
        return ka == 4 and any(_jkind(x) == kb and jsonb_eq(x, b) for x in a)
    return _deep_contains(a, b)


def _deep_contains(a: Any, b: Any) -> bool:
    ka, kb = _jkind(a), _jkind(b)
    if ka != kb:
        return False
    if ka == 5:
        for key, vb in b.items():
            if key not in a:
                return False
            va = a[key]
            kva, kvb = _jkind(va), _jkind(vb)
            if kva != kvb:
                return False
            if kvb < 4:
                if not jsonb_eq(va, vb):
                    return False
            elif not _deep_contains(va, vb):
                return False
        return True
    for vb in b:
        kvb = _jkind(vb)
        if kvb < 4:
            if not any(_jkind(x) == kvb and jsonb_eq(x, vb) for x in a):
                return False
        elif not any(_jkind(x) == kvb and _deep_contains(x, vb) for x in a):
            return False
    return True


def jsonb_exists(a: Any, key: str) -> bool:
    """``a ? key``: an object's key, or a string element of a top-level array (or the scalar string)."""
    if isinstance(a, dict):
        return key in a
    if isinstance(a, list):
        return any(isinstance(x, str) and x == key for x in a)
    return isinstance(a, str) and a == key


def jsonb_field(a: Any, key: str) -> Any:
    if isinstance(a, dict):
        v = a.get(key, _MISSING)
        if v is _MISSING:
            return None
        return JSON_NULL if v is None else v
    return None


def jsonb_element(a: Any, index: int) -> Any:
    if isinstance(a, dict):
        return None
    items = a if isinstance(a, list) else [a]  # a top-level scalar is a one-element array
    if index < 0:
        index += len(items)
    if 0 <= index < len(items):
        v = items[index]
        return JSON_NULL if v is None else v
    return None


_MISSING: Final = object()


def jsonb_concat(a: Any, b: Any) -> Any:
    """``jsonb || jsonb``: objects merge (the right side wins), anything else concatenates as arrays (a
    non-array becomes a one-element array)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {**a, **b}
    left = a if isinstance(a, list) else [None if a is JSON_NULL else a]
    right = b if isinstance(b, list) else [None if b is JSON_NULL else b]
    return left + right


def jsonb_as_text(v: Any) -> str | None:
    """The text ``->>`` returns: a string unquoted, JSON null as SQL NULL, anything else as jsonb text."""
    if v is JSON_NULL or v is None:
        return None
    if isinstance(v, str):
        return v
    return _jsonb_text(v)


_JKIND_NAMES: Final = ("null", "boolean", "number", "string", "array", "object")


def _jsonb_cast(target: PgType) -> Callable[[Any], Any]:
    """jsonb -> numeric / integer / float / boolean casts (jsonb.c); JSON null gives SQL NULL."""
    wanted = 1 if target.name == "bool" else 2
    convert = None if target.name in ("bool", "numeric") else _cast_value_fn(NUMERIC, target)

    def cast(v: Any) -> Any:
        kind = _jkind(v)
        if kind == 0:
            return None
        if kind != wanted:
            raise EvaluationError(
                f"cannot cast jsonb {_JKIND_NAMES[kind]} to type {target.label}", INVALID_PARAMETER
            )
        if wanted == 1:
            return v
        d = v if isinstance(v, Decimal) else Decimal(v)
        return convert(d) if convert is not None else _num_norm(d)

    return cast


# ------------------------------------------------------------------------------------------------- LIKE

_ASCII_LOWER: Final = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_ASCII_UPPER: Final = {c + 32: c for c in range(ord("A"), ord("Z") + 1)}


def ascii_lower(s: str) -> str:
    """lower() under the "C" ctype: only ASCII letters change."""
    return s.lower() if s.isascii() else s.translate(_ASCII_LOWER)


def ascii_upper(s: str) -> str:
    return s.upper() if s.isascii() else s.translate(_ASCII_UPPER)


def like_escape(pattern: str, escape: str) -> str:
    """do_like_escape: rewrite a pattern with a custom escape character to one using backslash."""
    if escape == "":
        return pattern.replace("\\", "\\\\")
    if len(escape) != 1:
        raise EvaluationError(
            "invalid escape string", INVALID_ESCAPE, hint="Escape string must be empty or one character."
        )
    if escape == "\\":
        return pattern
    out = []
    after_escape = False
    for ch in pattern:
        if ch == escape and not after_escape:
            out.append("\\")
            after_escape = True
        elif ch == "\\":
            out.append("\\" if after_escape else "\\\\")
            after_escape = False
        else:
            out.append(ch)
            after_escape = False
    return "".join(out)


_LIKE_ABORT: Final = 2


def _match_text(t: str, p: str) -> int:
    """MatchText (like_match.c) over characters: 1 match, 0 no match, 2 abort (no later start can match).
    Used for patterns that end in an escape character, where PostgreSQL raises only when it gets there."""
    ti = pi = 0
    while ti < len(t) and pi < len(p):
        c = p[pi]
        if c == "\\":
            pi += 1
            if pi >= len(p):
                raise EvaluationError("LIKE pattern must not end with escape character", INVALID_ESCAPE)
            if p[pi] != t[ti]:
                return 0
        elif c == "%":
            pi += 1
            while pi < len(p):
                if p[pi] == "%":
                    pi += 1
                elif p[pi] == "_":
                    if ti >= len(t):
                        return _LIKE_ABORT
                    ti += 1
                    pi += 1
                else:
                    break
            if pi >= len(p):
                return 1
            if p[pi] == "\\":
                if pi + 1 >= len(p):
                    raise EvaluationError("LIKE pattern must not end with escape character", INVALID_ESCAPE)
                first = p[pi + 1]
            else:
                first = p[pi]
            while ti < len(t):
                if t[ti] == first:
                    r = _match_text(t[ti:], p[pi:])
                    if r != 0:
                        return r
                ti += 1
            return _LIKE_ABORT
        elif c != "_" and c != t[ti]:
            return 0
        ti += 1
        pi += 1
    if ti < len(t):
        return 0
    while pi < len(p) and p[pi] == "%":
        pi += 1
    return 1 if pi >= len(p) else _LIKE_ABORT


@lru_cache(maxsize=512)
def like_matcher(pattern: str) -> Callable[[str], bool]:
    """A matcher for a backslash-escaped LIKE pattern: a regular expression where that is exact and
    cheap, else the port of MatchText."""
    parts: list[str] = []
    i = 0
    exact = True
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 >= len(pattern):
                exact = False
                break
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "%":
            if not parts or parts[-1] != ".*":
                parts.append(".*")
        elif c == "_":
            parts.append(".")
        else:
            parts.append(re.escape(c))
        i += 1
    # many wildcards make backtracking regular expressions slow; MatchText stays polynomial
    if exact and parts.count(".*") <= 3:
        match = re.compile("".join(parts), re.DOTALL).fullmatch
        return lambda s: match(s) is not None
    return lambda s: _match_text(s, pattern) == 1


# ------------------------------------------------------------------------------------------------ casts


@dataclass(frozen=True, slots=True)
class CastInfo:
    fn: Callable[[Any], Any]
    stable: bool = False  # not immutable (depends on TimeZone/DateStyle): never folded, no row filter
    io: bool = False  # through text I/O (CoerceViaIO): PostgreSQL refuses it in row filters


def _int_cast(target: str) -> Callable[[int], int]:
    lo, hi, message = _INT_LIMITS[target]

    def cast(v: int) -> int:
        if lo <= v <= hi:
            return v
        raise EvaluationError(message, NUMERIC_OUT_OF_RANGE)

    return cast


def _num_to_int(target: str) -> Callable[[Decimal], int]:
    check = _int_cast(target)

    def cast(d: Decimal) -> int:
        if d.is_nan():
            raise EvaluationError("cannot convert NaN to " + _LABELS[target], NOT_SUPPORTED)
        if d.is_infinite():
            raise EvaluationError("cannot convert infinity to " + _LABELS[target], NOT_SUPPORTED)
        return check(int(d.to_integral_value(ROUND_HALF_UP, context=_EXACT)))

    return cast


def _float_to_int(target: str) -> Callable[[float], int]:
    check = _int_cast(target)
    message = _INT_LIMITS[target][2]

    def cast(x: float) -> int:
        if x != x or math.isinf(x):
            raise EvaluationError(message, NUMERIC_OUT_OF_RANGE)
        return check(round(x))  # rint(): half to even

    return cast


def _num_to_float(single: bool) -> Callable[[Decimal], float]:
    label = "real" if single else "double precision"

    def cast(d: Decimal) -> float:
        if not d.is_finite():
            return math.nan if d.is_nan() else (-math.inf if d.is_signed() else math.inf)
        if not d.is_zero() and not -400 < d.adjusted() < 400:
            value = math.inf if d.adjusted() > 0 else 0.0
        else:
            value = _exact_to_f4(Fraction(d)) if single else float(d)
        if math.isinf(value) or (value == 0 and not d.is_zero()):
            raise EvaluationError(f'"{_num_text(d)}" is out of range for type {label}', NUMERIC_OUT_OF_RANGE)
        return value

    return cast


def _float_to_num(single: bool) -> Callable[[float], Decimal]:
    digits = 6 if single else 15  # FLT_DIG / DBL_DIG: float8_numeric prints %.15g, then reads it

    def cast(x: float) -> Decimal:
        if x != x:
            return _NAN
        if math.isinf(x):
            return _signed_inf(x < 0)
        return _num_norm(Decimal(f"{x:.{digits}g}"))

    return cast


def _f8_to_f4(x: float) -> float:
    r = _round_f4(x)
    if math.isinf(r) and not math.isinf(x):
        raise _overflow()
    if r == 0 and x != 0:
        raise _underflow()
    return r


def _int_to_f4(v: int) -> float:
    return _exact_to_f4(Fraction(v))


def _identity(v: Any) -> Any:
    return v


_STABLE_OUT: Final = frozenset({"date", "timestamp", "timestamptz", "interval", "enum"})
_STABLE_IN: Final = frozenset({"date", "timestamp", "timestamptz", "interval", "enum"})
# built-in types whose cast to text is a function, not the output function (pg_cast): listener cannot
# reproduce those from the text it receives, so ::text on such a column is refused
_FUNCTION_TEXT_CASTS: Final = frozenset({18, 650, 869, 142})  # "char", cidr, inet, xml


def cast_info(src: PgType, dst: PgType) -> CastInfo | None:
    """How a value of ``src`` becomes ``dst`` in an explicit cast (None: PostgreSQL has no such cast)."""
    s, d = src.name, dst.name
    if d == "numeric" and dst.typmod:
        inner = cast_info(src, NUMERIC)
        if inner is None:
            return None
        typmod = _numeric_typmod(dst.typmod)
        inner_fn = inner.fn
        return CastInfo(lambda v: typmod(inner_fn(v)), inner.stable, inner.io)
    if d == "varchar" and dst.typmod:
        inner = cast_info(src, TEXT)
        if inner is None:
            return None
        cut = _varchar_typmod(dst.typmod)
        return CastInfo(lambda v: cut(inner.fn(v)), inner.stable, inner.io)
    if s == d and s not in ("enum", "other"):
        return CastInfo(_identity)
    if s in _NUM_RANK and d in _NUM_RANK:
        fn = _cast_value_fn(src, dst)
        return CastInfo(fn) if fn is not None else None
    if s == "bool" and d == "int4":
        return CastInfo(int)
    if s == "int4" and d == "bool":
        return CastInfo(bool)
    if d in ("text", "varchar"):
        if s in TEXTLIKE:
            return CastInfo(_identity)
        if s == "bool":
            return CastInfo(_bool_text)
        if s == "other" and src.oid in _FUNCTION_TEXT_CASTS:
            return None
        if s == "other" and (src.oid >= 16384 and src.category not in ("E", "A")):
            return None  # a user-defined type may define its own cast to text
        return CastInfo(output_function(src), s in _STABLE_OUT, io=True)
    if s in TEXTLIKE and d in ("bpchar",):
        return CastInfo(lambda v: v.rstrip(" "))
    if s in TEXTLIKE and d not in ("other",):
        parse = input_function(dst)
        return CastInfo(parse, d in _STABLE_IN, io=True)
    if s in _DT_RANK and d in _DT_RANK:
        fn = _DT_CASTS.get((s, d))
        if fn is None:
            return None
        return CastInfo(fn, stable="timestamptz" in (s, d))
    if s == "jsonb" and d in ("numeric", "int2", "int4", "int8", "float4", "float8", "bool"):
        return CastInfo(_jsonb_cast(dst))
    if s == "jsonb" and d == "json":
        return CastInfo(_jsonb_text, io=True)
    if s == "json" and d == "jsonb":
        return CastInfo(_jsonb_in, io=True)
    return None


# the session time zone is UTC: timestamp and timestamptz hold the same microseconds
_DT_CASTS: Final[dict[tuple[str, str], Callable[[Any], Any]]] = {
    ("date", "timestamp"): _date_ts, ("date", "timestamptz"): _date_ts,
    ("timestamp", "date"): _ts_date, ("timestamp", "timestamptz"): _identity,
    ("timestamptz", "date"): _ts_date, ("timestamptz", "timestamp"): _identity,
}  # fmt: skip


def _cast_value_fn(src: PgType, dst: PgType) -> Callable[[Any], Any] | None:
    """Numeric-category casts (int2/4/8, numeric, float4/8)."""
    s, d = src.name, dst.name
    if s == d:
        return _identity
    if s in INT_TYPES:
        if d in INT_TYPES:
            return _int_cast(d)
        if d == "numeric":
            return Decimal
        if d == "float8":
            return float
        if d == "float4":
            return _int_to_f4
    if s == "numeric":
        if d in INT_TYPES:
            return _num_to_int(d)
        if d in ("float4", "float8"):
            return _num_to_float(d == "float4")
    if s in ("float4", "float8"):
        if d in INT_TYPES:
            return _float_to_int(d)
        if d == "numeric":
            return _float_to_num(s == "float4")
        if d == "float8":
            return _identity
        if d == "float4":
            return _f8_to_f4
    return None


def can_coerce_implicitly(src: PgType, dst: PgType) -> bool:
    s, d = src.name, dst.name
    if s == d:
        return s not in ("enum", "other") or src.oid == dst.oid
    if s == "unknown":
        return True
    if s in _NUM_RANK and d in _NUM_RANK:
        return _NUM_RANK[s] < _NUM_RANK[d]
    if s in _DT_RANK and d in _DT_RANK:
        return _DT_RANK[s] < _DT_RANK[d]
    return s in TEXTLIKE and d in TEXTLIKE


# --------------------------------------------------------------------------------------------- compiler

Fn = Callable[[Any, Any, Any], Any]  # (new, old, now) -> value; None is SQL NULL

SELECT_PREFIX: Final = "SELECT "
# database collations whose text order is code-point order (what Python's str comparison does)
CODE_POINT_COLLATIONS: Final = frozenset({"C", "POSIX", "C.UTF-8", "C.utf8", "ucs_basic", "pg_c_utf8"})
# ... and whose lower()/upper()/ILIKE fold ASCII letters only (the "C" ctype)
C_CTYPES: Final = frozenset({"C", "POSIX"})
_EXPLICIT_C: Final = frozenset({"C", "POSIX", "ucs_basic"})

_AGGREGATES: Final = frozenset(
    [
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "array_agg",
        "string_agg",
        "bool_and",
        "bool_or",
        "every",
        "json_agg",
        "jsonb_agg",
        "json_object_agg",
        "jsonb_object_agg",
        "stddev",
        "variance",
        "percentile_cont",
        "percentile_disc",
        "mode",
        "bit_and",
        "bit_or",
    ]
)
_VOLATILE: Final = frozenset(
    [
        "random",
        "clock_timestamp",
        "statement_timestamp",
        "timeofday",
        "nextval",
        "currval",
        "setval",
        "gen_random_uuid",
        "uuid_generate_v4",
        "pg_sleep",
        "txid_current",
    ]
)
_SUPPORTED_FUNCTIONS: Final = (
    "lower, upper, length, char_length, btrim, ltrim, rtrim, trim, coalesce, nullif, now, "
    "current_timestamp, current_date, localtimestamp"
)
_COMPARISONS: Final = frozenset({"=", "<>", "<", "<=", ">", ">="})
_BETWEEN: Final = frozenset(
    {
        A_Expr_Kind.AEXPR_BETWEEN,
        A_Expr_Kind.AEXPR_NOT_BETWEEN,
        A_Expr_Kind.AEXPR_BETWEEN_SYM,
        A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM,
    }
)
_ARITHMETIC: Final = frozenset({"+", "-", "*", "/", "%"})
_JSON_OPS: Final = frozenset({"->", "->>", "@>", "<@", "?"})
_OP_HINTS: Final = {
    "~": "use LIKE (regular expressions are not supported)", "~*": "use ILIKE", "!~": "use NOT LIKE",
    "!~*": "use NOT ILIKE", "#>": "chain -> operators: new.data -> 'a' -> 'b'",
    "#>>": "chain -> and ->>: new.data -> 'a' ->> 'b'", "?|": "combine ? tests with OR",
    "?&": "combine ? tests with AND", "^": "multiply instead", "||/": "not supported", "|/": "not supported",
}  # fmt: skip


def _const_fn(v: Any) -> Fn:
    return lambda n, o, t: v


def _raise_fn(exc: EvaluationError) -> Fn:
    def fail(n: Any, o: Any, t: Any) -> Any:
        raise exc

    return fail


@dataclass(slots=True)
class _E:
    """A compiled subexpression: its type, its evaluator, and what the planner would know about it."""

    type: PgType
    fn: Fn
    node: Any
    const: bool = False
    value: Any = None
    literal: str | None = None  # the text of an unknown-typed string literal
    error: EvaluationError | None = None  # a constant that fails when folded (raised if PG folds it)
    collation: str | None = None  # an explicit COLLATE ("C"), else None
    has_var: bool = False
    stable: str | None = None  # why this is not immutable (never folded)
    no_filter: str | None = None  # why PostgreSQL would refuse this in a publication row filter
    error_node: Any = None  # the constant subexpression that fails

    @property
    def is_null(self) -> bool:
        return self.const and self.error is None and self.value is None


def _strict1(impl: Callable[[Any], Any], fa: Fn) -> Fn:
    def f(n: Any, o: Any, t: Any) -> Any:
        a = fa(n, o, t)
        return None if a is None else impl(a)

    return f


def _strict2(impl: Callable[[Any, Any], Any], a: _E, b: _E) -> Fn:
    fa, fb = a.fn, b.fn
    if b.const and not a.const:
        cb = b.value

        def fconst(n: Any, o: Any, t: Any) -> Any:
            x = fa(n, o, t)
            return None if x is None else impl(x, cb)

        return fconst
    if a.const and not b.const:
        ca = a.value

        def fconst_left(n: Any, o: Any, t: Any) -> Any:
            y = fb(n, o, t)
            return None if y is None else impl(ca, y)

        return fconst_left

    def f(n: Any, o: Any, t: Any) -> Any:
        # a strict function evaluates all its arguments, then returns NULL on a NULL one
        x = fa(n, o, t)
        y = fb(n, o, t)
        if x is None or y is None:
            return None
        return impl(x, y)

    return f


def _strict3(impl: Callable[[Any, Any, Any], Any], a: _E, b: _E, c: _E) -> Fn:
    fa, fb, fc = a.fn, b.fn, c.fn

    def f(n: Any, o: Any, t: Any) -> Any:
        x = fa(n, o, t)
        y = fb(n, o, t)
        z = fc(n, o, t)
        if x is None or y is None or z is None:
            return None
        return impl(x, y, z)

    return f


def _and_fn(fns: Sequence[Fn]) -> Fn:
    if len(fns) == 2:
        f1, f2 = fns

        def and2(n: Any, o: Any, t: Any) -> Any:
            a = f1(n, o, t)
            if a is False:
                return False
            b = f2(n, o, t)
            if b is False:
                return False
            return None if a is None or b is None else True

        return and2

    def and_n(n: Any, o: Any, t: Any) -> Any:
        null = False
        for f in fns:
            v = f(n, o, t)
            if v is False:
                return False
            if v is None:
                null = True
        return None if null else True

    return and_n


def _or_fn(fns: Sequence[Fn]) -> Fn:
    if len(fns) == 2:
        f1, f2 = fns

        def or2(n: Any, o: Any, t: Any) -> Any:
            a = f1(n, o, t)
            if a is True:
                return True
            b = f2(n, o, t)
            if b is True:
                return True
            return None if a is None or b is None else False

        return or2

    def or_n(n: Any, o: Any, t: Any) -> Any:
        null = False
        for f in fns:
            v = f(n, o, t)
            if v is True:
                return True
            if v is None:
                null = True
        return None if null else False

    return or_n


def _utc_now(n: Any, o: Any, t: datetime) -> int:
    if t is None:
        raise EvaluationError("now() needs the change's commit time", None)
    return timestamp_of(t)  # naive means UTC


def _json_loads_pg(data: Any) -> Any:
    return _decode_pg_json(bytes(data).decode() if isinstance(data, (bytes, bytearray, memoryview)) else data)


# jsonb text from the server: numbers as Decimal (PostgreSQL's numeric), never NaN/Infinity
_decode_pg_json = json.JSONDecoder(parse_float=_json_float, parse_int=_json_int).decode
_ADAPTERS = AdaptersMap(psycopg.adapters)
psycopg.types.json.set_json_loads(_json_loads_pg, _ADAPTERS)
_TRANSFORMER = Transformer(_ADAPTERS)
_TEXT_LOAD = _TRANSFORMER.get_loader(25, pq.Format.TEXT).load


def _as_text(raw: Any) -> str:
    return raw if raw.__class__ is str else _TEXT_LOAD(raw)


def value_loader(t: PgType, where: str) -> Callable[[Any], Any]:
    """Server text (bytes or str) -> the value the evaluator works with, by psycopg's loader for the
    type OID (interval excepted: see the module docstring)."""
    name = t.name
    if name in ("text", "varchar", "enum", "other", "json"):
        return _as_text
    if name == "bpchar":
        return lambda raw: _as_text(raw).rstrip(" ")
    if name in ("date", "timestamp", "timestamptz"):
        return _datetime_loader(t, where)
    if name == "interval":

        def load_interval(raw: Any) -> Interval:
            try:
                return _interval_in(_as_text(raw))
            except EvaluationError as exc:
                message = f"{where}: cannot read interval {_as_text(raw)!r} ({exc.message})"
                raise _unsupported(message + "; listener reads IntervalStyle 'postgres'") from None

        return load_interval
    load = _TRANSFORMER.get_loader(t.oid, pq.Format.TEXT).load
    jsonb = name == "jsonb"

    def load_value(raw: Any) -> Any:
        try:
            v = load(raw.encode() if raw.__class__ is str else raw)
        except RecursionError:
            raise  # deep jsonb: evaluated again with a deeper stack (see _evaluate_deep)
        except Exception as exc:
            raise _unsupported(
                f"{where}: the {t.label} value {_as_text(raw)!r} cannot be read: {exc}"
            ) from None
        return JSON_NULL if jsonb and v is None else v

    if name == "float4":
        # psycopg reads '0.1' as the double 0.1; the column holds the float4 nearest 0.1, which is what
        # PostgreSQL compares (0.1::float4 <> 0.1)
        def load_float4(raw: Any) -> float:
            v: float = load_value(raw)
            return _exact_to_f4(Fraction(Decimal(_as_text(raw)))) if math.isfinite(v) else v

        return load_float4
    return load_value


def _datetime_loader(t: PgType, where: str) -> Callable[[Any], int]:
    """date/timestamp/timestamptz text -> days or microseconds since 2000-01-01 (see ``date2j``).

    psycopg's loader reads the common case fast; it refuses what Python's datetime cannot hold
    (``infinity``, BC, years past 9999: psycopg's docs, "Handling infinity date", suggest a custom
    loader), and PostgreSQL's text of those is read by :func:`_datetime_in`."""
    name = t.name
    fast = _TRANSFORMER.get_loader(t.oid, pq.Format.TEXT).load
    convert: Callable[[Any], int] = date_of if name == "date" else timestamp_of

    def load_datetime(raw: Any) -> int:
        try:
            return convert(fast(raw.encode() if raw.__class__ is str else raw))
        except (psycopg.DataError, ValueError, OverflowError):
            text = _as_text(raw)
        try:
            return _datetime_in(text, name)
        except EvaluationError as exc:
            message = f"{where}: the {t.label} value {text!r} cannot be read: {exc.message}"
            raise _unsupported(message) from None

    return load_datetime


_CHEAP_LOADS: Final = frozenset({"text", "varchar", "enum", "other", "json", "bpchar", "bool", *INT_TYPES})


def _column_fn(side: str, name: str, load: Callable[[Any], Any], memo: bool) -> Fn:
    """Reads one column of the new or old row: absent side -> NULL, absent key -> MissingValue.

    Values that are costly to load keep the last (raw, value) pair: the same raw object loads once even
    when the predicate names the column several times."""
    new = side == "new"
    cell: tuple[Any, Any] = (_MISSING, None)

    def cached(raw: Any) -> Any:
        nonlocal cell
        last = cell
        if last[0] is raw:
            return last[1]
        v = load(raw)
        cell = (raw, v)
        return v

    get = cached if memo else load

    def column(n: Any, o: Any, t: Any) -> Any:
        row = n if new else o
        if row is None:
            return None
        try:
            raw = row[name]
        except KeyError:
            raise MissingValue(side, name) from None
        return None if raw is None else get(raw)

    return column


def _plain(t: PgType) -> PgType:
    """The type an operator sees: typmods dropped, strings as text."""
    if t.name in ("varchar", "text"):
        return TEXT
    if t.name == "numeric":
        return NUMERIC
    return t


class _Compiler:
    def __init__(
        self, text: str, columns: Mapping[str, ColumnType], collation: str, locations: dict[int, int]
    ) -> None:
        self.text = text
        self.column_types = {name: column_pg_type(c) for name, c in columns.items()}
        self.collation = collation
        self.code_point_order = collation in CODE_POINT_COLLATIONS
        self.c_ctype = collation in C_CTYPES
        self.locations = locations
        self.references: set[tuple[str, str]] = set()
        self.uses_now = False
        self._columns: dict[tuple[str, str], _E] = {}

    # -- messages

    def position(self, node: Any) -> int | None:
        loc = self.locations.get(id(node))
        if loc is None:
            loc = getattr(node, "location", None)
        if loc is None or loc < len(SELECT_PREFIX):
            return None
        return int(loc) - len(SELECT_PREFIX)

    def fragment(self, node: Any) -> str:
        try:
            return str(RawStream()(node))
        except Exception:
            pos = self.position(node)
            return self.text[pos : pos + 30] if pos is not None else self.text

    def error(
        self,
        message: str,
        node: Any,
        hint: str | None = None,
        *,
        sqlstate: str | None = None,
        limitation: bool = False,
    ) -> PredicateError:
        """``sqlstate``: the error PostgreSQL raises for the same expression; ``limitation``: PostgreSQL
        would evaluate it, listener will not (or not exactly)."""
        error = PredicateError(
            message,
            text=self.text,
            fragment=self.fragment(node),
            position=self.position(node),
            hint=hint,
            sqlstate=sqlstate,
        )
        error.limitation = limitation
        return error

    def refuse(self, what: str, node: Any, hint: str) -> PredicateError:
        return self.error(
            f"{what} is not supported in a predicate: {self.fragment(node)}", node, hint, limitation=True
        )

    # -- building blocks

    def derive(
        self,
        t: PgType,
        fn: Fn,
        node: Any,
        args: Sequence[_E],
        *,
        stable: str | None = None,
        no_filter: str | None = None,
        collation: str | None = None,
        fold: bool = True,
        lazy: bool = False,
    ) -> _E:
        """A node over ``args``: flags inherited; folded when every argument is a constant and the
        operation is immutable (a failure is deferred: it is raised only if the planner would fold it).
        ``lazy`` nodes (AND, OR, CASE, COALESCE) decide themselves which failing arguments count."""
        # an argument's reason comes first: it names the innermost cause (now(), old.x)
        stable = next((a.stable for a in args if a.stable), None) or stable
        no_filter = next((a.no_filter for a in args if a.no_filter), None) or no_filter or stable
        e = _E(
            t,
            fn,
            node,
            has_var=any(a.has_var for a in args),
            stable=stable,
            no_filter=no_filter,
            collation=collation,
        )
        failing = None if lazy else next((a for a in args if a.error is not None), None)
        if failing is not None:
            e.const, e.error, e.fn, e.error_node = True, failing.error, failing.fn, failing.error_node
            return e
        if fold and stable is None and all(a.const for a in args):
            try:
                value = fn(None, None, None)
            except EvaluationError as exc:
                e.const, e.error, e.fn, e.error_node = True, exc, _raise_fn(exc), node
                return e
            e.const, e.value, e.fn = True, value, _const_fn(value)
        return e

    def null(self, t: PgType, node: Any, args: Sequence[_E] = (), **kw: Any) -> _E:
        return self.constant(t, None, node, args, **kw)

    def constant(self, t: PgType, value: Any, node: Any, args: Sequence[_E] = (), **kw: Any) -> _E:
        """A folded result: a constant that keeps its arguments' flags (row filter, references)."""
        e = self.derive(t, _const_fn(value), node, args, fold=False, lazy=True, **kw)
        # a constant is immutable whatever it was made of (the planner dropped the rest); what a row
        # filter may contain is judged before simplification, so no_filter stays
        e.const, e.value, e.error, e.stable = True, value, None, None
        return e

    def strict(self, impl: Callable[..., Any], args: Sequence[_E], t: PgType, node: Any, **kw: Any) -> _E:
        """A strict function: NULL in, NULL out (a NULL constant argument folds the call to NULL)."""
        if not any(a.error for a in args) and any(a.is_null for a in args):
            return self.null(t, node, args, **kw)
        if len(args) == 1:
            fn = _strict1(impl, args[0].fn)
        elif len(args) == 2:
            fn = _strict2(impl, args[0], args[1])
        else:
            fn = _strict3(impl, args[0], args[1], args[2])
        return self.derive(t, fn, node, args, **kw)

    def failing_guard(self, e: _E) -> _E:
        if e.error is not None:
            node = e.error_node if e.error_node is not None else e.node
            error = self.error(
                f"{self.fragment(node)} always fails: {e.error.message}",
                node,
                "PostgreSQL evaluates constant parts when it plans the query, so this predicate could never "
                "be evaluated; fix the constant expression",
            )
            error.sqlstate = e.error.sqlstate
            raise error
        return e

    # -- types and coercion

    def literal_as(self, e: _E, target: PgType, node: Any | None = None) -> _E:
        """An unknown-typed literal takes a type: the type's input function reads it now (parse time)."""
        node = e.node if node is None else node
        if target.name in ("other", "unknown"):
            raise self.unevaluated(target, e.node)
        if e.value is None:
            return _E(target, _const_fn(None), node, const=True)
        try:
            value = input_function(target)(e.literal if e.literal is not None else str(e.value))
        except EvaluationError as exc:
            example = _EXAMPLES.get(target.name)
            hint = f"write a value of type {target.label}" + (f", e.g. {example}" if example else "")
            if exc.sqlstate is None:
                error = self.error(f"{self.fragment(e.node)}: {exc.message}", e.node, exc.hint or hint)
                error.limitation = True
                raise error from None
            error = self.error(
                f"{self.fragment(e.node)} is not a valid {target.label}: {exc.message}", e.node, hint
            )
            error.sqlstate = exc.sqlstate
            raise error from None
        return _E(target, _const_fn(value), node, const=True, value=value, collation=e.collation)

    def evaluable(self, *args: _E) -> None:
        for a in args:
            if a.type.name == "other":
                raise self.unevaluated(a.type, a.node)

    def unevaluated(self, t: PgType, node: Any) -> PredicateError:
        return self.error(
            f"listener does not evaluate values of type {t.label}: {self.fragment(node)}",
            node,
            "test it with IS [NOT] NULL, or compare its text form: (new.<column>)::text = '...'",
            limitation=True,
        )

    def compared_as(self, e: _E, target: PgType, node: Any) -> _E:
        """A date/time operand of a cross-type comparison: a date compared with a timestamp converts
        without failing (date_cmp_timestamp), the rest as an implicit cast."""
        if e.type.name == "date" and target.name != "date":
            return self.strict(_date_ts_compared, [e], target, node)
        return self.coerce(e, target)

    def coerce(self, e: _E, target: PgType) -> _E:
        """Implicit conversion of an operator argument to ``target``."""
        if e.type.name == "unknown":
            return self.literal_as(e, target)
        if e.type == target or (e.type.name == target.name and e.type.name not in ("enum", "other")):
            return e
        if e.type.name in TEXTLIKE and target.name in ("text", "varchar"):
            return _retype(e, target)
        info = cast_info(e.type, target)
        if info is None or not can_coerce_implicitly(e.type, target):
            raise self.error(
                f"{self.fragment(e.node)} is {e.type.label}, which does not convert to {target.label}",
                e.node,
                f"cast it explicitly, e.g. ({self.fragment(e.node)})::{target.label}",
                sqlstate="42804",
            )
        return self.apply_cast(e, target, info, e.node)

    def apply_cast(self, e: _E, target: PgType, info: CastInfo, node: Any) -> _E:
        stable = f"{self.fragment(node)} depends on the session time zone" if info.stable else None
        no_filter = (
            f"{self.fragment(node)} converts through text, which PostgreSQL refuses in a row filter"
            if info.io
            else None
        )
        collation = e.collation if target.category == "S" else None
        return self.strict(
            info.fn, [e], target, node, stable=stable, no_filter=no_filter, collation=collation
        )

    def common_type(
        self, exprs: Sequence[_E], what: str, node: Any, *, required: bool = True
    ) -> PgType | None:
        """select_common_type (parse_coerce.c): the type CASE/COALESCE/IN values are converted to."""
        known = [e for e in exprs if e.type.name != "unknown"]
        if not known:
            return TEXT
        ptype = _plain(known[0].type)
        for e in known[1:]:
            ntype = _plain(e.type)
            if ntype == ptype:
                continue
            if ntype.category != ptype.category:
                if not required:
                    return None
                raise self.error(
                    f"{what} types {ptype.label} and {ntype.label} cannot be matched: "
                    f"{self.fragment(e.node)}",
                    e.node,
                    f"cast the values to one type, e.g. ({self.fragment(e.node)})::{ptype.label}",
                    sqlstate="42804",
                )
            if (
                not ptype.preferred
                and can_coerce_implicitly(ptype, ntype)
                and not can_coerce_implicitly(ntype, ptype)
            ):
                ptype = ntype
        for e in exprs:
            if e.type.name != "unknown" and not can_coerce_implicitly(_plain(e.type), ptype):
                if not required:
                    return None
                raise self.error(
                    f"{what} types {ptype.label} and {e.type.label} cannot be matched: "
                    f"{self.fragment(e.node)}",
                    e.node,
                    f"cast the values to one type, e.g. ({self.fragment(e.node)})::{ptype.label}",
                    sqlstate="42804",
                )
        return ptype

    def boolean(self, e: _E, context: str, node: Any) -> _E:
        if e.type.name == "bool":
            return e
        if e.type.name == "unknown":
            return self.literal_as(e, BOOL)
        raise self.error(
            f"argument of {context} must be type boolean, not type {e.type.label}: {self.fragment(e.node)}",
            e.node,
            "compare it to something, e.g. " + _compare_example(self.fragment(e.node), e.type),
            sqlstate="42804",
        )

    # -- dispatch

    def expr(self, node: Any) -> _E:
        if isinstance(node, ast.A_Const):
            return self.a_const(node)
        if isinstance(node, ast.ColumnRef):
            return self.column(node)
        if isinstance(node, ast.A_Expr):
            return self.a_expr(node)
        if isinstance(node, ast.BoolExpr):
            return self.bool_expr(node)
        if isinstance(node, ast.NullTest):
            return self.null_test(node)
        if isinstance(node, ast.BooleanTest):
            return self.boolean_test(node)
        if isinstance(node, ast.TypeCast):
            return self.type_cast(node)
        if isinstance(node, ast.FuncCall):
            return self.func_call(node)
        if isinstance(node, ast.CoalesceExpr):
            return self.coalesce(node)
        if isinstance(node, ast.CaseExpr):
            return self.case(node)
        if isinstance(node, ast.CollateClause):
            return self.collate(node)
        if isinstance(node, ast.SQLValueFunction):
            return self.sql_value_function(node)
        if isinstance(node, ast.SubLink):
            raise self.refuse(
                "a subquery", node, "a predicate sees only the changed row; compare its columns"
            )
        if isinstance(node, ast.ParamRef):
            raise self.refuse("a parameter", node, "write the value as a literal")
        if isinstance(node, (ast.A_ArrayExpr, ast.A_Indirection)):
            raise self.refuse(
                "an array or subscript", node, "use IN (...) for lists and -> / ->> for jsonb fields"
            )
        if isinstance(node, ast.MinMaxExpr):
            raise self.refuse("GREATEST/LEAST", node, "write a CASE expression or compare both values")
        if isinstance(node, ast.RowExpr):
            raise self.refuse("a row constructor", node, "compare the columns one by one")
        raise self.refuse(type(node).__name__, node, "use comparisons, AND/OR/NOT, IN, LIKE, CASE, casts")

    def a_const(self, node: Any) -> _E:
        if node.isnull:
            return _E(UNKNOWN, _const_fn(None), node, const=True)
        v = node.val
        if isinstance(v, ast.Integer):
            return _E(INT4, _const_fn(v.ival), node, const=True, value=v.ival)
        if isinstance(v, ast.Float):
            text = str(v.fval)
            as_int = _parse_int(text)
            if as_int is not None and -(2**63) <= as_int < 2**63:
                t = INT4 if -(2**31) <= as_int < 2**31 else INT8
                return _E(t, _const_fn(as_int), node, const=True, value=as_int)
            d = _num_in(text)
            return _E(NUMERIC, _const_fn(d), node, const=True, value=d)
        if isinstance(v, ast.Boolean):
            b = bool(v.boolval)
            return _E(BOOL, _const_fn(b), node, const=True, value=b)
        if isinstance(v, ast.String):
            s = str(v.sval)
            return _E(UNKNOWN, _const_fn(s), node, const=True, value=s, literal=s)
        raise self.refuse("a bit string", node, "compare integers or text instead")

    def column(self, node: Any) -> _E:
        names: list[str] = []
        for f in node.fields:
            if isinstance(f, ast.A_Star):
                raise self.refuse("a whole-row reference", node, "name the columns: new.status, old.status")
            names.append(str(f.sval))
        if len(names) == 1:
            side, name = "new", names[0]
        elif len(names) == 2 and names[0] in ("new", "old"):
            side, name = names
        else:
            raise self.error(
                f"cannot resolve {self.fragment(node)}: columns are new.<column>, old.<column> or a bare "
                "<column> (meaning new.<column>)",
                node,
                f"write new.{names[-1]} or old.{names[-1]}",
                sqlstate="42P01",
            )
        t = self.column_types.get(name)
        if t is None:
            close = difflib.get_close_matches(name, list(self.column_types), n=1, cutoff=0.6)
            hint = (
                f"did you mean {side}.{close[0]}?"
                if close
                else "the table's columns are: " + ", ".join(sorted(self.column_types))
            )
            raise self.error(f'unknown column "{name}" in {self.fragment(node)}', node, hint)
        if t.category == "C":
            raise self.refuse(
                f"the composite column {side}.{name} ({t.label})",
                node,
                "test the table's other columns, or the composite's fields in the workflow",
            )
        key = (side, name)
        self.references.add(key)
        cached = self._columns.get(key)
        if cached is None:
            no_filter = None
            if side == "old":
                no_filter = f"it reads old.{name}: a publication row filter sees one row version"
            elif t.oid >= 16384:
                no_filter = f"{side}.{name} has the user-defined type {t.label}, refused in a row filter"
            load = value_loader(t, f"{side}.{name}")
            fn = _column_fn(side, name, load, memo=t.name not in _CHEAP_LOADS)
            cached = _E(t, fn, node, has_var=True, no_filter=no_filter)
            self._columns[key] = cached
        return _E(cached.type, cached.fn, node, has_var=True, no_filter=cached.no_filter)

    # -- operators

    def a_expr(self, node: Any) -> _E:
        kind = node.kind
        if kind == A_Expr_Kind.AEXPR_OP:
            op = self.op_name(node)
            if node.lexpr is None:
                return self.unary(op, self.expr(node.rexpr), node)
            if op not in _COMPARISONS | _ARITHMETIC | _JSON_OPS | {"||"}:
                raise self.refuse(
                    f"the operator {op}", node, _OP_HINTS.get(op, "see the supported operators")
                )
            left, right = self.expr(node.lexpr), self.expr(node.rexpr)
            if op in _COMPARISONS:
                return self.comparison(op, left, right, node)
            if op in _ARITHMETIC:
                return self.arithmetic(op, left, right, node)
            if op == "||":
                return self.concat(left, right, node)
            if op in _JSON_OPS:
                return self.json_op(op, left, right, node)
            raise self.refuse(f"the operator {op}", node, _OP_HINTS.get(op, "see the supported operators"))
        if kind in (A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT):
            return self.distinct(node, kind == A_Expr_Kind.AEXPR_DISTINCT)
        if kind == A_Expr_Kind.AEXPR_NULLIF:
            return self.nullif(node)
        if kind == A_Expr_Kind.AEXPR_IN:
            return self.in_list(node, self.op_name(node) == "<>")
        if kind in (A_Expr_Kind.AEXPR_LIKE, A_Expr_Kind.AEXPR_ILIKE):
            op = self.op_name(node)
            return self.like(node, kind == A_Expr_Kind.AEXPR_ILIKE, op.startswith("!"))
        if kind in _BETWEEN:
            return self.between(node, kind)
        if kind in (A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL):
            raise self.refuse("ANY/ALL over an array", node, "write x IN (a, b, c)")
        if kind == A_Expr_Kind.AEXPR_SIMILAR:
            raise self.refuse("SIMILAR TO", node, "use LIKE")
        raise self.refuse(str(kind), node, "use comparisons, IN, LIKE or BETWEEN")

    def op_name(self, node: Any) -> str:
        names = [str(n.sval) for n in node.name]
        if len(names) == 2 and names[0] == "pg_catalog":
            return names[1]
        if len(names) != 1:
            raise self.refuse("a schema-qualified operator", node, "use the built-in operator unqualified")
        return names[0]

    def comparison(self, op: str, left: _E, right: _E, node: Any) -> _E:
        for side in (left, right):
            if side.is_null and side.type.name == "unknown":
                raise self.error(
                    f"{self.fragment(node)} compares with NULL, which is never true (the result is NULL)",
                    node,
                    "test for NULL with IS NULL / IS NOT NULL, or use IS [NOT] DISTINCT FROM",
                    limitation=True,
                )
        left, right, cmp = self.resolve_comparison(op, left, right, node)
        return self.strict(cmp, [left, right], BOOL, node)

    def resolve_comparison(
        self, op: str, left: _E, right: _E, node: Any
    ) -> tuple[_E, _E, Callable[[Any, Any], bool]]:
        """Operator resolution for = <> < <= > >=: both sides converted to one type, and its comparator."""
        self.evaluable(left, right)
        lt, rt = left.type.name, right.type.name
        if lt == "unknown" and rt == "unknown":
            left, right = self.literal_as(left, TEXT), self.literal_as(right, TEXT)
        elif lt == "unknown":
            left = self.literal_as(left, _plain(right.type))
        elif rt == "unknown":
            right = self.literal_as(right, _plain(left.type))
        lt, rt = left.type.name, right.type.name
        ordering = op not in ("=", "<>")
        if lt in _NUM_RANK and rt in _NUM_RANK:
            if "float4" in (lt, rt) or "float8" in (lt, rt):
                if lt != rt:
                    left, right = self.coerce(left, FLOAT8), self.coerce(right, FLOAT8)
                return left, right, _NAN_CMP[op]
            if "numeric" in (lt, rt):
                return self.coerce(left, NUMERIC), self.coerce(right, NUMERIC), _NAN_CMP[op]
            return left, right, _PLAIN_CMP[op]
        if lt in TEXTLIKE and rt in TEXTLIKE:
            if ordering:
                self.check_text_order(left, right, node)
            return left, right, _PLAIN_CMP[op]
        if lt in _DT_RANK and rt in _DT_RANK:
            if lt != rt:
                target = left.type if _DT_RANK[lt] > _DT_RANK[rt] else right.type
                stable = (
                    f"{self.fragment(node)} compares {left.type.label} with {right.type.label}, which "
                    "depends on the session time zone"
                    if target.name == "timestamptz"
                    else None
                )
                left, right = self.compared_as(left, target, node), self.compared_as(right, target, node)
                if stable:
                    left = _flag(left, stable)
            return left, right, _PLAIN_CMP[op]
        if lt == rt and lt in ("bool", "uuid"):
            return left, right, _PLAIN_CMP[op]
        if lt == rt == "interval":
            return left, right, _keyed(_PLAIN_CMP[op], interval_key)
        if lt == rt == "jsonb":
            if ordering:
                raise self.refuse(
                    "ordering jsonb values",
                    node,
                    "compare extracted values, e.g. (new.data ->> 'n')::numeric > 5",
                )
            return left, right, jsonb_eq if op == "=" else _jsonb_ne
        if lt == rt == "enum" and left.type.oid == right.type.oid:
            if ordering:
                raise self.refuse(
                    f"ordering the enum {left.type.label}",
                    node,
                    "compare with = or IN (listener does not know the enum's declared order)",
                )
            return left, right, _PLAIN_CMP[op]
        if "json" in (lt, rt):
            raise self.error(
                f"could not identify an equality operator for type json: {self.fragment(node)}",
                node,
                "cast to jsonb, e.g. new.payload::jsonb = '{\"a\": 1}'",
                sqlstate="42883",
            )
        raise self.mismatch(op, left, right, node)

    def mismatch(self, op: str, left: _E, right: _E, node: Any) -> PredicateError:
        lf, rf = self.fragment(left.node), self.fragment(right.node)
        if left.type.category == "S" and right.type.name != "unknown":
            hint = f"cast one side, e.g. {lf}::{right.type.label} {op} {rf}, or {lf} {op} {rf}::text"
        elif right.type.category == "S":
            hint = f"cast one side, e.g. {lf} {op} {rf}::{left.type.label}, or {lf}::text {op} {rf}"
        else:
            hint = f"cast one side to the other's type, e.g. {lf} {op} ({rf})::{left.type.label}"
        return self.error(
            f"operator does not exist: {left.type.label} {op} {right.type.label}, in {self.fragment(node)}",
            node,
            hint,
            sqlstate="42883",
        )

    def check_text_order(self, left: _E, right: _E, node: Any) -> None:
        explicit = {c for c in (left.collation, right.collation) if c is not None}
        if explicit or self.code_point_order:
            return
        raise self.error(
            f"{self.fragment(node)} orders text under the database collation {self.collation!r}, which "
            'listener cannot reproduce (it compares code points, PostgreSQL\'s order only under "C")',
            node,
            f'add COLLATE "C" to one side, e.g. {self.fragment(left.node)} COLLATE "C" ... — that is then '
            "the order in both PostgreSQL and listener",
            limitation=True,
        )

    def check_ctype(self, args: Sequence[_E], node: Any, what: str) -> None:
        if self.c_ctype or any(a.collation == "C" for a in args):
            return
        raise self.error(
            f"{what} in {self.fragment(node)} follows the database collation {self.collation!r}, whose case "
            "rules listener cannot reproduce",
            node,
            'add COLLATE "C" to the text (ASCII letters only are folded then, in PostgreSQL and listener), '
            f'e.g. lower({self.fragment(args[0].node)} COLLATE "C")',
            limitation=True,
        )

    def arithmetic(self, op: str, left: _E, right: _E, node: Any) -> _E:
        self.evaluable(left, right)
        lt, rt = left.type.name, right.type.name
        if lt == "unknown" and rt == "unknown":
            raise self.error(
                f"operator is not unique: unknown {op} unknown, in {self.fragment(node)}",
                node,
                f"cast a literal, e.g. {self.fragment(left.node)}::numeric",
                sqlstate="42725",
            )
        if lt == "unknown" or rt == "unknown":
            known = right.type if lt == "unknown" else left.type
            partner = self.unknown_partner(op, known, literal_left=lt == "unknown", node=node)
            if lt == "unknown":
                left = self.literal_as(left, partner)
            else:
                right = self.literal_as(right, partner)
            lt, rt = left.type.name, right.type.name
        if lt in _NUM_RANK and rt in _NUM_RANK:
            if "float4" in (lt, rt) or "float8" in (lt, rt):
                if op == "%":
                    raise self.mismatch(op, left, right, node)
                target = FLOAT4 if lt == rt == "float4" else FLOAT8
                ops = float_ops(target.name == "float4")
            elif "numeric" in (lt, rt):
                target, ops = NUMERIC, _NUM_OPS  # type: ignore[assignment]
            else:
                target = left.type if _INT_RANK[lt] >= _INT_RANK[rt] else right.type
                return self.strict(int_ops(target.name)[op], [left, right], target, node)
            return self.strict(ops[op], [self.coerce(left, target), self.coerce(right, target)], target, node)
        impl, result, stable = self.datetime_operator(op, left, right, node)
        if "interval" in (lt, rt) and op in "*/":  # the factor is float8 (interval_mul, interval_div)
            left, right = (
                (left, self.coerce(right, FLOAT8)) if lt == "interval" else (self.coerce(left, FLOAT8), right)
            )
        if (lt == "timestamp" and rt == "timestamptz") or (lt == "timestamptz" and rt == "timestamp"):
            left, right = self.coerce(left, TIMESTAMPTZ), self.coerce(right, TIMESTAMPTZ)
        reason = f"{self.fragment(node)} depends on the session time zone" if stable else None
        return self.strict(impl, [left, right], result, node, stable=reason)

    def unknown_partner(self, op: str, known: PgType, *, literal_left: bool, node: Any) -> PgType:
        """The type an unknown literal takes opposite ``known`` in arithmetic (PostgreSQL's resolution)."""
        k = known.name
        if k == "interval" and op in "*/":
            return FLOAT8  # interval * float8, float8 * interval, interval / float8
        if k in _NUM_RANK or k == "interval":
            return _plain(known)
        if k in ("timestamp", "timestamptz"):
            if op == "+":
                return INTERVAL
            if op == "-":
                return known
        if k == "date" and op == "-":
            return DATE
        spelled = f"unknown {op} {known.label}" if literal_left else f"{known.label} {op} unknown"
        raise self.error(
            f"operator is not unique: {spelled}, in {self.fragment(node)}",
            node,
            "cast the literal, e.g. interval '1 day' or 7::integer",
            sqlstate="42725",
        )

    def datetime_operator(
        self, op: str, left: _E, right: _E, node: Any
    ) -> tuple[Callable[[Any, Any], Any], PgType, bool]:
        lt, rt = left.type.name, right.type.name
        small_int = ("int2", "int4")
        if lt == "date" and rt in small_int and op in "+-":
            return (date_pli if op == "+" else date_mii), DATE, False
        if lt in small_int and rt == "date" and op == "+":
            return (lambda n, d: date_pli(d, n)), DATE, False
        if lt == rt == "date" and op == "-":
            return date_mi, INT4, False
        if lt == "date" and rt == "interval" and op in "+-":
            fn = add_interval if op == "+" else sub_interval
            return (lambda d, iv: fn(_date_ts(d), iv)), TIMESTAMP, False
        if lt == "interval" and rt == "date" and op == "+":
            return (lambda iv, d: add_interval(_date_ts(d), iv)), TIMESTAMP, False
        if lt in ("timestamp", "timestamptz") and rt == "interval" and op in "+-":
            return (add_interval if op == "+" else sub_interval), left.type, lt == "timestamptz"
        if lt == "interval" and rt in ("timestamp", "timestamptz") and op == "+":
            return (lambda iv, ts: add_interval(ts, iv)), right.type, rt == "timestamptz"
        if lt in ("timestamp", "timestamptz") and rt in ("timestamp", "timestamptz") and op == "-":
            return ts_diff, INTERVAL, lt != rt
        if lt == rt == "interval" and op in "+-":
            return (interval_add if op == "+" else interval_sub), INTERVAL, False
        if lt == "interval" and rt in _NUM_RANK and op in "*/":
            return (interval_mul if op == "*" else interval_div), INTERVAL, False
        if lt in _NUM_RANK and rt == "interval" and op == "*":
            return (lambda factor, iv: interval_mul(iv, factor)), INTERVAL, False
        raise self.mismatch(op, left, right, node)

    def unary(self, op: str, arg: _E, node: Any) -> _E:
        t = arg.type.name
        if op == "-":
            if t in INT_TYPES:
                return self.strict(int_ops(t)["neg"], [arg], arg.type, node)
            if t == "numeric":
                return self.strict(num_neg, [arg], NUMERIC, node)
            if t in ("float4", "float8"):
                return self.strict(operator.neg, [arg], arg.type, node)
            if t == "interval":
                return self.strict(interval_neg, [arg], INTERVAL, node)
        elif op == "+" and t in _NUM_RANK:
            return arg
        if t == "unknown":
            raise self.error(
                f"operator is not unique: {op} unknown, in {self.fragment(node)}",
                node,
                f"cast the literal, e.g. {op}{self.fragment(arg.node)}::numeric",
                sqlstate="42725",
            )
        if op in ("-", "+"):
            raise self.error(
                f"operator does not exist: {op} {arg.type.label}, in {self.fragment(node)}",
                node,
                "apply it to a number or an interval",
                sqlstate="42883",
            )
        raise self.refuse(f"the prefix operator {op}", node, _OP_HINTS.get(op, "see the supported operators"))

    def concat(self, left: _E, right: _E, node: Any) -> _E:
        lt, rt = left.type.name, right.type.name
        if "jsonb" in (lt, rt) and (lt == rt or "unknown" in (lt, rt)):
            # jsonb || jsonb (an unknown literal is read as jsonb); jsonb || text is text concatenation
            left, right = self.coerce(left, JSONB), self.coerce(right, JSONB)
            return self.strict(jsonb_concat, [left, right], JSONB, node)
        if lt == "unknown":
            left = self.literal_as(left, TEXT)
        if rt == "unknown":
            right = self.literal_as(right, TEXT)
        lt, rt = left.type.name, right.type.name
        if lt not in TEXTLIKE and rt not in TEXTLIKE:
            raise self.mismatch("||", left, right, node)
        no_filter = None
        args = []
        for side in (left, right):
            if side.type.name in TEXTLIKE:
                args.append(side)
                continue
            if side.type.category == "A" or side.type.name == "other":
                raise self.refuse(f"concatenating {side.type.label}", node, "cast it to text first")
            # textanycat/anytextcat are `$1 || $2::text`: the cast to text (bool gives 'true', not 't').
            # The planner inlines them, so only the cast's own volatility decides what it folds; the
            # functions themselves are stable, which a publication row filter refuses.
            info = cast_info(side.type, TEXT)
            assert info is not None
            no_filter = f"{self.fragment(node)} converts {side.type.label} to text (stable in PostgreSQL)"
            args.append(self.apply_cast(side, TEXT, info, side.node))
        collation = left.collation or right.collation
        return self.strict(operator.add, args, TEXT, node, no_filter=no_filter, collation=collation)

    def json_op(self, op: str, left: _E, right: _E, node: Any) -> _E:
        if op == "<@":
            left, right, op = right, left, "@>"
        lt, rt = left.type.name, right.type.name
        if op == "@>" and lt == "unknown" and rt == "jsonb":
            left, lt = self.literal_as(left, JSONB), "jsonb"
        if lt == "json":
            cast = f"({self.fragment(left.node)})::jsonb {op} {self.fragment(right.node)}"
            raise self.refuse(f"the json operator {op}", node, f"cast to jsonb: {cast}")
        if lt == "unknown":
            raise self.error(
                f"operator is not unique: unknown {op} ..., in {self.fragment(node)}",
                node,
                f"cast the literal: {self.fragment(left.node)}::jsonb",
                sqlstate="42725",
            )
        if lt != "jsonb":
            raise self.mismatch(op, left, right, node)
        if op in ("->", "->>"):
            if rt == "unknown":
                right = self.literal_as(right, TEXT)
                rt = "text"
            if rt in TEXTLIKE:
                get: Callable[[Any, Any], Any] = jsonb_field
            elif rt in ("int2", "int4"):
                get = jsonb_element
            else:
                raise self.mismatch(op, left, right, node)
            if op == "->":
                return self.strict(get, [left, right], JSONB, node)
            return self.strict(lambda j, k: jsonb_as_text(get(j, k)), [left, right], TEXT, node)
        if op == "@>":
            if rt == "unknown":
                right = self.literal_as(right, JSONB)
            elif rt != "jsonb":
                raise self.mismatch(op, left, right, node)
            return self.strict(jsonb_contains, [left, right], BOOL, node)
        if rt == "unknown":
            right = self.literal_as(right, TEXT)
        elif rt not in TEXTLIKE:
            raise self.mismatch(op, left, right, node)
        return self.strict(jsonb_exists, [left, right], BOOL, node)

    def distinct(self, node: Any, distinct: bool) -> _E:
        left, right, cmp = self.resolve_comparison("=", self.expr(node.lexpr), self.expr(node.rexpr), node)
        fa, fb = left.fn, right.fn

        def is_distinct(n: Any, o: Any, t: Any) -> bool:
            a = fa(n, o, t)
            b = fb(n, o, t)
            if a is None:
                return b is not None
            if b is None:
                return True
            return not cmp(a, b)

        if right.is_null:
            fn: Fn = (
                (lambda n, o, t: fa(n, o, t) is not None)
                if distinct
                else (lambda n, o, t: fa(n, o, t) is None)
            )
        elif right.const and cmp is operator.eq:
            c = right.value
            if distinct:
                fn = lambda n, o, t: (a := fa(n, o, t)) is None or a != c  # noqa: E731
            else:
                fn = lambda n, o, t: (a := fa(n, o, t)) is not None and a == c  # noqa: E731
        elif distinct:
            fn = is_distinct
        else:
            fn = lambda n, o, t: not is_distinct(n, o, t)  # noqa: E731
        return self.derive(BOOL, fn, node, [left, right])

    def nullif(self, node: Any) -> _E:
        left, right, cmp = self.resolve_comparison("=", self.expr(node.lexpr), self.expr(node.rexpr), node)
        fa, fb = left.fn, right.fn

        def nullif(n: Any, o: Any, t: Any) -> Any:
            a = fa(n, o, t)
            b = fb(n, o, t)
            if a is not None and b is not None and cmp(a, b):
                return None
            return a

        return self.derive(left.type, nullif, node, [left, right], collation=left.collation)

    def in_list(self, node: Any, negated: bool) -> _E:
        """IN: constant items become one ``= ANY(array)`` over their common type (evaluated eagerly);
        items that read columns become a lazy OR chain after it (transformAExprIn)."""
        lhs = self.expr(node.lexpr)
        items = [self.expr(x) for x in node.rexpr]
        op = "<>" if negated else "="
        parts: list[_E] = []
        rest = items
        nonvars = [i for i in items if not i.has_var]
        if len(nonvars) > 1:
            common = self.common_type([lhs, *nonvars], "IN", node, required=False)
            if common is not None:
                l2 = self.coerce(lhs, common)
                arr = [self.coerce(i, common) for i in nonvars]
                _, _, cmp = self.resolve_comparison(op, l2, arr[0], node)
                array_op = self.scalar_array(l2, arr, cmp, not negated, node)
                first = next((e.type for e in (lhs, *nonvars) if e.type.name != "unknown"), TEXT)
                if first.name == "varchar" and array_op.no_filter is None:
                    # PostgreSQL's common type is then varchar, and comparing a varchar[] with text's =
                    # takes an ArrayCoerceExpr, which a publication row filter refuses
                    array_op.no_filter = (
                        f"{self.fragment(node)} compares character varying values as a text array, which "
                        f"PostgreSQL refuses in a row filter; write {self.fragment(lhs.node)}::text IN (...)"
                    )
                parts.append(array_op)
                rest = [i for i in items if i.has_var]
        for item in rest:
            if item.is_null and item.type.name == "unknown":
                item = self.literal_as(item, _plain(lhs.type) if lhs.type.name != "unknown" else TEXT)
            left, right, cmp = self.resolve_comparison(op, lhs, item, node)
            parts.append(self.strict(cmp, [left, right], BOOL, node))
        return self.combine(negated, parts, node)  # IN is OR, NOT IN is AND

    def scalar_array(
        self, lhs: _E, items: list[_E], cmp: Callable[[Any, Any], bool], use_or: bool, node: Any
    ) -> _E:
        fl = lhs.fn
        if all(i.const and i.error is None for i in items) and cmp in (operator.eq, operator.ne):
            values = [i.value for i in items]
            has_null = any(v is None for v in values)
            members = frozenset(v for v in values if v is not None)
            if use_or:

                def any_in(n: Any, o: Any, t: Any) -> Any:
                    a = fl(n, o, t)
                    if a is None:
                        return None
                    if a in members:
                        return True
                    return None if has_null else False

                fn: Fn = any_in
            else:

                def all_not_in(n: Any, o: Any, t: Any) -> Any:
                    a = fl(n, o, t)
                    if a is None:
                        return None
                    if a in members:
                        return False
                    return None if has_null else True

                fn = all_not_in
        else:
            fns = [i.fn for i in items]

            def scalar_array_op(n: Any, o: Any, t: Any) -> Any:
                a = fl(n, o, t)
                values = [f(n, o, t) for f in fns]
                if a is None:
                    return None
                null = False
                for v in values:
                    if v is None:
                        null = True
                    elif cmp(a, v) is use_or:
                        return use_or
                return None if null else not use_or

            fn = scalar_array_op
        return self.derive(BOOL, fn, node, [lhs, *items])

    def like(self, node: Any, ilike: bool, negated: bool) -> _E:
        left = self.expr(node.lexpr)
        pattern_node: Any = node.rexpr
        escape_call = isinstance(pattern_node, ast.FuncCall) and [
            str(n.sval) for n in pattern_node.funcname or ()
        ] == ["pg_catalog", "like_escape"]
        if escape_call:
            pattern = self.text_arg(self.expr(pattern_node.args[0]), "LIKE", node)
            escape = self.text_arg(self.expr(pattern_node.args[1]), "ESCAPE", node)
            pattern = self.strict(like_escape, [pattern, escape], TEXT, pattern_node)
        else:
            pattern = self.expr(pattern_node)
        for side in (left, pattern):
            if side.is_null and side.type.name == "unknown":
                raise self.error(
                    f"{self.fragment(node)} compares with NULL, which is never true",
                    node,
                    "test for NULL with IS NULL / IS NOT NULL",
                    limitation=True,
                )
        if left.type.name == "bpchar":
            raise self.refuse(
                "LIKE on character(n)", node, f"cast it: {self.fragment(left.node)}::text LIKE ..."
            )
        left = self.text_arg(left, "LIKE", node)
        pattern = self.text_arg(pattern, "LIKE", node)
        if ilike:
            self.check_ctype([left, pattern], node, "ILIKE")
        fold = ascii_lower if ilike else None

        def matches(s: str, p: str) -> bool:
            if fold is not None:
                s, p = fold(s), fold(p)
            return like_matcher(p)(s) is not negated

        if pattern.const and pattern.error is None and pattern.value is not None and not left.const:
            m = like_matcher(fold(pattern.value) if fold is not None else pattern.value)
            if fold is not None:
                impl: Callable[..., Any] = lambda s: m(fold(s)) is not negated  # noqa: E731
            elif negated:
                impl = lambda s: not m(s)  # noqa: E731
            else:
                impl = m
            return self.strict(impl, [left], BOOL, node, no_filter=pattern.no_filter)
        return self.strict(matches, [left, pattern], BOOL, node)

    def text_arg(self, e: _E, context: str, node: Any) -> _E:
        if e.type.name == "unknown":
            return self.literal_as(e, TEXT)
        if e.type.name in TEXTLIKE:
            return e
        raise self.error(
            f"{context} needs text, not {e.type.label}: {self.fragment(e.node)}",
            node,
            f"cast it: {self.fragment(e.node)}::text",
            sqlstate="42883",
        )

    def between(self, node: Any, kind: Any) -> _E:
        """transformAExprBetween: ``a >= x AND a <= y``; NOT: ``a < x OR a > y``; SYMMETRIC: either order.
        Each comparison is resolved before the next bound is looked at, as PostgreSQL does."""
        negated = kind in (A_Expr_Kind.AEXPR_NOT_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM)
        symmetric = kind in (A_Expr_Kind.AEXPR_BETWEEN_SYM, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM)
        low_op, high_op = ("<", ">") if negated else (">=", "<=")
        value = self.expr(node.lexpr)
        low = self.expr(node.rexpr[0])
        above_low = self.comparison(low_op, value, low, node)
        high = self.expr(node.rexpr[1])
        below_high = self.comparison(high_op, value, high, node)
        test = self.combine(not negated, [above_low, below_high], node)
        if not symmetric:
            return test
        swapped = [self.comparison(low_op, value, high, node), self.comparison(high_op, value, low, node)]
        return self.combine(negated, [test, self.combine(not negated, swapped, node)], node)

    # -- boolean structure

    def bool_expr(self, node: Any) -> _E:
        if node.boolop == BoolExprType.NOT_EXPR:
            arg = self.boolean(self.expr(node.args[0]), "NOT", node)
            return self.strict(operator.not_, [arg], BOOL, node)
        is_and = node.boolop == BoolExprType.AND_EXPR
        name = "AND" if is_and else "OR"
        args = [self.boolean(self.expr(a), name, a) for a in node.args]
        return self.combine(is_and, args, node)

    def combine(self, is_and: bool, args: Sequence[_E], node: Any) -> _E:
        """AND/OR with the planner's simplification: left to right, a decisive constant ends it."""
        kept: list[_E] = []
        have_null = False
        for a in args:
            if a.error is not None:
                return self.derive(BOOL, a.fn, node, [a])
            if a.const:
                if a.value is None:
                    have_null = True
                    continue
                if a.value is not is_and:  # FALSE in AND, TRUE in OR
                    return self.constant(BOOL, a.value, node, args)
                continue
            kept.append(a)
        if not kept:
            return self.constant(BOOL, None if have_null else is_and, node, args)
        if have_null:
            kept.append(_E(BOOL, _const_fn(None), node, const=True))
        if len(kept) == 1:
            return self.derive(BOOL, kept[0].fn, node, args, fold=False, lazy=True)
        fns = [a.fn for a in kept]
        return self.derive(BOOL, _and_fn(fns) if is_and else _or_fn(fns), node, args, fold=False, lazy=True)

    def null_test(self, node: Any) -> _E:
        arg = self.expr(node.arg)
        if arg.type.name == "unknown" and not arg.is_null:
            arg = self.literal_as(arg, TEXT)
        fa = arg.fn
        if node.nulltesttype == NullTestType.IS_NULL:
            fn: Fn = lambda n, o, t: fa(n, o, t) is None  # noqa: E731
        else:
            fn = lambda n, o, t: fa(n, o, t) is not None  # noqa: E731
        return self.derive(BOOL, fn, node, [arg])

    def boolean_test(self, node: Any) -> _E:
        kind = node.booltesttype
        label = {
            BoolTestType.IS_TRUE: "IS TRUE", BoolTestType.IS_NOT_TRUE: "IS NOT TRUE",
            BoolTestType.IS_FALSE: "IS FALSE", BoolTestType.IS_NOT_FALSE: "IS NOT FALSE",
            BoolTestType.IS_UNKNOWN: "IS UNKNOWN", BoolTestType.IS_NOT_UNKNOWN: "IS NOT UNKNOWN",
        }[kind]  # fmt: skip
        arg = self.boolean(self.expr(node.arg), label, node)
        fa = arg.fn
        tests: dict[Any, Fn] = {
            BoolTestType.IS_TRUE: lambda n, o, t: fa(n, o, t) is True,
            BoolTestType.IS_NOT_TRUE: lambda n, o, t: fa(n, o, t) is not True,
            BoolTestType.IS_FALSE: lambda n, o, t: fa(n, o, t) is False,
            BoolTestType.IS_NOT_FALSE: lambda n, o, t: fa(n, o, t) is not False,
            BoolTestType.IS_UNKNOWN: lambda n, o, t: fa(n, o, t) is None,
            BoolTestType.IS_NOT_UNKNOWN: lambda n, o, t: fa(n, o, t) is not None,
        }
        return self.derive(BOOL, tests[kind], node, [arg])

    def coalesce(self, node: Any) -> _E:
        args = [self.expr(a) for a in node.args]
        t = self.common_type(args, "COALESCE", node)
        assert t is not None
        args = [self.coerce(a, t) for a in args]
        kept: list[_E] = []
        for a in args:  # simplification: NULL constants drop out, a non-NULL constant ends the list
            if a.error is not None:
                return self.derive(t, a.fn, node, [a])
            if a.const:
                if a.value is None:
                    continue
                kept.append(a)
                break
            kept.append(a)
        collation = next((a.collation for a in args if a.collation), None)
        if not kept:
            return self.null(t, node, args)
        if len(kept) == 1:
            if kept[0].const:
                return self.constant(t, kept[0].value, node, args)
            return self.derive(t, kept[0].fn, node, args, collation=collation, fold=False, lazy=True)
        fns = [a.fn for a in kept]

        def coalesce(n: Any, o: Any, t: Any) -> Any:
            for f in fns:
                v = f(n, o, t)
                if v is not None:
                    return v
            return None

        return self.derive(t, coalesce, node, args, collation=collation, fold=False, lazy=True)

    def case(self, node: Any) -> _E:
        arg = self.expr(node.arg) if node.arg is not None else None
        arms: list[tuple[_E, _E]] = []
        for when in node.args:
            if arg is not None:
                cond = self.comparison("=", arg, self.expr(when.expr), when)
            else:
                cond = self.boolean(self.expr(when.expr), "CASE/WHEN", when.expr)
            arms.append((cond, self.expr(when.result)))
        default = (
            self.expr(node.defresult)
            if node.defresult is not None
            else _E(UNKNOWN, _const_fn(None), node, const=True)
        )
        t = self.common_type([r for _, r in arms] + [default], "CASE", node)
        assert t is not None
        arms = [(c, self.coerce(r, t)) for c, r in arms]
        default = self.coerce(default, t)
        everything = [x for arm in arms for x in arm] + [default]
        kept: list[tuple[_E, _E]] = []
        for cond, result in arms:  # simplification, as eval_const_expressions does it
            if cond.error is not None:
                return self.derive(t, cond.fn, node, [cond])
            if cond.const:
                if cond.value is True:
                    default = result
                    break
                continue  # a constant false/NULL arm is dropped without looking at its result
            if result.error is not None:
                return self.derive(t, result.fn, node, [result])
            kept.append((cond, result))
        if default.error is not None:
            return self.derive(t, default.fn, node, [default])
        if not kept:
            if default.const:
                return self.constant(t, default.value, node, everything)
            return self.derive(t, default.fn, node, everything, fold=False, lazy=True)
        conds = [(c.fn, r.fn) for c, r in kept]
        fd = default.fn

        def case(n: Any, o: Any, t: Any) -> Any:
            for c, r in conds:
                if c(n, o, t) is True:
                    return r(n, o, t)
            return fd(n, o, t)

        return self.derive(t, case, node, everything, fold=False, lazy=True)

    def collate(self, node: Any) -> _E:
        e = self.expr(node.arg)
        names = [str(n.sval) for n in node.collname]
        name = names[-1]
        if e.type.name == "unknown":
            e = self.literal_as(e, TEXT)
        if e.type.name not in TEXTLIKE:
            raise self.error(
                f"collations are not supported by type {e.type.label}: {self.fragment(node)}",
                node,
                "apply COLLATE to text",
                sqlstate="42804",
            )
        if (
            len(names) > 2
            or (len(names) == 2 and names[0] != "pg_catalog")
            or name not in (*_EXPLICIT_C, "default")
        ):
            raise self.error(
                f'COLLATE "{name}" is not supported: listener compares text by code point, which is '
                'PostgreSQL\'s order only under "C"',
                node,
                'use COLLATE "C"',
                limitation=True,
            )
        return replace(e, collation="C" if name != "default" else None)

    def type_cast(self, node: Any) -> _E:
        target = self.type_name(node.typeName)
        arg = node.arg
        if isinstance(arg, ast.A_Const) and (arg.isnull or isinstance(arg.val, ast.String)):
            return self.literal_as(self.a_const(arg), target, node)  # a typed literal: read now
        e = self.expr(arg)
        if e.type.name == "unknown":
            return self.literal_as(e, target, node)
        info = cast_info(e.type, target)
        if info is None:
            hint = "cast through text only if you mean its text form: (...)::text"
            if e.type.name == "other":
                hint = f"listener does not evaluate {e.type.label}; compare {self.fragment(e.node)}::text"
            raise self.error(
                f"cannot cast type {e.type.label} to {target.label}: {self.fragment(node)}",
                node,
                hint,
                sqlstate="42846",
            )
        return self.apply_cast(e, target, info, node)

    def type_name(self, tn: Any) -> PgType:
        names = [str(n.sval) for n in tn.names]
        if tn.arrayBounds:
            raise self.refuse("an array type", tn, "compare scalar values")
        if tn.setof or tn.pct_type or len(names) > 2 or (len(names) == 2 and names[0] != "pg_catalog"):
            raise self.refuse(
                f"the type {'.'.join(names)}",
                tn,
                "use a built-in type: " + ", ".join(sorted(set(_CAST_NAMES))),
            )
        base = names[-1]
        if base in ("bpchar", "char", "character"):
            raise self.refuse("a cast to character(n)", tn, "cast to text or varchar")
        t = _CAST_NAMES.get(base)
        if t is None:
            raise self.refuse(f"the type {base}", tn, "use one of: " + ", ".join(sorted(set(_CAST_NAMES))))
        mods: list[int] = []
        for m in tn.typmods or ():
            if not (isinstance(m, ast.A_Const) and isinstance(m.val, ast.Integer)):
                raise self.refuse("this type modifier", tn, f"write {base} or {base}(n)")
            mods.append(int(m.val.ival or 0))
        if not mods:
            return t
        if t.name == "numeric" and len(mods) <= 2 and 1 <= mods[0] <= 1000:
            label = f"numeric({','.join(map(str, mods))})"
            return PgType("numeric", label, "N", typmod=tuple(mods), oid=t.oid)
        if t.name == "varchar" and len(mods) == 1 and mods[0] >= 1:
            return PgType("varchar", f"character varying({mods[0]})", "S", typmod=(mods[0],), oid=t.oid)
        raise self.refuse(f"type modifiers on {t.label}", tn, f"write plain {base}")

    def func_call(self, node: Any) -> _E:
        names = [str(n.sval) for n in node.funcname]
        name = names[-1]
        if len(names) > 2 or (len(names) == 2 and names[0] != "pg_catalog"):
            raise self.refuse(
                f"the function {'.'.join(names)}", node, f"use a built-in function: {_SUPPORTED_FUNCTIONS}"
            )
        if node.over is not None:
            raise self.refuse("a window function", node, "a predicate sees one row")
        if name in _AGGREGATES or node.agg_star or node.agg_distinct or node.agg_order or node.agg_filter:
            raise self.error(
                f"aggregate functions are not allowed in a predicate: {self.fragment(node)}",
                node,
                "a predicate sees one changed row; compare its columns (aggregate in the workflow instead)",
                limitation=True,
            )
        if name in _VOLATILE:
            raise self.refuse(
                f"the volatile function {name}()",
                node,
                "a predicate must give the same answer when replayed; use now() for the commit time",
            )
        if node.func_variadic:
            raise self.refuse("VARIADIC", node, "pass the arguments one by one")
        args = [self.expr(a) for a in node.args or ()]
        if name in ("now", "transaction_timestamp") and not args:
            return self.now(node)
        if name in ("lower", "upper") and len(args) == 1:
            arg = self.text_arg(args[0], f"{name}()", node)
            self.check_ctype([arg], node, f"{name}()")
            return self.strict(
                ascii_lower if name == "lower" else ascii_upper, [arg], TEXT, node, collation=arg.collation
            )
        if name in ("length", "char_length", "character_length") and len(args) == 1:
            arg = args[0]
            if arg.type.name not in (*TEXTLIKE, "unknown"):
                raise self.error(
                    f"function {name}({arg.type.label}) does not exist: {self.fragment(node)}",
                    node,
                    f"cast it: {name}({self.fragment(arg.node)}::text)",
                    sqlstate="42883",
                )
            return self.strict(len, [self.text_arg(arg, name, node)], INT4, node)
        if name in ("btrim", "ltrim", "rtrim") and len(args) in (1, 2):
            texts = [self.text_arg(a, f"{name}()", node) for a in args]
            strip = {"btrim": str.strip, "ltrim": str.lstrip, "rtrim": str.rstrip}[name]
            if len(texts) == 1:
                return self.strict(lambda s: strip(s, " "), texts, TEXT, node, collation=texts[0].collation)
            return self.strict(strip, texts, TEXT, node, collation=texts[0].collation)
        if name == "like_escape" and len(args) == 2:
            texts = [self.text_arg(a, "like_escape()", node) for a in args]
            return self.strict(like_escape, texts, TEXT, node)
        known = name in ("now", "lower", "upper", "length", "char_length", "btrim", "ltrim", "rtrim")
        what = (
            f"{name}() with {len(args)} argument{'s' if len(args) != 1 else ''}"
            if known
            else f"the function {name}()"
        )
        raise self.refuse(what, node, f"supported functions: {_SUPPORTED_FUNCTIONS}")

    def now(self, node: Any) -> _E:
        self.uses_now = True
        return _E(
            TIMESTAMPTZ,
            _utc_now,
            node,
            stable="now() is the commit time, not immutable",
            no_filter="now() is not immutable; a publication row filter cannot use it",
        )

    def sql_value_function(self, node: Any) -> _E:
        Op = SVF
        if node.op == Op.SVFOP_CURRENT_TIMESTAMP:
            return self.now(node)
        if node.op == Op.SVFOP_CURRENT_DATE:
            now = self.now(node)
            return self.derive(DATE, lambda n, o, t: _ts_date(_utc_now(n, o, t)), node, [now])
        if node.op == Op.SVFOP_LOCALTIMESTAMP:
            now = self.now(node)
            return self.derive(TIMESTAMP, _utc_now, node, [now])
        if node.op in (Op.SVFOP_CURRENT_TIMESTAMP_N, Op.SVFOP_LOCALTIMESTAMP_N):
            raise self.refuse("a precision on current_timestamp", node, "write current_timestamp or now()")
        if node.op in (
            Op.SVFOP_CURRENT_TIME,
            Op.SVFOP_CURRENT_TIME_N,
            Op.SVFOP_LOCALTIME,
            Op.SVFOP_LOCALTIME_N,
        ):
            raise self.refuse("the time type", node, "compare timestamps: now(), current_date")
        raise self.refuse(
            self.fragment(node), node, "the replication session is not the session that wrote the row"
        )


def _retype(e: _E, t: PgType) -> _E:
    return replace(e, type=t)


def _flag(e: _E, stable: str) -> _E:
    return replace(e, stable=stable, no_filter=e.no_filter or stable)


def _compare_example(fragment: str, t: PgType) -> str:
    example = _EXAMPLES.get(t.name)
    if t.category == "S":
        return f"{fragment} = 'value'"
    if example:
        return f"{fragment} = {example}"
    return f"{fragment} IS NOT NULL"


# ---------------------------------------------------------------------------------------------- parsing


def _byte_to_char(text: str) -> Callable[[int], int]:
    data = text.encode()
    if len(data) == len(text):
        return lambda b: b
    return lambda b: len(data[:b].decode(errors="ignore"))


def _collect_locations(js: Any, node: Any, out: dict[int, int], to_char: Callable[[int], int]) -> None:
    """Locations of every node, from libpg_query's JSON (pglast's AST drops those of constants).

    The JSON and the pglast tree come from the same parse, so they are walked side by side by field."""
    if isinstance(js, list) and isinstance(node, (tuple, list)):
        for j, n in zip(js, node, strict=False):
            _collect_locations(j, n, out, to_char)
        return
    if not (isinstance(js, dict) and len(js) == 1):
        return
    ((kind, body),) = js.items()
    if kind == "List" and isinstance(body, dict) and isinstance(node, (tuple, list)):
        _collect_locations(body.get("items", []), node, out, to_char)
        return
    if not isinstance(body, dict) or not isinstance(node, ast.Node) or type(node).__name__ != kind:
        return
    for key, value in body.items():
        if key == "location":
            if isinstance(value, int) and value >= 0:
                out[id(node)] = to_char(value)
        elif isinstance(value, (dict, list)):
            child = getattr(node, key, None)
            if child is not None:
                _collect_locations(value, child, out, to_char)


def _parse(text: str) -> tuple[Any, dict[int, int]]:
    """The expression node of ``SELECT <text>``, and node locations (characters into that string)."""
    if not text.strip():
        raise PredicateError("the predicate is empty", hint="write a condition, e.g. new.status = 'paid'")
    full = SELECT_PREFIX + text
    try:
        statements = parse_sql(full)
    except ParseError as exc:
        message = str(exc.args[0]) if exc.args else str(exc)
        position = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        pos = None if position is None else max(0, min(len(text), position - len(SELECT_PREFIX)))
        raise PredicateError(
            f"cannot parse the predicate: {message}",
            text=text,
            fragment=text[pos : pos + 20] if pos is not None else None,
            position=pos,
            hint="write one SQL boolean expression, e.g. new.status = 'paid' AND old.status <> 'paid'",
            sqlstate="42601",
        ) from None
    single = (
        len(statements) == 1
        and isinstance(statements[0].stmt, ast.SelectStmt)
        and _is_bare_select(statements[0].stmt)
    )
    if not single:
        raise PredicateError(
            "a predicate is one expression, not a statement or a query",
            text=text,
            fragment=text,
            position=0,
            hint="remove semicolons, FROM/WHERE/UNION clauses; write only the condition",
        )
    stmt: Any = statements[0].stmt
    target = stmt.targetList[0]
    locations: dict[int, int] = {}
    tree = json.loads(parse_sql_json(full))
    js_target = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]
    _collect_locations(js_target, target, locations, _byte_to_char(full))
    return target.val, locations


def _is_bare_select(stmt: ast.SelectStmt) -> bool:
    clauses = (
        stmt.distinctClause,
        stmt.intoClause,
        stmt.fromClause,
        stmt.whereClause,
        stmt.groupClause,
        stmt.havingClause,
        stmt.windowClause,
        stmt.valuesLists,
        stmt.sortClause,
        stmt.limitOffset,
        stmt.limitCount,
        stmt.lockingClause,
        stmt.withClause,
    )
    if any(c for c in clauses) or stmt.op not in (SetOperation.SETOP_NONE, 0, None):
        return False
    targets = stmt.targetList or ()
    return len(targets) == 1 and not targets[0].name and targets[0].val is not None


# -------------------------------------------------------------------------------------------- predicate


class Predicate:
    """A compiled ``when:`` expression.  Pure and synchronous; safe to share between threads."""

    __slots__ = ("_filter", "_fn", "references", "stable", "text", "uses_now")

    def __init__(
        self,
        text: str,
        fn: Fn,
        references: frozenset[tuple[str, str]],
        uses_now: bool,
        row_filter: tuple[str | None, str],
        stable: str | None = None,
    ) -> None:
        self.text = text
        self._fn = fn
        self.references = references
        self.uses_now = uses_now
        self._filter = row_filter
        self.stable = stable  # why the expression is not immutable (now(), the session time zone), or None

    def evaluate(
        self,
        new: Mapping[str, bytes | str | None] | None,
        old: Mapping[str, bytes | str | None] | None,
        now: datetime,
    ) -> bool | None:
        """The predicate's value for one change: True, False, or None (SQL NULL).

        ``new``/``old`` map column names to PostgreSQL text output (or None for NULL); a side that is None
        makes its columns NULL; a referenced column missing from a mapping raises :class:`MissingValue`.
        ``now`` is what ``now()`` returns (the change's commit time; naive means UTC)."""
        try:
            return self._fn(new, old, now)  # type: ignore[no-any-return]
        except RecursionError:
            return _evaluate_deep(self._fn, new, old, now)  # type: ignore[no-any-return]

    def matches(
        self,
        new: Mapping[str, bytes | str | None] | None,
        old: Mapping[str, bytes | str | None] | None,
        now: datetime,
    ) -> bool:
        """True only when the predicate is true (NULL and false do not match), as in a WHERE clause."""
        return self.evaluate(new, old, now) is True

    def row_filter(self) -> tuple[str | None, str]:
        """``(sql, reason)``: the predicate as a PostgreSQL 15+ publication row filter over bare column
        names, or ``(None, why not)``.

        PostgreSQL allows only columns, constants, built-in immutable operators and functions, built-in
        types and collations there; the filter sees one row version, so ``old.`` is never allowed.  For a
        publication that publishes UPDATE or DELETE, every column in the filter must belong to the
        table's replica identity (else those statements fail on the table): check ``references``."""
        return self._filter

    def bare_sql(self) -> str:
        """The expression as PostgreSQL deparses it, over bare column names (``new.x`` is ``x``): for a
        query over the table's rows (`listener backfill --where`).  Meaningful without ``old.``."""
        return _deparse_filter(self.text)

    def __repr__(self) -> str:
        return f"Predicate({self.text!r})"


# jsonb nests up to about 20,000 levels under PostgreSQL's default max_stack_depth (2MB), beyond what
# Python's recursion limit lets json, psycopg's loader and the jsonb functions here read.  Such a change is
# evaluated once more in a thread whose stack and recursion limit fit DEEP_JSON_LEVELS levels (measured:
# under 700 bytes of C stack per level; the stack is virtual memory, touched only as deep as used).
DEEP_JSON_LEVELS = 100_000
_DEEP_RECURSION_LIMIT = 4 * DEEP_JSON_LEVELS
_DEEP_STACK_BYTES = 512 << 20
_deep_lock = threading.Lock()


def _evaluate_deep(fn: Fn, *args: Any) -> Any:
    """``fn(*args)`` in a thread with room for DEEP_JSON_LEVELS levels of jsonb; the same result (or
    error) as PostgreSQL's, only slower."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, fn(*args)))
        except BaseException as exc:  # handed back to the caller's thread
            outcome.append((False, exc))

    with _deep_lock:
        limit, size = sys.getrecursionlimit(), threading.stack_size()
        sys.setrecursionlimit(max(limit, _DEEP_RECURSION_LIMIT))
        try:
            threading.stack_size(_DEEP_STACK_BYTES)
            try:
                thread = threading.Thread(target=run, name="listener-deep-jsonb")
                thread.start()
            finally:
                threading.stack_size(size)
            thread.join()
        finally:
            sys.setrecursionlimit(limit)
    ok, value = outcome[0]
    if ok:
        return value
    if isinstance(value, RecursionError):
        raise _unsupported(f"a jsonb value nests deeper than the {DEEP_JSON_LEVELS} levels listener reads")
    raise value


def compile_predicate(text: str, columns: Mapping[str, ColumnType], *, collation: str = "C") -> Predicate:
    """Parse, type-check against ``columns`` and compile a ``when:`` expression.

    ``collation`` is the database's default collation (``pg_database.datcollate``): ordering comparisons
    of text are refused unless it orders by code point or the expression says ``COLLATE "C"``.
    Raises :class:`PredicateError` for anything PostgreSQL would refuse, anything listener does not
    evaluate exactly as PostgreSQL, and expressions that could never be evaluated (among them those
    nested deeper than Python's recursion limit lets listener compile and evaluate)."""
    try:
        return _compile_predicate(text, columns, collation)
    except RecursionError:
        error = PredicateError(
            "the expression nests too deep for listener to evaluate (hundreds of levels of parentheses,"
            " operators or CASE)",
            text=text,
            hint="write it flatter, e.g. new.x IN (1, 2, 3) instead of chained ORs, fewer parentheses",
        )
        error.limitation = True
        raise error from None


def _compile_predicate(text: str, columns: Mapping[str, ColumnType], collation: str) -> Predicate:
    node, locations = _parse(text)
    compiler = _Compiler(text, columns, collation, locations)
    result = compiler.expr(node)
    if result.type.name == "unknown":
        result = compiler.literal_as(result, BOOL)
    if result.type.name != "bool":
        fragment = compiler.fragment(node)
        raise compiler.error(
            f"the predicate must be a boolean expression, but {fragment} is {result.type.label}",
            node,
            f"compare it, e.g. {_compare_example(fragment, result.type)}",
        )
    compiler.failing_guard(result)
    reason = result.no_filter
    row_filter: tuple[str | None, str]
    row_filter = (_deparse_filter(text), "") if reason is None else (None, reason)
    return Predicate(
        text, result.fn, frozenset(compiler.references), compiler.uses_now, row_filter, result.stable
    )


def _bare_columns(node: Any) -> None:
    """Rewrite ``new.x`` to ``x`` throughout a pglast tree (in place)."""
    if isinstance(node, (tuple, list)):
        for item in node:
            _bare_columns(item)
        return
    if not isinstance(node, ast.Node):
        return
    if isinstance(node, ast.ColumnRef):
        fields: Any = node.fields
        if len(fields) == 2 and isinstance(fields[0], ast.String) and fields[0].sval == "new":
            node.fields = fields[1:]
        return
    for attr in node:
        _bare_columns(getattr(node, attr))


def _deparse_filter(text: str) -> str:
    stmt: Any = parse_sql(SELECT_PREFIX + text)[0].stmt
    expr = stmt.targetList[0].val
    _bare_columns(expr)
    return str(RawStream()(expr))


__all__ = [
    "JSON_NULL",
    "ColumnType",
    "EvaluationError",
    "Interval",
    "MissingValue",
    "Predicate",
    "PredicateError",
    "compile_predicate",
]
