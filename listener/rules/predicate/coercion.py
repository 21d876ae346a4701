"""Casts (parse_coerce.c, the pg_cast catalog): which casts exist, which are implicit, and the
functions that convert a value from one type to another.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any, Final

from listener.rules.predicate.dates import date_ts, ts_date
from listener.rules.predicate.errors import (
    INVALID_PARAMETER,
    NOT_SUPPORTED,
    NUMERIC_OUT_OF_RANGE,
    EvaluationError,
)
from listener.rules.predicate.jsonb import jkind
from listener.rules.predicate.operators import NAN, overflow, signed_inf, underflow
from listener.rules.predicate.textin import (
    LABELS,
    input_function,
    jsonb_in,
    numeric_typmod,
    varchar_typmod,
)
from listener.rules.predicate.textout import bool_text, jsonb_text, num_text, output_function
from listener.rules.predicate.types import (
    DT_RANK,
    EXACT,
    INT_LIMITS,
    INT_TYPES,
    NUM_RANK,
    NUMERIC,
    TEXT,
    TEXTLIKE,
    PgType,
    exact_to_f4,
    num_norm,
    round_f4,
)

_JKIND_NAMES: Final = ("null", "boolean", "number", "string", "array", "object")


def _jsonb_cast(target: PgType) -> Callable[[Any], Any]:
    """jsonb -> numeric / integer / float / boolean casts (jsonb.c); JSON null gives SQL NULL."""
    wanted = 1 if target.name == "bool" else 2
    convert = None if target.name in ("bool", "numeric") else _cast_value_fn(NUMERIC, target)

    def cast(v: Any) -> Any:
        kind = jkind(v)
        if kind == 0:
            return None
        if kind != wanted:
            raise EvaluationError(
                f"cannot cast jsonb {_JKIND_NAMES[kind]} to type {target.label}", INVALID_PARAMETER
            )
        if wanted == 1:
            return v
        d = v if isinstance(v, Decimal) else Decimal(v)
        return convert(d) if convert is not None else num_norm(d)

    return cast


# ------------------------------------------------------------------------------------------------ casts


@dataclass(frozen=True, slots=True)
class CastInfo:
    fn: Callable[[Any], Any]
    stable: bool = False  # not immutable (depends on TimeZone/DateStyle): never folded, no row filter
    io: bool = False  # through text I/O (CoerceViaIO): PostgreSQL refuses it in row filters


def _int_cast(target: str) -> Callable[[int], int]:
    lo, hi, message = INT_LIMITS[target]

    def cast(v: int) -> int:
        if lo <= v <= hi:
            return v
        raise EvaluationError(message, NUMERIC_OUT_OF_RANGE)

    return cast


def _num_to_int(target: str) -> Callable[[Decimal], int]:
    check = _int_cast(target)

    def cast(d: Decimal) -> int:
        if d.is_nan():
            raise EvaluationError("cannot convert NaN to " + LABELS[target], NOT_SUPPORTED)
        if d.is_infinite():
            raise EvaluationError("cannot convert infinity to " + LABELS[target], NOT_SUPPORTED)
        return check(int(d.to_integral_value(ROUND_HALF_UP, context=EXACT)))

    return cast


def _float_to_int(target: str) -> Callable[[float], int]:
    check = _int_cast(target)
    message = INT_LIMITS[target][2]

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
            value = exact_to_f4(Fraction(d)) if single else float(d)
        if math.isinf(value) or (value == 0 and not d.is_zero()):
            raise EvaluationError(f'"{num_text(d)}" is out of range for type {label}', NUMERIC_OUT_OF_RANGE)
        return value

    return cast


def _float_to_num(single: bool) -> Callable[[float], Decimal]:
    digits = 6 if single else 15  # FLT_DIG / DBL_DIG: float8_numeric prints %.15g, then reads it

    def cast(x: float) -> Decimal:
        if x != x:
            return NAN
        if math.isinf(x):
            return signed_inf(x < 0)
        return num_norm(Decimal(f"{x:.{digits}g}"))

    return cast


def _f8_to_f4(x: float) -> float:
    r = round_f4(x)
    if math.isinf(r) and not math.isinf(x):
        raise overflow()
    if r == 0 and x != 0:
        raise underflow()
    return r


def _int_to_f4(v: int) -> float:
    return exact_to_f4(Fraction(v))


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
        typmod = numeric_typmod(dst.typmod)
        inner_fn = inner.fn
        return CastInfo(lambda v: typmod(inner_fn(v)), inner.stable, inner.io)
    if d == "varchar" and dst.typmod:
        inner = cast_info(src, TEXT)
        if inner is None:
            return None
        cut = varchar_typmod(dst.typmod)
        return CastInfo(lambda v: cut(inner.fn(v)), inner.stable, inner.io)
    if s == d and s not in ("enum", "other"):
        return CastInfo(_identity)
    if s in NUM_RANK and d in NUM_RANK:
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
            return CastInfo(bool_text)
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
    if s in DT_RANK and d in DT_RANK:
        fn = _DT_CASTS.get((s, d))
        if fn is None:
            return None
        return CastInfo(fn, stable="timestamptz" in (s, d))
    if s == "jsonb" and d in ("numeric", "int2", "int4", "int8", "float4", "float8", "bool"):
        return CastInfo(_jsonb_cast(dst))
    if s == "jsonb" and d == "json":
        return CastInfo(jsonb_text, io=True)
    if s == "json" and d == "jsonb":
        return CastInfo(jsonb_in, io=True)
    return None


# the session time zone is UTC: timestamp and timestamptz hold the same microseconds
_DT_CASTS: Final[dict[tuple[str, str], Callable[[Any], Any]]] = {
    ("date", "timestamp"): date_ts, ("date", "timestamptz"): date_ts,
    ("timestamp", "date"): ts_date, ("timestamp", "timestamptz"): _identity,
    ("timestamptz", "date"): ts_date, ("timestamptz", "timestamp"): _identity,
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
    if s in NUM_RANK and d in NUM_RANK:
        return NUM_RANK[s] < NUM_RANK[d]
    if s in DT_RANK and d in DT_RANK:
        return DT_RANK[s] < DT_RANK[d]
    return s in TEXTLIKE and d in TEXTLIKE
