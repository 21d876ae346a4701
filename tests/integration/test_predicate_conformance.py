"""Predicates agree with PostgreSQL: generated expressions over generated rows, evaluated by both.

For every example two rows are written to a table (``new`` is row 1, ``old`` row 2); the server evaluates
the expression with ``SELECT (<expr>) FROM t AS new, t AS old`` (a bare column, which would be ambiguous
there, is spelled ``new.<col>`` for the server only) and listener evaluates the same text over the rows as
the server prints them (``col::text``, what pgoutput sends), with ``now`` read from the same transaction.
Both must say true, both false, both NULL, or both fail with the same SQLSTATE.  A predicate listener
refuses at load time must be one the server refuses too (a type error, or a constant that fails when the
planner folds it), unless listener flags the refusal as its own documented limitation.  Likewise
listener may decline at run time (``EvaluationError.sqlstate is None``: a date/time text form it does
not read), never answer differently; the share of such examples is reported as a Hypothesis event.

Every ``row_filter()`` listener offers must be accepted by ``CREATE PUBLICATION ... WHERE`` and, row by
row, publish exactly the rows the predicate matches.  The filter is evaluated as one expression per row,
as pgoutput does, not as a WHERE clause (whose quals the planner may reorder, which changes which of two
failing parts raises first).

The generators cover int4/int8 bounds, numerics with up to 40 digits and NaN/+-Infinity, float8 and float4
edge values (NaN, +-inf, -0, subnormals), texts with %, _, \\ and non-ASCII, varchar(n) and char(n),
timestamps 1900-2100 and, a quarter of the time, infinities, BC and years past 9999 up to PostgreSQL's
limits, intervals with months, days and microseconds, nested jsonb with numbers like 1.10
and 1e2, and text that other types' input functions read.  The run is deterministic (``derandomize``) and
stores no example database; ``PREDICATE_RANDOM=1 PREDICATE_EXAMPLES=5000`` explores new examples.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from listener.rules.predicate import (
    ColumnType,
    EvaluationError,
    Predicate,
    PredicateError,
    compile_predicate,
)

EXAMPLES = int(os.environ.get("PREDICATE_EXAMPLES", "400"))
FILTER_EXAMPLES = EXAMPLES * 3 // 8
RANDOM = os.environ.get("PREDICATE_RANDOM") == "1"  # explore new examples instead of the fixed ones

COLUMNS: dict[str, tuple[str, int, str]] = {
    # name: (SQL type, type OID, format_type spelling)
    "i4": ("int4", 23, "integer"),
    "i8": ("int8", 20, "bigint"),
    "n": ("numeric", 1700, "numeric"),
    "f": ("float8", 701, "double precision"),
    "r": ("float4", 700, "real"),
    "s": ("text", 25, "text"),
    "vc": ("varchar(5)", 1043, "character varying(5)"),
    "ch": ("char(3)", 1042, "character(3)"),
    "b": ("bool", 16, "boolean"),
    "tz": ("timestamptz", 1184, "timestamp with time zone"),
    "ts": ("timestamp", 1114, "timestamp without time zone"),
    "d": ("date", 1082, "date"),
    "iv": ("interval", 1186, "interval"),
    "j": ("jsonb", 3802, "jsonb"),
}
COLUMN_TYPES = {name: ColumnType(name, oid, label) for name, (_, oid, label) in COLUMNS.items()}
CREATE = (
    "CREATE TABLE t (id int PRIMARY KEY, " + ", ".join(f"{c} {t}" for c, (t, _, _) in COLUMNS.items()) + ")"
)

Row = dict[str, str | None]  # column -> PostgreSQL input text, or None


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ------------------------------------------------------------------------------------------- values

TEXT_CHARS = "ab%_\\ AZé€😀'\n"
# text that other types' input functions read (casts from text), and some they refuse
PARSABLE = [
    "42", " -7 ", "0x1F", "1_000", "2147483648", "1e3", "1.50", ".5", "NaN", "-Infinity", "inf", "true",
    "yes", "off", "t", "2024-02-29", "2024-01-31 23:59:59.999999+02", "2023-02-29", "2024-01-01T10:00:00Z",
    "1 day", "1 mon -2 days 03:04:05", "1.5 hours", "@ 2 weeks ago", '{"a": 1.10}', '[1, "a", null]', '"x"',
    "null", "{bad",
]  # fmt: skip
texts = st.one_of(
    st.text(alphabet=TEXT_CHARS, max_size=6),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=4),
    st.sampled_from(PARSABLE),
)
int4s = st.one_of(
    st.sampled_from([0, 1, -1, 2, 7, -7, 2**31 - 1, -(2**31), 46341, 65536]),
    st.integers(-(2**31), 2**31 - 1),
)
int8s = st.one_of(
    st.sampled_from([0, 3, -3, 2**63 - 1, -(2**63), 2**32, 3037000500]), st.integers(-(2**63), 2**63 - 1)
)


@st.composite
def numerics(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "0", "-0.00", "0.000"]))
    whole = draw(st.text("0123456789", min_size=1, max_size=draw(st.sampled_from([2, 6, 20]))))
    frac = draw(st.text("0123456789", max_size=draw(st.sampled_from([0, 3, 20]))))
    sign = draw(st.sampled_from(["", "-"]))
    return f"{sign}{whole.lstrip('0') or '0'}" + (f".{frac}" if frac else "")


floats = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "-0", "0.1", "1e308", "5e-324", "1e15", "123456.75"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
instants = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31))
# what Python's datetime cannot hold: infinities, BC, years past 9999, PostgreSQL's first and last instants
EDGE_INSTANTS = ["infinity", "-infinity", "0044-03-15 12:00:00 BC", "0001-12-31 23:59:59.5 BC",
                 "10000-01-01 00:00:00", "294276-12-31 23:59:59.999999", "4714-11-24 00:00:00 BC",
                 "9999-12-31 23:59:59.999999", "0001-01-01 00:00:00"]  # fmt: skip
EDGE_DATES = ["infinity", "-infinity", "0001-01-01 BC", "4714-11-24 BC", "5874897-12-31", "10000-01-01",
              "9999-12-31", "294277-01-01", "0001-01-01"]  # fmt: skip


def instant_texts(spell: Callable[[datetime], str], edges: list[str]) -> st.SearchStrategy[str]:
    """Mostly ordinary instants, a quarter of edges."""
    ordinary = instants.map(spell)
    return st.one_of(ordinary, ordinary, ordinary, st.sampled_from(edges))


@st.composite
def intervals(draw: st.DrawFn) -> str:
    months = draw(st.integers(-1200, 1200))
    days = draw(st.integers(-1000, 1000))
    micros = draw(st.one_of(st.integers(-(10**12), 10**12), st.sampled_from([0, 1, -1, 86_400_000_000])))
    # as hours:minutes:seconds: PostgreSQL 14 reads at most 2^31-1 in a "microseconds" field
    seconds, fraction = divmod(abs(micros), 1_000_000)
    sign = "-" if micros < 0 else ""
    time = f"{sign}{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{fraction:06d}"
    return f"{months} mons {days} days {time}"


json_numbers = st.sampled_from(["0", "1", "-1", "1.10", "1e2", "1E-2", "2.5", "12345678901234567890", "-0.0"])
json_strings = st.text(alphabet='ab"\\é/\n\t ', max_size=4).map(
    lambda s: (
        '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    )
)
json_scalars = st.one_of(st.sampled_from(["null", "true", "false"]), json_numbers, json_strings)
JSON_KEYS = ["a", "b", "k", "é"]


def json_containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    arrays = st.lists(children, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")
    objects = st.dictionaries(st.sampled_from(JSON_KEYS), children, max_size=3).map(
        lambda d: "{" + ", ".join(f'"{k}": {v}' for k, v in d.items()) + "}"
    )
    return st.one_of(arrays, objects)


jsons = st.recursive(json_scalars, json_containers, max_leaves=6)

VALUES: dict[str, st.SearchStrategy[str]] = {
    "i4": int4s.map(str),
    "i8": int8s.map(str),
    "n": numerics(),
    "f": floats,
    "r": st.one_of(
        st.sampled_from(["NaN", "-Infinity", "0.1", "16777217", "3.4028235e38", "1e-45", "-0"]),
        st.floats(width=32).map(repr),
    ),
    "s": texts,
    "vc": texts,
    "ch": st.text(alphabet="ab %_ é", max_size=4),
    "b": st.sampled_from(["true", "false"]),
    "tz": instant_texts(lambda d: d.isoformat(sep=" ") + "+00", EDGE_INSTANTS),
    "ts": instant_texts(lambda d: d.isoformat(sep=" "), EDGE_INSTANTS),
    "d": instant_texts(lambda d: d.date().isoformat(), EDGE_DATES),
    "iv": intervals(),
    "j": jsons,
}


@st.composite
def rows(draw: st.DrawFn) -> Row:
    return {c: None if draw(st.integers(0, 5)) == 0 else draw(VALUES[c]) for c in COLUMNS}


# ---------------------------------------------------------------------------------------- expressions

NUM = ("int", "numeric", "float")
Gen = Callable[[st.DrawFn, str, int], str]


def column(draw: st.DrawFn, name: str) -> str:
    # "@x" is a bare column: listener reads it as new.x; the server (which sees two tables) gets new.x
    return draw(st.sampled_from([f"new.{name}", f"old.{name}", f"@{name}"]))


BARE = re.compile(r"@(?=[a-z])")


def for_listener(expr: str) -> str:
    return BARE.sub("", expr)


def for_server(expr: str) -> str:
    return BARE.sub("new.", expr)


def literal(draw: st.DrawFn, kind: str) -> str:
    if kind == "int":
        return str(draw(st.one_of(st.integers(-3, 10), int4s, int8s.filter(lambda v: v > 0))))
    if kind == "numeric":
        value = draw(numerics())
        if value[0].isdigit() and "." in value:
            return value  # a numeric literal
        return f"{quote(value)}::numeric"
    if kind == "float":
        return f"{quote(draw(floats))}::float8"
    if kind == "text":
        return quote(draw(texts))
    if kind == "bool":
        return draw(st.sampled_from(["true", "false", "NULL::boolean"]))
    # date/time literals are typed (timestamp '...') or unknown-typed ('...': it takes the other side's type)
    typed_as = draw(st.sampled_from(["", f"{kind} "]))
    if kind == "timestamptz":
        zone = draw(st.sampled_from(["+00", "+02:30", "-08", "Z", ""]))
        return typed_as + quote(draw(instant_texts(lambda d: d.isoformat(sep=" ") + zone, EDGE_INSTANTS)))
    if kind == "timestamp":
        sep = draw(st.sampled_from([" ", "T"]))
        return typed_as + quote(draw(instant_texts(lambda d: d.isoformat(sep=sep), EDGE_INSTANTS)))
    if kind == "date":
        return typed_as + quote(draw(instant_texts(lambda d: d.date().isoformat(), EDGE_DATES)))
    if kind == "interval":
        spellings = ["1 day", "7 days", "1 mon", "-1 year 2 mons", "36 hours", "1.5 days", "00:30:00",
                     "1 day 02:03:04.5", "-00:00:01", "2 weeks ago"]  # fmt: skip
        text = draw(st.sampled_from(spellings))
        return f"interval {quote(text)}"
    if kind == "jsonb":
        return f"{quote(draw(jsons))}::jsonb"
    raise AssertionError(kind)


def typed(draw: st.DrawFn, kind: str, depth: int) -> str:
    """An expression of one type, from the supported constructs."""
    leaf = depth <= 0 or draw(st.integers(0, 2)) == 0
    if kind == "int":
        if leaf:
            return draw(st.sampled_from([column(draw, "i4"), column(draw, "i8"), literal(draw, "int")]))
        choice = draw(st.integers(0, 6))
        if choice <= 2:
            op = draw(st.sampled_from(["+", "-", "*", "/", "%"]))
            return f"({typed(draw, 'int', depth - 1)} {op} {typed(draw, 'int', depth - 1)})"
        if choice == 3:
            return f"(- {typed(draw, 'int', depth - 1)})"
        if choice == 4:
            source = draw(st.sampled_from(["numeric", "float", "text", "jsonb", "bool"]))
            target = draw(st.sampled_from(["int4", "int8", "int2"]))
            if source == "bool":
                target = "int4"
            return f"({typed(draw, source, depth - 1)})::{target}"
        if choice == 5:
            return f"length({typed(draw, draw(st.sampled_from(['text', 'bpchar'])), depth - 1)})"
        return conditional(draw, "int", depth)
    if kind == "numeric":
        if leaf:
            return draw(st.sampled_from([column(draw, "n"), literal(draw, "numeric")]))
        choice = draw(st.integers(0, 5))
        if choice <= 2:
            op = draw(st.sampled_from(["+", "-", "*", "/", "%"]))
            left, right = (
                typed(draw, "numeric", depth - 1),
                typed(draw, draw(st.sampled_from(["int", "numeric"])), depth - 1),
            )
            return f"({left} {op} {right})"
        if choice == 3:
            source = draw(st.sampled_from(["int", "float", "text"]))
            mod = draw(st.sampled_from(["", "", "(10,2)", "(5)", "(30,20)"]))
            return f"({typed(draw, source, depth - 1)})::numeric{mod}"
        if choice == 4:
            return (
                f"({typed(draw, 'jsonb', depth - 1)} -> {quote(draw(st.sampled_from(JSON_KEYS)))})::numeric"
            )
        return conditional(draw, "numeric", depth)
    if kind == "float":
        if leaf:
            return draw(st.sampled_from([column(draw, "f"), column(draw, "r"), literal(draw, "float")]))
        choice = draw(st.integers(0, 4))
        if choice <= 1:
            op = draw(st.sampled_from(["+", "-", "*", "/"]))
            other = draw(st.sampled_from(NUM))
            return f"({typed(draw, 'float', depth - 1)} {op} {typed(draw, other, depth - 1)})"
        if choice == 2:
            source = draw(st.sampled_from(["int", "numeric", "text", "jsonb"]))
            return f"({typed(draw, source, depth - 1)})::float8"
        if choice == 3:  # real: rounding to float4, float4 arithmetic and output
            source = draw(st.sampled_from(["int", "numeric", "text", "float"]))
            if draw(st.booleans()):
                return f"({typed(draw, source, depth - 1)})::float4"
            op = draw(st.sampled_from(["+", "-", "*", "/"]))
            return f"(({typed(draw, source, depth - 1)})::float4 {op} {literal(draw, 'float')}::float4)"
        return conditional(draw, "float", depth)
    if kind == "bpchar":  # character(n): compared, never matched with LIKE (listener refuses that)
        return draw(
            st.sampled_from([column(draw, "ch"), f"COALESCE({column(draw, 'ch')}, {column(draw, 'ch')})"])
        )
    if kind == "text":
        if leaf:
            return draw(st.sampled_from([column(draw, "s"), column(draw, "vc"), literal(draw, "text")]))
        choice = draw(st.integers(0, 6))
        if choice <= 1:
            other = draw(
                st.sampled_from(["text", "text", "int", "numeric", "float", "bool", "date", "jsonb"])
            )
            pair = [typed(draw, "text", depth - 1), typed(draw, other, depth - 1)]
            if draw(st.booleans()):
                pair.reverse()
            return f"({pair[0]} || {pair[1]})"
        if choice == 2:
            fn = draw(st.sampled_from(["lower", "upper", "btrim", "ltrim", "rtrim"]))
            return f"{fn}({typed(draw, 'text', depth - 1)})"
        if choice == 3:
            source = draw(st.sampled_from(["int", "numeric", "float", "bool", "timestamptz", "timestamp",
                                           "date", "interval", "jsonb"]))  # fmt: skip
            return f"({typed(draw, source, depth - 1)})::text"
        if choice == 4:
            key = draw(st.one_of(st.sampled_from(JSON_KEYS).map(quote), st.integers(-3, 3).map(str)))
            return f"({typed(draw, 'jsonb', depth - 1)} ->> {key})"
        if choice == 5:
            return f"btrim({typed(draw, 'text', depth - 1)}, {literal(draw, 'text')})"
        return conditional(draw, "text", depth)
    if kind == "bool":
        if not leaf and draw(st.integers(0, 4)) == 0:
            source = draw(st.sampled_from(["text", "jsonb", "int"]))
            return f"({typed(draw, source, depth - 1)})::{'bool' if source != 'int' else 'boolean'}"
        return boolean(draw, depth)
    if kind in ("timestamptz", "timestamp"):
        col = "tz" if kind == "timestamptz" else "ts"
        if leaf:
            options = [column(draw, col), literal(draw, kind)]
            options.append("now()" if kind == "timestamptz" else "localtimestamp")
            return draw(st.sampled_from(options))
        choice = draw(st.integers(0, 3))
        if choice <= 1:
            op = draw(st.sampled_from(["+", "-"]))
            return f"({typed(draw, kind, depth - 1)} {op} {typed(draw, 'interval', depth - 1)})"
        if choice == 2:
            source = draw(st.sampled_from(["timestamptz", "timestamp", "date", "text"]))
            return f"({typed(draw, source, depth - 1)})::{kind}"
        return conditional(draw, kind, depth)
    if kind == "date":
        if leaf:
            return draw(st.sampled_from([column(draw, "d"), literal(draw, "date"), "current_date"]))
        choice = draw(st.integers(0, 2))
        if choice == 0:
            op, days = draw(st.sampled_from(["+", "-"])), draw(st.integers(-400, 400))
            return f"({typed(draw, 'date', depth - 1)} {op} {days})"
        if choice == 1:
            source = draw(st.sampled_from(["timestamp", "timestamptz", "text"]))
            return f"({typed(draw, source, depth - 1)})::date"
        return conditional(draw, "date", depth)
    if kind == "interval":
        if leaf:
            return draw(st.sampled_from([column(draw, "iv"), literal(draw, "interval")]))
        choice = draw(st.integers(0, 5))
        if choice == 0:
            op = draw(st.sampled_from(["+", "-"]))
            return f"({typed(draw, 'interval', depth - 1)} {op} {typed(draw, 'interval', depth - 1)})"
        if choice == 5:  # interval * / float8: the factor from any number type, or a bare literal
            factor = draw(
                st.one_of(
                    st.sampled_from(["2", "0.5", "-1.5", "'3'", "1e-7", "'Infinity'", "0", "1e10", "7.25"]),
                    st.just(typed(draw, draw(st.sampled_from(NUM)), depth - 1)),
                )
            )
            iv = typed(draw, "interval", depth - 1)
            form = draw(st.sampled_from(["{iv} * {f}", "{f} * {iv}", "{iv} / {f}"]))
            return "(" + form.format(iv=iv, f=factor) + ")"
        if choice == 4:
            return f"({typed(draw, 'text', depth - 1)})::interval"
        if choice == 1:
            source = draw(st.sampled_from(["timestamp", "timestamptz"]))
            return f"({typed(draw, source, depth - 1)} - {typed(draw, source, depth - 1)})"
        if choice == 2:
            return f"(- {typed(draw, 'interval', depth - 1)})"
        return conditional(draw, "interval", depth)
    if kind == "jsonb":
        if leaf:
            return draw(st.sampled_from([column(draw, "j"), literal(draw, "jsonb")]))
        choice = draw(st.integers(0, 3))
        if choice == 3:
            return f"({typed(draw, 'jsonb', depth - 1)} || {typed(draw, 'jsonb', depth - 1)})"
        if choice == 0:
            key = draw(st.one_of(st.sampled_from(JSON_KEYS).map(quote), st.integers(-3, 3).map(str)))
            return f"({typed(draw, 'jsonb', depth - 1)} -> {key})"
        if choice == 1:
            return f"({typed(draw, 'text', depth - 1)})::jsonb"
        return conditional(draw, "jsonb", depth)
    raise AssertionError(kind)


def conditional(draw: st.DrawFn, kind: str, depth: int) -> str:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return f"COALESCE({typed(draw, kind, depth - 1)}, {typed(draw, kind, depth - 1)})"
    if choice == 1 and kind != "jsonb":
        return f"NULLIF({typed(draw, kind, depth - 1)}, {typed(draw, kind, depth - 1)})"
    arms = " ".join(
        f"WHEN {boolean(draw, depth - 1)} THEN {typed(draw, kind, depth - 1)}"
        for _ in range(draw(st.integers(1, 2)))
    )
    default = f" ELSE {typed(draw, kind, depth - 1)}" if draw(st.booleans()) else ""
    return f"CASE {arms}{default} END"


ORDERED = (
    "int",
    "numeric",
    "float",
    "text",
    "timestamptz",
    "timestamp",
    "date",
    "interval",
    "bool",
    "bpchar",
)


def boolean(draw: st.DrawFn, depth: int) -> str:
    if depth <= 0:
        return draw(st.sampled_from([column(draw, "b"), "true", "false", "NULL::boolean"]))
    choice = draw(st.integers(0, 11))
    if choice <= 2:
        families = [("int", "numeric", "float"), ("text", "bpchar"), ("timestamptz", "timestamp", "date"),
                    ("interval",), ("bool",), ("jsonb",)]  # fmt: skip
        family = draw(st.sampled_from(families))
        left, right = draw(st.sampled_from(family)), draw(st.sampled_from(family))
        ops = ["=", "<>", "!="] if family == ("jsonb",) else ["=", "<>", "<", "<=", ">", ">=", "!="]
        op = draw(st.sampled_from(ops))
        return f"({typed(draw, left, depth - 1)} {op} {typed(draw, right, depth - 1)})"
    if choice == 3:
        op = draw(st.sampled_from(["AND", "OR"]))
        return f"({boolean(draw, depth - 1)} {op} {boolean(draw, depth - 1)})"
    if choice == 4:
        return f"(NOT {boolean(draw, depth - 1)})"
    if choice == 5:
        kind = draw(st.sampled_from([*ORDERED, "jsonb"]))
        test = draw(st.sampled_from(["IS NULL", "IS NOT NULL"]))
        return f"({typed(draw, kind, depth - 1)} {test})"
    if choice == 6:
        kind = draw(st.sampled_from(ORDERED))
        word = draw(st.sampled_from(["IS DISTINCT FROM", "IS NOT DISTINCT FROM"]))
        return f"({typed(draw, kind, depth - 1)} {word} {typed(draw, kind, depth - 1)})"
    if choice == 7:  # IN: constant items go to one = ANY(array) over their common type
        kind = draw(st.sampled_from(ORDERED))
        family = NUM if kind in NUM else (kind,)
        count = draw(st.integers(1, 4))
        items = ", ".join(typed(draw, draw(st.sampled_from(family)), depth - 2) for _ in range(count))
        word = draw(st.sampled_from(["IN", "NOT IN"]))
        return f"({typed(draw, kind, depth - 1)} {word} ({items}))"
    if choice == 8:
        kind = draw(st.sampled_from([k for k in ORDERED if k != "bool"]))
        word = draw(st.sampled_from(["BETWEEN", "NOT BETWEEN", "BETWEEN SYMMETRIC", "NOT BETWEEN SYMMETRIC"]))
        parts = [typed(draw, kind, depth - 1) for _ in range(3)]
        return f"({parts[0]} {word} {parts[1]} AND {parts[2]})"
    if choice == 9:
        pattern = draw(
            st.one_of(st.text(alphabet="a%_\\Aé", max_size=5).map(quote), st.just(typed(draw, "text", 0)))
        )
        word = draw(st.sampled_from(["LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"]))
        escape = draw(st.sampled_from(["", "", " ESCAPE '!'", " ESCAPE ''", " ESCAPE 'a'"]))
        return f"({typed(draw, 'text', depth - 1)} {word} {pattern}{escape})"
    if choice == 10:
        left = typed(draw, "jsonb", depth - 1)
        if draw(st.booleans()):
            return f"({left} {draw(st.sampled_from(['@>', '<@']))} {typed(draw, 'jsonb', depth - 1)})"
        return f"({left} ? {quote(draw(st.sampled_from(JSON_KEYS)))})"
    test = draw(st.sampled_from(["IS TRUE", "IS NOT TRUE", "IS FALSE", "IS NOT FALSE", "IS UNKNOWN"]))
    return f"({boolean(draw, depth - 1)} {test})"


@st.composite
def predicates(draw: st.DrawFn) -> str:
    return boolean(draw, draw(st.integers(1, 4)))


# -------------------------------------------------------------------------------------------- harness

Outcome = tuple[str, Any]  # ("value", True/False/None) or ("error", sqlstate)


@pytest.fixture
def table(sql: psycopg.Connection[tuple[Any, ...]]) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    sql.execute("SET TimeZone = 'UTC'")
    sql.execute(CREATE)
    yield sql


def store(
    conn: psycopg.Connection[tuple[Any, ...]], new: Row, old: Row
) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """Write the rows; return them as the server prints them (what pgoutput would send)."""
    conn.execute("TRUNCATE t")
    names = list(COLUMNS)
    columns = ", ".join(names)
    casts = ", ".join(f"%s::{COLUMNS[c][0]}" for c in names)
    for key, row in ((1, new), (2, old)):
        conn.execute(f"INSERT INTO t (id, {columns}) VALUES ({key}, {casts})", [row[c] for c in names])
    texts = ", ".join(f"{c}::text" for c in names)
    printed = conn.execute(f"SELECT {texts} FROM t ORDER BY id").fetchall()
    return dict(zip(names, printed[0], strict=True)), dict(zip(names, printed[1], strict=True))


def server_outcome(conn: psycopg.Connection[tuple[Any, ...]], expr: str) -> tuple[Outcome, datetime]:
    with conn.transaction():
        now = conn.execute("SELECT now()").fetchone()
        assert now is not None
        try:
            with conn.transaction():
                row = conn.execute(
                    f"SELECT ({expr}) FROM t AS new, t AS old WHERE new.id = 1 AND old.id = 2"
                ).fetchone()
        except psycopg.Error as exc:
            return ("error", exc.sqlstate), now[0]
    assert row is not None
    return ("value", row[0]), now[0]


def listener_outcome(
    predicate: Predicate, new: dict[str, str | None], old: dict[str, str | None], now: datetime
) -> Outcome:
    try:
        return (
            "value",
            predicate.evaluate({k: v.encode() if v is not None else None for k, v in new.items()}, old, now),
        )
    except EvaluationError as exc:
        return ("error", exc.sqlstate)


def compile_or_error(expr: str) -> Predicate | PredicateError:
    try:
        return compile_predicate(expr, COLUMN_TYPES, collation="C")
    except PredicateError as exc:
        return exc


def conformance_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=not RANDOM,
        database=None,  # nothing written to .hypothesis/
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@conformance_settings(EXAMPLES)
@given(expr=predicates(), new=rows(), old=rows())
def test_predicates_evaluate_as_postgresql_does(
    table: psycopg.Connection[tuple[Any, ...]], expr: str, new: Row, old: Row
) -> None:
    new_text, old_text = store(table, new, old)
    expected, now = server_outcome(table, for_server(expr))
    compiled = compile_or_error(for_listener(expr))
    event(f"PostgreSQL: {expected[0]} {expected[1]}")
    if os.environ.get("PREDICATE_TRACE") and expected[0] == "error":
        print("TRACE", expected, for_server(expr))
    if (
        table.info.server_version < INFINITE_INTERVALS_SINCE
        and expected[0] == "error"
        and expected[1] in MAKE_INFINITE_INTERVALS
        and "infinity" in expr.lower()
    ):
        # 14-16 refuse infinite intervals; listener has 17's (see INFINITE_INTERVALS_SINCE)
        event("an infinite interval before PostgreSQL 17")
        return
    if (
        table.info.server_version < WIDE_INTERVAL_FIELDS_SINCE
        and expected == ("error", INTERVAL_FIELD_OVERFLOW)
        and any(int(n) > INT32_MAX for n in re.findall(r"\d{10,}", expr))
    ):
        # 14 reads an interval's fields as 32-bit integers; listener reads them as 15+ does
        event("an interval field beyond 32 bits before PostgreSQL 15")
        return
    if (
        table.info.server_version < JSONB_NULL_CASTS_SINCE
        and expected == ("error", JSONB_NULL_CAST)
        and "jsonb" in expr
        and re.search(r"::(bool|int|numeric|float|real|double|smallint|bigint)", expr)
        and isinstance(compiled, Predicate)
        and listener_outcome(compiled, new_text, old_text, now)[0] == "value"
    ):
        # 14-17 refuse a jsonb null cast to a scalar type; listener casts it to NULL as 18+ does
        event("a jsonb null cast to a scalar before PostgreSQL 18")
        return
    if isinstance(compiled, PredicateError):
        if compiled.limitation:  # a documented limitation (e.g. a literal listener does not read)
            event("listener declined at load time")
            return
        # otherwise listener refuses only what the server refuses, with the server's SQLSTATE: a type
        # error (42xxx) or a constant that fails when the planner folds it (22xxx)
        event(f"both refused at load time: {compiled.sqlstate}")
        assert expected[0] == "error", f"{expr!r}: listener refused what PostgreSQL evaluates: {compiled}"
        assert compiled.sqlstate == expected[1], f"{expr!r}: {compiled} vs SQLSTATE {expected[1]}"
        return
    got = listener_outcome(compiled, new_text, old_text, now)
    if got == ("error", None):
        # listener declines (a date/time text form it does not read): an error, never a wrong answer
        event("listener declined: input form it does not read")
        return
    assert got == expected, (
        f"{expr!r}\n new={new_text}\n old={old_text}\n listener {got} != PostgreSQL {expected}"
    )


def filter_outcomes(conn: psycopg.Connection[tuple[Any, ...]], sql_filter: str) -> list[Outcome]:
    """The filter as pgoutput evaluates it: the whole expression per row (not as WHERE quals, which the
    planner may reorder), a row being published when the result is true."""
    outcomes: list[Outcome] = []
    for key in (1, 2):
        try:
            with conn.transaction():
                row = conn.execute(f"SELECT ({sql_filter}) IS TRUE FROM t WHERE id = {key}").fetchone()
        except psycopg.Error as exc:
            outcomes.append(("error", exc.sqlstate))
        else:
            assert row is not None
            outcomes.append(("value", row[0]))
    return outcomes


@conformance_settings(FILTER_EXAMPLES)
@given(expr=predicates(), first=rows(), second=rows())
def test_row_filters_are_accepted_and_keep_the_matching_rows(
    table: psycopg.Connection[tuple[Any, ...]], expr: str, first: Row, second: Row
) -> None:
    compiled = compile_or_error(for_listener(expr).replace("old.", "new."))
    if isinstance(compiled, PredicateError):
        return
    sql_filter, reason = compiled.row_filter()
    event("row filter" if sql_filter is not None else "no row filter")
    if sql_filter is None:
        assert reason
        return
    assert "new." not in sql_filter and "old." not in sql_filter
    create = f"CREATE PUBLICATION conformance FOR TABLE t WHERE ({sql_filter}) WITH (publish = 'insert')"
    if table.info.server_version < 150000:
        # 14 has no row filters (listener pushes none down there); the filter's meaning is compared below
        with pytest.raises(psycopg.errors.SyntaxError):
            table.execute(create)
    else:
        table.execute(create)
        table.execute("DROP PUBLICATION conformance")
    rows_text = store(table, first, second)
    expected = filter_outcomes(table, sql_filter)
    got: list[Outcome] = []
    for row in rows_text:
        try:
            got.append(("value", compiled.matches(row, None, datetime.now())))
        except EvaluationError as exc:
            got.append(("error", exc.sqlstate))
    assert got == expected, f"{sql_filter!r}\n rows={rows_text}\n listener {got} != PostgreSQL {expected}"


def test_every_supported_column_type_loads_from_server_text(
    table: psycopg.Connection[tuple[Any, ...]],
) -> None:
    """Sanity check of the harness itself: a fixed row through every column type."""
    row: Row = {
        "i4": "-2147483648", "i8": "9223372036854775807", "n": "-0.000", "f": "-0", "s": "a%_\\é",
        "vc": "abcdefg", "ch": "a", "b": "true", "tz": "2024-02-29 23:59:59.999999+00",
        "ts": "1900-01-01 00:00:00", "d": "2100-12-31", "r": "0.1",
        "iv": "-1 mons 2 days -3 microseconds", "j": '{"a": [1.10, 1e2, {"b": null}], "é": "\\u00e9"}',
    }  # fmt: skip
    new_text, old_text = store(table, row, row)
    expr = " AND ".join(f"new.{c} IS NOT DISTINCT FROM old.{c}" for c in COLUMNS)
    expected, now = server_outcome(table, expr)
    got = listener_outcome(compile_predicate(expr, COLUMN_TYPES), new_text, old_text, now)
    assert got == expected == ("value", True)


# Dates and timestamps PostgreSQL accepts beyond what Python's datetime holds: infinities, BC, years past
# 9999 up to PostgreSQL's limits (4714-11-24 BC to 294276 AD for timestamps, 5874897 AD for dates).
EDGE_ROWS: list[Row] = [
    {"ts": "infinity", "tz": "-infinity", "d": "infinity"},
    {"ts": "-infinity", "tz": "infinity", "d": "-infinity"},
    {"ts": "0044-03-15 12:00:00 BC", "tz": "10000-01-01 00:00:00+00", "d": "0001-01-01 BC"},
    {"ts": "294276-12-31 23:59:59.999999", "tz": "4714-11-24 00:00:00+00 BC", "d": "5874897-12-31"},
    {"ts": "9999-12-31 23:59:59", "tz": "9999-12-31 23:59:59.999999+00", "d": "9999-12-31"},
    {"ts": "0001-01-01 00:00:00", "tz": "0001-01-01 00:00:00+00", "d": "294277-01-01"},
]
EDGE_EXPRESSIONS = [
    "new.ts", "new.tz", "new.d", "new.ts > '2000-01-01'", "new.tz > '2000-01-01'", "new.d > '2000-01-01'",
    "new.d + 1", "new.d - 1", "new.d - 365", "new.d - date '2000-01-01'", "new.d - new.d",
    "new.ts + interval '1 mon'", "new.ts - interval '1 day'", "new.tz + interval '100 years'",
    "new.tz - interval '1 microsecond'", "new.d + interval '1 day'", "new.d::timestamp", "new.d::timestamptz",
    "new.ts::date", "new.tz::date", "new.ts::timestamptz", "new.tz::timestamp", "new.ts - new.tz",
    "new.ts - timestamp '2000-01-01'", "new.d < new.ts", "new.d = new.tz", "new.d > new.tz",
    "new.ts BETWEEN new.d AND new.tz", "date '10000-01-01' + 1", "date '5874897-12-31' - new.d",
    "timestamp '9999-12-31 23:59:59' + interval '1 sec'", "new.d::text", "new.tz::text || 'x'",
    "(new.ts::text)::timestamp", "(new.d::text)::date", "new.ts IN (new.tz, timestamp 'infinity')",
    "date 'infinity' - 1", "timestamptz '-infinity' < new.tz", "'epoch'::date + 1", "new.d + 1 > new.d",
    # interval * / float8: fractions cascade down, infinities, range errors
    "interval '1 mon 3 days 02:00:00' * 0.5", "interval '1 mon 1 day' / 3", "1.5 * interval '7 mons'",
    "interval '1 day' * 'Infinity'", "interval '-1 day' * 'Infinity'", "interval 'infinity' * 0",
    "interval 'infinity' / 'infinity'", "interval '1 day' / 0", "interval '2147483647 days' * 2",
    "interval '1 year' * 1e-7", "interval '-infinity' * -2", "interval '0' * 'Infinity'",
    "interval '1 day' / 'Infinity'", "new.ts + interval '1 mon' * 1.5", "(new.tz - new.ts) * 2",
]  # fmt: skip


# PostgreSQL 17 added infinite intervals; before, what makes one is an error (22007 for the literal, 22008
# for arithmetic), and a timestamp difference beyond the interval range wraps around where 17 raises 22008.
# listener evaluates as 17+ does on every version (README, PostgreSQL versions).
INFINITE_INTERVALS_SINCE = 170000
MAKE_INFINITE_INTERVALS = {"22007", "22008"}
# PostgreSQL 15 reads an interval's text fields as 64-bit integers; 14 reads 32-bit ones and raises 22015
# ("interval field value out of range") beyond them.  listener reads them as 15+ does (README).
WIDE_INTERVAL_FIELDS_SINCE = 150000
INTERVAL_FIELD_OVERFLOW = "22015"
INT32_MAX = 2**31 - 1
# PostgreSQL 18 casts a jsonb null to a scalar type (bool, numeric, the integers, float) as NULL; 14-17
# raise 22023 ("cannot cast jsonb null to type ...").  listener casts as 18+ does (README).
JSONB_NULL_CASTS_SINCE = 180000
JSONB_NULL_CAST = "22023"


def edge_row(values: Row) -> Row:
    return {c: values.get(c) for c in COLUMNS}


@pytest.mark.parametrize("row", EDGE_ROWS, ids=lambda r: str(r["ts"]))
def test_dates_and_timestamps_beyond_python_as_postgresql_has_them(
    table: psycopg.Connection[tuple[Any, ...]], row: Row
) -> None:
    """Each expression's text (or SQLSTATE) as the server gives it, and listener's the same."""
    new_text, old_text = store(table, edge_row(row), edge_row(row))
    differ = []
    for expr in EDGE_EXPRESSIONS:
        text, now = server_outcome(table, f"({expr})::text")
        if text[0] == "value":
            check = f"({expr})::text IS NOT DISTINCT FROM {quote(text[1]) if text[1] is not None else 'NULL'}"
            expected: Outcome = ("value", True)
        else:
            check, expected = f"({expr}) IS NULL", text
        compiled = compile_or_error(check)
        if isinstance(compiled, PredicateError):
            got: Outcome = ("error", compiled.sqlstate)
        else:
            got = listener_outcome(compiled, new_text, old_text, now)
        if got != expected:
            differ.append(f"{expr}: PostgreSQL {text}, listener {got}")
    if table.info.server_version < INFINITE_INTERVALS_SINCE:
        # only where the older server refuses an infinite interval, or wraps around where 17 raises, may
        # listener differ (it has 17's arithmetic)
        differ = [d for d in differ if not _infinite_interval_refused(d)]
    assert not differ, "\n".join(differ)


def _infinite_interval_refused(difference: str) -> bool:
    server, listener = difference.split(": PostgreSQL ", 1)[1].split(", listener ", 1)
    refused = any(f"('error', '{code}')" == server for code in MAKE_INFINITE_INTERVALS)
    return refused or listener == "('error', '22008')"  # 17's range check where the old server wrapped
