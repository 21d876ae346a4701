"""Reading column values from pgoutput's text: psycopg's loaders chosen by type OID, with PostgreSQL's
own input functions where psycopg's would lose meaning (interval, infinite and BC dates, jsonb numbers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import psycopg
import psycopg.types.json
from psycopg import pq
from psycopg.adapt import AdaptersMap, Transformer

from listener.rules.predicate.errors import EvaluationError, MissingValue, unsupported
from listener.rules.predicate.evaluator import Fn
from listener.rules.predicate.jsonb import MISSING
from listener.rules.predicate.textin import datetime_in, interval_in, json_float, json_int
from listener.rules.predicate.types import (
    INT_TYPES,
    JSON_NULL,
    Interval,
    PgType,
    date_of,
    exact_to_f4,
    timestamp_of,
)


def _json_loads_pg(data: Any) -> Any:
    return _decode_pg_json(bytes(data).decode() if isinstance(data, (bytes, bytearray, memoryview)) else data)


# jsonb text from the server: numbers as Decimal (PostgreSQL's numeric), never NaN/Infinity
_decode_pg_json = json.JSONDecoder(parse_float=json_float, parse_int=json_int).decode
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
                return interval_in(_as_text(raw))
            except EvaluationError as exc:
                message = f"{where}: cannot read interval {_as_text(raw)!r} ({exc.message})"
                raise unsupported(message + "; listener reads IntervalStyle 'postgres'") from None

        return load_interval
    load = _TRANSFORMER.get_loader(t.oid, pq.Format.TEXT).load
    jsonb = name == "jsonb"

    def load_value(raw: Any) -> Any:
        try:
            v = load(raw.encode() if raw.__class__ is str else raw)
        except RecursionError:
            raise  # deep jsonb: evaluated again with a deeper stack (see _evaluate_deep)
        except Exception as exc:
            raise unsupported(
                f"{where}: the {t.label} value {_as_text(raw)!r} cannot be read: {exc}"
            ) from None
        return JSON_NULL if jsonb and v is None else v

    if name == "float4":
        # psycopg reads '0.1' as the double 0.1; the column holds the float4 nearest 0.1, which is what
        # PostgreSQL compares (0.1::float4 <> 0.1)
        def load_float4(raw: Any) -> float:
            v: float = load_value(raw)
            return exact_to_f4(Fraction(Decimal(_as_text(raw)))) if math.isfinite(v) else v

        return load_float4
    return load_value


def _datetime_loader(t: PgType, where: str) -> Callable[[Any], int]:
    """date/timestamp/timestamptz text -> days or microseconds since 2000-01-01 (see ``date2j``).

    psycopg's loader reads the common case fast; it refuses what Python's datetime cannot hold
    (``infinity``, BC, years past 9999: psycopg's docs, "Handling infinity date", suggest a custom
    loader), and PostgreSQL's text of those is read by :func:`datetime_in`."""
    name = t.name
    fast = _TRANSFORMER.get_loader(t.oid, pq.Format.TEXT).load
    convert: Callable[[Any], int] = date_of if name == "date" else timestamp_of

    def load_datetime(raw: Any) -> int:
        try:
            return convert(fast(raw.encode() if raw.__class__ is str else raw))
        except (psycopg.DataError, ValueError, OverflowError):
            text = _as_text(raw)
        try:
            return datetime_in(text, name)
        except EvaluationError as exc:
            message = f"{where}: the {t.label} value {text!r} cannot be read: {exc.message}"
            raise unsupported(message) from None

    return load_datetime


CHEAP_LOADS: Final = frozenset({"text", "varchar", "enum", "other", "json", "bpchar", "bool", *INT_TYPES})


def column_fn(side: str, name: str, load: Callable[[Any], Any], memo: bool) -> Fn:
    """Reads one column of the new or old row: absent side -> NULL, absent key -> MissingValue.

    Values that are costly to load keep the last (raw, value) pair: the same raw object loads once even
    when the predicate names the column several times."""
    new = side == "new"
    cell: tuple[Any, Any] = (MISSING, None)

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
