"""The value model: PostgreSQL's types as the evaluator sees them and values held as PostgreSQL holds them.

Column types and their OIDs, the numeric type ranks of parse_coerce.c, intervals (months, days and
microseconds apart), JSON null, exact numeric and float4 rounding, and dates and timestamps as integers
since 2000-01-01 (datatype/timestamp.h, utils/adt/datetime.c).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_UP, Context, Decimal
from fractions import Fraction
from typing import Final, NamedTuple

from listener.rules.predicate.errors import DATETIME_OVERFLOW, EvaluationError

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

BY_OID: Final[dict[int, PgType]] = {
    t.oid: t
    for t in (BOOL, INT2, INT4, INT8, NUMERIC, FLOAT4, FLOAT8, TEXT, VARCHAR, BPCHAR, DATE, TIMESTAMP,
              TIMESTAMPTZ, INTERVAL, JSONB, JSON, UUID_T)
}  # fmt: skip
BY_OID[19] = PgType("text", "name", "S", oid=19)  # name behaves as text in every supported operation

INT_TYPES: Final = ("int2", "int4", "int8")
INT_RANK: Final = {"int2": 0, "int4": 1, "int8": 2}
INT_LIMITS: Final = {
    "int2": (-(2**15), 2**15 - 1, "smallint out of range"),
    "int4": (-(2**31), 2**31 - 1, "integer out of range"),
    "int8": (-(2**63), 2**63 - 1, "bigint out of range"),
}
NUM_RANK: Final = {"int2": 0, "int4": 1, "int8": 2, "numeric": 3, "float4": 4, "float8": 5}
DT_RANK: Final = {"date": 0, "timestamp": 1, "timestamptz": 2}
TEXTLIKE: Final = ("text", "varchar", "bpchar")

# type names a cast may target (TypeName.names[-1], as the parser spells them)
CAST_NAMES: Final[dict[str, PgType]] = {
    "int2": INT2, "smallint": INT2, "int4": INT4, "int": INT4, "integer": INT4, "int8": INT8,
    "bigint": INT8, "numeric": NUMERIC, "decimal": NUMERIC, "float4": FLOAT4, "real": FLOAT4,
    "float8": FLOAT8, "text": TEXT, "varchar": VARCHAR, "bool": BOOL, "boolean": BOOL, "date": DATE,
    "timestamp": TIMESTAMP, "timestamptz": TIMESTAMPTZ, "interval": INTERVAL, "jsonb": JSONB,
    "json": JSON, "uuid": UUID_T,
}  # fmt: skip

# examples for hints, by type name
EXAMPLES: Final = {
    "int2": "42", "int4": "42", "int8": "42", "numeric": "10.5", "float4": "1.5", "float8": "1.5",
    "bool": "true", "date": "'2024-01-31'", "timestamp": "'2024-01-31 12:00:00'",
    "timestamptz": "'2024-01-31 12:00:00+00'", "interval": "interval '1 day'",
    "jsonb": """'{"key": "value"}'""", "uuid": "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
    "text": "'text'", "varchar": "'text'", "bpchar": "'text'",
}  # fmt: skip


def column_pg_type(column: ColumnType) -> PgType:
    """The compiler's view of a column's type (unsupported types become 'other': usable only in
    ``IS [NOT] NULL`` and ``::text``)."""
    known = BY_OID.get(column.type_oid)
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
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, rounding=ROUND_HALF_UP)
_ONE = Decimal(1)
NUMERIC_MIN_SIG_DIGITS: Final = 16  # numeric.c: result scale of division
NUMERIC_MAX_DISPLAY_SCALE: Final = 1000
NUMERIC_DSCALE_MAX: Final = 0x3FFF
WS: Final = " \t\n\r\v\f"


def num_norm(d: Decimal) -> Decimal:
    """PostgreSQL's numeric has no negative zero and no positive exponent (a display scale >= 0)."""
    if not d.is_finite():
        return d
    if d.is_zero() and d.is_signed():
        d = d.copy_abs()
    if d.as_tuple().exponent > 0:  # type: ignore[operator]
        d = d.quantize(_ONE, context=EXACT)
    return d


def dscale(d: Decimal) -> int:
    exp = d.as_tuple().exponent
    return max(0, -exp) if isinstance(exp, int) else 0


_F4 = struct.Struct("f")
FLT_MAX: Final = 3.4028234663852886e38


def round_f4(x: float) -> float:
    """A float8 rounded to float4 (one rounding: exact for results of float4 arithmetic)."""
    try:
        return float(_F4.unpack(_F4.pack(x))[0])
    except OverflowError:  # beyond the largest float4 even after rounding
        return math.copysign(math.inf, x)


def exact_to_f4(q: Fraction) -> float:
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
TIMESTAMP_END_DAYS: Final = 109203528 - POSTGRES_EPOCH_JDATE  # 294277-01-01
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


def valid_date(d: int) -> bool:
    return _DATE_MIN <= d < _DATE_END


def valid_timestamp(t: int) -> bool:
    return MIN_TIMESTAMP <= t < END_TIMESTAMP


def date_out_of_range() -> EvaluationError:
    return EvaluationError("date out of range", DATETIME_OVERFLOW)


def ts_out_of_range() -> EvaluationError:
    return EvaluationError("timestamp out of range", DATETIME_OVERFLOW)


def date_of(d: date) -> int:
    """A Python date as the evaluator's date value."""
    return d.toordinal() - _PG_EPOCH_ORDINAL


def timestamp_of(d: datetime) -> int:
    """A Python datetime (naive: as is; aware: in UTC) as the evaluator's timestamp value."""
    return (d - (_PG_EPOCH if d.tzinfo is None else _PG_EPOCH_TZ)) // _ONE_USEC


_DAYS_IN_MONTH: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def days_in_month(year: int, month: int) -> int:
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)  # year 0 (1 BC) is a leap year
    return _DAYS_IN_MONTH[month - 1] + (1 if month == 2 and leap else 0)


def valid_julian(year: int, month: int) -> bool:
    """IS_VALID_JULIAN: from 4714-11 BC (year -4713) to 5874898-06 (exclusive), by month."""
    return (year > -4713 or (year == -4713 and month >= 11)) and (
        year < 5874898 or (year == 5874898 and month < 6)
    )


def interval_checked(months: int, days: int, micros: int, sqlstate: str = DATETIME_OVERFLOW) -> Interval:
    if not (-(2**31) <= months < 2**31 and -(2**31) <= days < 2**31 and -(2**63) <= micros < 2**63):
        raise EvaluationError("interval out of range", sqlstate)
    return Interval(months, days, micros)
