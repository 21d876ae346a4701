"""Rule predicates (listener.rules.predicate): PostgreSQL's semantics, compiled once, evaluated without a
server.

Expected values marked "PG" were checked against PostgreSQL 18 (TimeZone UTC); the integration test
tests/integration/test_predicate_conformance.py compares generated expressions with a live server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from listener.rules.predicate import (
    ColumnType,
    EvaluationError,
    MissingValue,
    Predicate,
    PredicateError,
    compile_predicate,
)

COLUMNS: dict[str, ColumnType] = {
    c.name: c
    for c in (
        ColumnType("id", 23, "integer"),
        ColumnType("status", 25, "text"),
        ColumnType("name", 25, "text"),
        ColumnType("amount", 1700, "numeric(10,2)"),
        ColumnType("big", 20, "bigint"),
        ColumnType("small", 21, "smallint"),
        ColumnType("ratio", 701, "double precision"),
        ColumnType("weight", 700, "real"),
        ColumnType("ok", 16, "boolean"),
        ColumnType("data", 3802, "jsonb"),
        ColumnType("payload", 114, "json"),
        ColumnType("created_at", 1184, "timestamp with time zone"),
        ColumnType("local_ts", 1114, "timestamp without time zone"),
        ColumnType("day", 1082, "date"),
        ColumnType("ttl", 1186, "interval"),
        ColumnType("uid", 2950, "uuid"),
        ColumnType("code", 1043, "character varying(5)"),
        ColumnType("flag", 1042, "character(3)"),
        ColumnType("mood", 16500, "mood", "E"),
        ColumnType("raw", 17, "bytea"),
        ColumnType("tags", 1009, "text[]", "A"),
        ColumnType("address", 16600, "address", "C"),
    )
}
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
Row = dict[str, Any]


def compile_(text: str, collation: str = "C") -> Predicate:
    return compile_predicate(text, COLUMNS, collation=collation)


def evaluate(text: str, new: Row | None = None, old: Row | None = None, now: datetime = NOW) -> bool | None:
    return compile_(text).evaluate(new, old, now)


def refused(text: str, collation: str = "C") -> PredicateError:
    with pytest.raises(PredicateError) as info:
        compile_(text, collation)
    return info.value


def failure(text: str, new: Row | None = None) -> EvaluationError:
    predicate = compile_(text)
    with pytest.raises(EvaluationError) as info:
        predicate.evaluate(new, None, NOW)
    return info.value


# ------------------------------------------------------------------------------------ three-valued logic

T, F, N = "true", "false", None
TRUTH = {T: True, F: False, N: None}


@pytest.mark.parametrize("a", [T, F, N])
@pytest.mark.parametrize("b", [T, F, N])
def test_and_or_not_follow_sql_three_valued_logic(a: str | None, b: str | None) -> None:
    av, bv = TRUTH[a], TRUTH[b]
    expect_and = False if False in (av, bv) else (None if None in (av, bv) else True)
    expect_or = True if True in (av, bv) else (None if None in (av, bv) else False)
    row = {"ok": a}
    old = {"ok": b}
    assert evaluate("new.ok AND old.ok", row, old) is expect_and
    assert evaluate("new.ok OR old.ok", row, old) is expect_or
    assert evaluate("NOT new.ok", row) is (None if av is None else not av)
    assert evaluate("new.ok IS TRUE", row) is (av is True)
    assert evaluate("new.ok IS NOT FALSE", row) is (av is not False)
    assert evaluate("new.ok IS UNKNOWN", row) is (av is None)


def test_and_stops_at_the_first_false_and_or_at_the_first_true() -> None:
    # the second operand would fail: PostgreSQL evaluates AND/OR left to right and stops
    assert evaluate("new.id > 5 AND new.id / 0 = 1", {"id": "1"}) is False
    assert evaluate("new.id < 5 OR new.id / 0 = 1", {"id": "1"}) is True
    assert failure("new.id < 5 AND new.id / 0 = 1", {"id": "1"}).sqlstate == "22012"


def test_a_strict_operator_evaluates_both_sides_before_looking_for_null() -> None:
    # PG: NULL = (1 / 0) fails: the arguments of = are evaluated first
    assert failure("new.small = new.id / 0", {"small": None, "id": "1"}).sqlstate == "22012"


# ----------------------------------------------------------------------------------- supported constructs

CASES: list[tuple[str, Row, bool | None]] = [
    # comparisons, unknown literals taking the column's type (PG)
    ("new.status = 'signed'", {"status": "signed"}, True),
    ("new.status <> 'signed'", {"status": "signed"}, False),
    ("new.status != 'x'", {"status": None}, None),
    ("new.amount > '10.5'", {"amount": "10.50"}, False),
    ("new.amount >= '10.5'", {"amount": "10.50"}, True),
    ("new.amount = 10.5", {"amount": "10.50"}, True),
    ("new.id < 2.5", {"id": "2"}, True),
    ("new.big = 9007199254740993", {"big": "9007199254740993"}, True),
    ("new.big = 9007199254740992::float8", {"big": "9007199254740993"}, True),  # int8 -> float8 (PG)
    ("new.ratio = 0.1", {"ratio": "0.1"}, True),
    ("new.ratio = 'NaN'", {"ratio": "NaN"}, True),  # NaN equals NaN in PG
    ("new.ratio > 'Infinity'", {"ratio": "NaN"}, True),  # and sorts above everything
    ("new.ratio = 0", {"ratio": "-0"}, True),
    ("new.weight = 0.1", {"weight": "0.1"}, False),  # the float4 nearest 0.1 is not the float8 one (PG)
    ("new.weight = 0.1::float4", {"weight": "0.1"}, True),
    ("new.weight IN (0.1, 0.2)", {"weight": "0.1"}, True),  # the IN list's common type is real (PG)
    ("new.weight::text = '1.6777216e+07'", {"weight": "16777217"}, True),  # float4out (PG)
    ("(new.weight * 3)::text = '0.30000000447034836'", {"weight": "0.1"}, True),  # real * int is float8 (PG)
    ("new.amount = 'NaN'::numeric", {"amount": None}, None),
    ("new.ok = 't'", {"ok": "t"}, True),
    ("new.ok", {"ok": "t"}, True),
    ("new.code = 'abcdef'", {"code": "abc"}, False),
    ("new.flag = 'ab  '", {"flag": "ab "}, True),  # character(n): trailing spaces do not count (PG)
    ("length(new.flag) = 2", {"flag": "ab "}, True),
    (
        "new.uid = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
        {"uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
        True,
    ),
    ("new.uid = '{a0eebc999c0b4ef8bb6d6bb9bd380a11}'", {"uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}, True),
    ("new.mood = 'happy'", {"mood": "happy"}, True),
    ("new.mood IN ('sad', 'ok')", {"mood": "happy"}, False),
    ("status = 'x'", {"status": "x"}, True),  # a bare column is new.<column>
    # IS [NOT] DISTINCT FROM
    ("new.status IS DISTINCT FROM NULL", {"status": None}, False),
    ("new.status IS DISTINCT FROM 'a'", {"status": None}, True),
    ("new.status IS NOT DISTINCT FROM 'a'", {"status": "a"}, True),
    ("new.ratio IS NOT DISTINCT FROM 'NaN'", {"ratio": "NaN"}, True),
    # IS NULL works on any column type, supported or not
    ("new.raw IS NOT NULL AND new.tags IS NULL", {"raw": "\\x00", "tags": None}, True),
    # IN, NOT IN (NULL in the list: never false)
    ("new.id IN (1, 2, 3)", {"id": "2"}, True),
    ("new.id IN (1, 3)", {"id": "2"}, False),
    ("new.id NOT IN (1, NULL)", {"id": "2"}, None),
    ("new.id NOT IN (1, NULL)", {"id": "1"}, False),
    ("new.id IN (new.small, 7)", {"id": "7", "small": None}, True),
    ("new.status IN ('a', 'b')", {"status": None}, None),
    ("'a' IN ('a', 'b')", {}, True),
    # BETWEEN
    ("new.id BETWEEN 1 AND 3", {"id": "3"}, True),
    ("new.id NOT BETWEEN 1 AND 3", {"id": "4"}, True),
    ("new.id BETWEEN 3 AND 1", {"id": "2"}, False),
    ("new.id BETWEEN SYMMETRIC 3 AND 1", {"id": "2"}, True),
    # casts
    ("new.status::int4 = 42", {"status": " 42 "}, True),
    ("new.status::int4 = 31", {"status": "0x1F"}, True),  # PG 16+ integer input
    ("new.status::int4 = 1000", {"status": "1_000"}, True),
    ("CAST(new.amount AS integer) = 11", {"amount": "10.50"}, True),  # numeric -> int rounds half away
    ("new.ratio::int4 = 2", {"ratio": "2.5"}, True),  # float -> int rounds half to even (rint)
    ("new.amount::numeric(3,0) = 11", {"amount": "10.50"}, True),
    ("new.ratio::numeric = 0.333333333333333", {"ratio": "0.3333333333333333"}, True),  # %.15g (PG)
    ("new.ok::int4 = 1", {"ok": "t"}, True),
    ("new.ok::text = 'true'", {"ok": "t"}, True),
    ("new.status::bool", {"status": "yes"}, True),
    ("new.status::bool IS FALSE", {"status": " OF "}, True),
    ("new.code::varchar(2) = 'ab'", {"code": "abc"}, True),
    ("new.day::timestamptz = '2024-01-31 00:00:00+00'", {"day": "2024-01-31"}, True),
    ("new.created_at::date = '2024-01-31'", {"created_at": "2024-01-31 23:30:00-01"}, False),  # UTC date (PG)
    ("new.local_ts::timestamptz = '2024-01-31 10:00:00+00'", {"local_ts": "2024-01-31 10:00:00"}, True),
    ("new.raw::text = '\\x0001'", {"raw": "\\x0001"}, True),
    ("new.tags::text = '{a,b}'", {"tags": "{a,b}"}, True),
    ("new.mood::text = 'happy'", {"mood": "happy"}, True),
    (
        "new.uid::text = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        {"uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
        True,
    ),
    ("(new.data -> 'n')::numeric = 1.1", {"data": '{"n": 1.10}'}, True),
    ("(new.data -> 'n')::int4 = 2", {"data": '{"n": 1.5}'}, True),
    ("(new.data -> 'n')::int4 IS NULL", {"data": '{"n": null}'}, True),
    ("(new.data -> 'b')::bool", {"data": '{"b": true}'}, True),
    ("new.payload::jsonb ->> 'a' = '1'", {"payload": '{"a": 1}'}, True),
    # arithmetic
    ("new.id / 2 = 3", {"id": "7"}, True),  # integer division truncates
    ("new.id / 2 = -3", {"id": "-7"}, True),
    ("new.id % 3 = -1", {"id": "-7"}, True),  # the remainder takes the dividend's sign
    ("new.id % -3 = 1", {"id": "7"}, True),
    ("new.small + 1 = 32767", {"small": "32766"}, True),
    ("new.id + new.big = 3", {"id": "1", "big": "2"}, True),
    ("new.id * 1.5 = 3.0", {"id": "2"}, True),
    ("-new.id = 5", {"id": "-5"}, True),
    ("new.ratio / 4 = 0.625", {"ratio": "2.5"}, True),
    ("new.ratio * 2 = 'Infinity'", {"ratio": "Infinity"}, True),
    ("new.amount + 0.005 = 10.505", {"amount": "10.50"}, True),
    ("new.day + 1 = '2024-03-01'", {"day": "2024-02-29"}, True),
    ("new.day - 1 = '2024-02-28'", {"day": "2024-02-29"}, True),
    ("new.day - '2024-01-01' = 59", {"day": "2024-02-29"}, True),
    # || (NULL propagates; a non-text side is printed by its output function)
    ("new.status || '!' = 'a!'", {"status": "a"}, True),
    ("new.status || '!' IS NULL", {"status": None}, True),
    ("'#' || new.id = '#42'", {"id": "42"}, True),
    ("new.status || new.ok = 'atrue'", {"status": "a", "ok": "t"}, True),  # $1 || $2::text (PG)
    ("new.status || new.amount = 'a10.50'", {"status": "a", "amount": "10.50"}, True),
    ("new.status || new.ratio = 'a1e+20'", {"status": "a", "ratio": "1e+20"}, True),
    (
        "new.status || new.created_at = 'a2024-01-01 08:00:00.5+00'",
        {"status": "a", "created_at": "2024-01-01 10:00:00.5+02"},
        True,
    ),
    (
        'new.status || new.data = \'a{"a": [1, 2], "b": 1}\'',
        {"status": "a", "data": '{"b":1, "a": [1,2]}'},
        True,
    ),
    ('new.data || \'{"b": 2}\' = \'{"a": 1, "b": 2}\'', {"data": '{"a": 1}'}, True),
    # COALESCE, NULLIF, CASE
    ("COALESCE(new.status, new.name, 'none') = 'none'", {"status": None, "name": None}, True),
    ("COALESCE(new.id, 2.5) = 2.5", {"id": None}, True),  # common type numeric
    ("NULLIF(new.id, 2) IS NULL", {"id": "2"}, True),
    ("NULLIF(new.status, '') IS NULL", {"status": ""}, True),
    ("CASE WHEN new.id > 1 THEN 'big' ELSE 'small' END = 'big'", {"id": "2"}, True),
    ("CASE new.status WHEN 'a' THEN 1 WHEN 'b' THEN 2 END = 2", {"status": "b"}, True),
    ("CASE new.status WHEN 'a' THEN true END", {"status": "z"}, None),
    ("CASE WHEN new.id = 0 THEN false ELSE 10 / new.id > 1 END", {"id": "0"}, False),  # lazy
    # functions
    ("lower(new.status) = 'abc'", {"status": "AbC"}, True),
    ("upper(new.status) = 'ÉA'", {"status": "éa"}, False),  # "C" ctype folds ASCII only (PG: 'éA')
    ("upper(new.status) = 'éA'", {"status": "éa"}, True),
    ("length(new.status) = 2 AND char_length(new.status) = 2", {"status": "é😀"}, True),
    ("btrim(new.status) = 'a'", {"status": "  a  "}, True),
    ("trim(both 'x' from new.status) = 'a'", {"status": "xxaxx"}, True),
    ("ltrim(new.status, 'x') = 'ax'", {"status": "xxax"}, True),
    ("rtrim(new.status) = ' a'", {"status": " a  "}, True),
    # text collation: explicit COLLATE "C" orders by code point
    ("new.status COLLATE \"C\" < 'b'", {"status": "B"}, True),
    # jsonb
    ("new.data ->> 'a' = '1.10'", {"data": '{"a": 1.10}'}, True),  # numeric keeps its scale (PG)
    ("new.data ->> 'a' = '100'", {"data": '{"a": 100}'}, True),
    ("new.data -> 'a' = '1.1'", {"data": '{"a": 1.10}'}, True),  # jsonb numbers compare by value
    ("new.data -> 'a' = 'true'", {"data": '{"a": 1}'}, False),
    ("new.data -> 'a' -> 'b' ->> 0 = 'x'", {"data": '{"a": {"b": ["x"]}}'}, True),
    ("new.data -> -1 = '3'", {"data": "[1, 2, 3]"}, True),
    ("new.data -> -4 IS NULL", {"data": "[1, 2, 3]"}, True),
    ("new.data -> 0 = '\"x\"'", {"data": '"x"'}, True),  # a scalar is a one-element array (PG)
    ("new.data -> 'a' IS NULL", {"data": "[1]"}, True),
    ("new.data ->> 'a' IS NULL", {"data": '{"a": null}'}, True),
    ("new.data -> 'a' IS NOT NULL", {"data": '{"a": null}'}, True),  # JSON null is not SQL NULL
    (
        "new.data ->> 'o' = '{\"a\": 1, \"bb\": [true, null]}'",
        {"data": '{"o": {"bb": [true, null], "a": 1}}'},
        True,
    ),
    ('new.data @> \'{"tags": ["x"]}\'', {"data": '{"tags": ["x", "y"], "n": 1}'}, True),
    ("new.data @> '{\"a\": 1}'", {"data": '{"a": [1, 2]}'}, False),
    ("new.data @> '1'", {"data": "[1, 2]"}, True),  # an array contains a scalar (PG)
    ("new.data @> '[1]'", {"data": "1"}, False),  # a scalar contains no array
    ("new.data @> '[[3]]'", {"data": "[1, [2, 3]]"}, True),
    ("'{\"a\": 1}' <@ new.data", {"data": '{"a": 1, "b": 2}'}, True),
    ("new.data ? 'tags'", {"data": '{"tags": []}'}, True),
    ("new.data ? 'x'", {"data": '["x", 1]'}, True),
    ("new.data ? '1'", {"data": '["x", 1]'}, False),
    ("new.data ? 'foo'", {"data": '"foo"'}, True),
    ('new.data = \'{"b": 2, "a": 1}\'', {"data": '{"a": 1, "b": 2}'}, True),
    # time: now() is the evaluation's commit time; timestamptz +/- interval with calendar months
    ("new.created_at > now() - interval '7 days'", {"created_at": "2024-05-30 00:00:00+00"}, True),
    ("new.created_at > now() - interval '1 day'", {"created_at": "2024-05-30 00:00:00+00"}, False),
    ("new.created_at > '2024-01-01'", {"created_at": "2024-01-01 00:00:00.000001+00"}, True),
    ("new.created_at = '2024-01-01 02:00:00+02'", {"created_at": "2024-01-01 00:00:00+00"}, True),
    ("new.created_at + interval '1 mon' = '2024-02-29'", {"created_at": "2024-01-31 00:00:00+00"}, True),
    ("new.created_at + '1 mon' = '2024-02-29'", {"created_at": "2024-01-31 00:00:00+00"}, True),
    ("new.local_ts - interval '1 year 1 mon' = '2023-01-29'", {"local_ts": "2024-02-29 00:00:00"}, True),
    ("new.local_ts + interval '1.5 days' = '2024-01-02 12:00'", {"local_ts": "2024-01-01 00:00:00"}, True),
    ("(new.local_ts - '2024-01-01')::text = '1 day 01:00:00'", {"local_ts": "2024-01-02 01:00:00"}, True),
    ("new.day + interval '1 hour' = '2024-01-01 01:00'", {"day": "2024-01-01"}, True),
    ("new.ttl > interval '29 days'", {"ttl": "1 mon"}, True),  # a month compares as 30 days
    ("new.ttl = interval '30 days'", {"ttl": "1 mon"}, True),
    (
        "new.ttl::text = '1 year 2 mons -3 days +04:05:06.5'",
        {"ttl": "1 year 2 mons -3 days +04:05:06.5"},
        True,
    ),
    ("(-new.ttl)::text = '-1 days +02:00:00'", {"ttl": "1 day -02:00:00"}, True),
    ("new.created_at < current_timestamp", {"created_at": "2024-06-01 11:59:59+00"}, True),
    ("new.day = current_date", {"day": "2024-06-01"}, True),
    ("new.local_ts < localtimestamp", {"local_ts": "2024-06-01 11:00:00"}, True),
    ("new.day < new.created_at", {"day": "2024-06-01", "created_at": "2024-06-01 00:00:01+00"}, True),
]


@pytest.mark.parametrize(("text", "new", "expected"), CASES, ids=[c[0] for c in CASES])
def test_supported_construct(text: str, new: Row, expected: bool | None) -> None:
    assert evaluate(text, new) is expected


@pytest.mark.parametrize(
    ("numerator", "denominator", "quotient"),
    [  # numeric / numeric: the result scale is select_div_scale's, not Python's 28 digits (PG)
        ("1.10", "3", "0.36666666666666666667"),
        ("1", "3", "0.33333333333333333333"),
        ("10", "4", "2.5000000000000000"),
        ("1234567.89", "0.003", "411522630.00000000"),
        ("0", "3", "0.00000000000000000000"),
        ("1", "7", "0.14285714285714285714"),
        ("100000", "3", "33333.333333333333"),
        ("1", "100000", "0.000010000000000000000000"),
        ("123456789", "0.0001", "1234567890000.00000000"),
        ("-7.5", "2", "-3.7500000000000000"),
        ("0.5", "3", "0.16666666666666666667"),
        ("0.00000000000000000001", "3", "0.0000000000000000000033333333333333333333"),
        ("2", "3", "0.66666666666666666667"),  # rounded half away from zero
        ("NaN", "0", "NaN"),
        ("5", "Infinity", "0"),
    ],
)
def test_numeric_division_has_postgresql_result_scale(
    numerator: str, denominator: str, quotient: str
) -> None:
    text = f"(new.status::numeric / new.name::numeric)::text = '{quotient}'"
    assert evaluate(text, {"status": numerator, "name": denominator}) is True


def test_numeric_arithmetic_is_exact_and_keeps_scales() -> None:
    # PG: 0.1 + 0.2 = 0.3 exactly; products keep the sum of scales; no 28-digit context rounding
    assert evaluate("(0.1 + new.amount)::text = '0.30'", {"amount": "0.20"}) is True
    assert evaluate("(new.amount * new.amount)::text = '1.5625'", {"amount": "1.25"}) is True
    big = "123456789012345678901234567890.123456789"
    times_ten = "1234567890123456789012345678901.234567890"
    assert evaluate(f"(new.status::numeric * 10)::text = '{times_ten}'", {"status": big}) is True
    plus_one = "123456789012345678901234567891.123456789"
    assert evaluate(f"(new.status::numeric + 1)::text = '{plus_one}'", {"status": big}) is True


@pytest.mark.parametrize(
    ("text", "new", "sqlstate", "message"),
    [
        ("new.id + 1 > 0", {"id": "2147483647"}, "22003", "integer out of range"),
        ("-new.id > 0", {"id": "-2147483648"}, "22003", "integer out of range"),
        ("new.id / -1 > 0", {"id": "-2147483648"}, "22003", "integer out of range"),
        ("new.small * new.small > 0", {"small": "200"}, "22003", "smallint out of range"),
        ("new.small * 2 = 40000", {"small": "20000"}, None, ""),  # int2 * int4 is int4 (PG)
        ("new.big * 2 > 0", {"big": "9223372036854775807"}, "22003", "bigint out of range"),
        ("new.id / 0 = 1", {"id": "1"}, "22012", "division by zero"),
        ("new.id % 0 = 1", {"id": "1"}, "22012", "division by zero"),
        ("new.amount / 0 = 1", {"amount": "1"}, "22012", "division by zero"),
        ("new.ratio / 0 = 1", {"ratio": "1"}, "22012", "division by zero"),
        ("new.ratio * 1e308 > 0", {"ratio": "10"}, "22003", "value out of range: overflow"),
        ("new.big::int4 > 0", {"big": "2147483648"}, "22003", "integer out of range"),
        ("new.amount::numeric(3,1) > 0", {"amount": "123.45"}, "22003", "numeric field overflow"),
        ("new.status::int4 > 0", {"status": "12x"}, "22P02", 'invalid input syntax for type integer: "12x"'),
        ("new.status::int4 > 0", {"status": "2147483648"}, "22003", "out of range for type integer"),
        ("new.status::numeric > 0", {"status": "1.2.3"}, "22P02", "invalid input syntax for type numeric"),
        ("new.status::bool", {"status": "o"}, "22P02", "invalid input syntax for type boolean"),
        ("new.status::jsonb ? 'a'", {"status": "{"}, "22P02", "invalid input syntax for type json"),
        (
            "(new.data -> 'a')::int4 > 0",
            {"data": '{"a": "1"}'},
            "22023",
            "cannot cast jsonb string to type integer",
        ),
        ("new.ratio::int4 > 0", {"ratio": "NaN"}, "22003", "integer out of range"),
        ("(new.status::numeric)::int4 > 0", {"status": "NaN"}, "0A000", "cannot convert NaN to integer"),
    ],
)
def test_evaluation_errors_are_postgresqls(text: str, new: Row, sqlstate: str | None, message: str) -> None:
    if sqlstate is None:
        assert evaluate(text, new) is True
        return
    error = failure(text, new)
    assert error.sqlstate == sqlstate
    assert message in str(error)


# ------------------------------------------------------------------------------------------------ LIKE


@pytest.mark.parametrize(
    ("value", "pattern", "expected"),
    [  # PG
        ("abc", "a_c", True),
        ("abc", "a%", True),
        ("abc", "%b%", True),
        ("abc", "b%", False),
        ("a%c", "a\\%c", True),
        ("abc", "a\\%c", False),
        ("a_c", "a\\_c", True),
        ("abc", "a\\_c", False),
        ("a\\c", "a\\\\c", True),
        ("ab", "a\\b", True),  # an escaped ordinary character matches itself
        ("é😀", "__", True),  # _ is one character, not one byte
        ("a\nb", "a_b", True),
        ("ab", "x\\", False),  # a trailing escape is an error only when matching reaches it
    ],
)
def test_like_with_default_backslash_escape(value: str, pattern: str, expected: bool) -> None:
    literal = pattern.replace("'", "''")
    assert evaluate(f"new.status LIKE '{literal}'", {"status": value}) is expected
    assert evaluate(f"new.status NOT LIKE '{literal}'", {"status": value}) is (not expected)


@pytest.mark.parametrize(
    ("value", "pattern", "escape", "expected"),
    [  # PG
        ("ab", "a!b", "!", True),
        ("a!b", "a!!b", "!", True),
        ("a%", "a!%", "!", True),
        ("ab", "a!%", "!", False),
        ("a\\b", "a\\b", "!", True),  # with another escape character, backslash is ordinary
        ("a_b", "a\\_b", "", False),  # ESCAPE '' turns escaping off
        ("a\\xb", "a\\_b", "", True),
    ],
)
def test_like_with_escape_clause(value: str, pattern: str, escape: str, expected: bool) -> None:
    assert evaluate(f"new.status LIKE '{pattern}' ESCAPE '{escape}'", {"status": value}) is expected


def test_like_errors_like_postgresql() -> None:
    assert failure("new.status LIKE 'ab\\'", {"status": "abc"}).sqlstate == "22025"  # pattern ends in escape
    assert failure("new.status LIKE new.name ESCAPE 'xy'", {"status": "a", "name": "a"}).sqlstate == "22025"
    assert refused("new.status LIKE 'a' ESCAPE 'xy'").sqlstate == "22025"  # constant: fails at plan time
    assert evaluate("new.status LIKE new.name", {"status": "a%b", "name": "a\\%%"}) is True


def test_ilike_folds_ascii_under_the_c_collation() -> None:
    assert evaluate("new.status ILIKE 'a%C'", {"status": "AbC"}) is True
    assert evaluate("new.status ILIKE 'é'", {"status": "É"}) is False  # PG with "C": ASCII only
    assert evaluate("new.status NOT ILIKE 'A_C'", {"status": "abc"}) is False


# ---------------------------------------------------------------------------------------- loading values


def test_values_are_server_text_as_bytes_or_str() -> None:
    predicate = compile_("new.amount > 10 AND new.created_at < '2025-01-01'")
    for row in ({"amount": b"10.01", "created_at": b"2024-01-01 00:00:00+00"},
                {"amount": "10.01", "created_at": "2024-01-01 00:00:00+00"}):  # fmt: skip
        assert predicate.evaluate(row, None, NOW) is True
        assert predicate.matches(row, None, NOW) is True


def test_a_missing_side_reads_as_null_and_a_missing_column_raises() -> None:
    predicate = compile_("old.status IS DISTINCT FROM 'paid' AND new.status = 'paid'")
    assert predicate.evaluate({"status": "paid"}, None, NOW) is True  # an insert: no old row
    assert predicate.evaluate(None, {"status": "draft"}, NOW) is None  # a delete: no new row
    with pytest.raises(MissingValue) as info:  # an unchanged TOAST value: the caller decides
        predicate.evaluate({"id": "1"}, {"status": "x"}, NOW)
    assert (info.value.side, info.value.column) == ("new", "status")
    assert isinstance(info.value, KeyError)


def test_only_referenced_columns_are_loaded() -> None:
    # a garbage value in an unreferenced column is never read
    assert evaluate("new.id = 1", {"id": "1", "amount": "not a number"}) is True


def test_matches_is_true_only_for_true() -> None:
    predicate = compile_("new.status = 'x'")
    assert predicate.matches({"status": "x"}, None, NOW) is True
    assert predicate.matches({"status": "y"}, None, NOW) is False
    assert predicate.matches({"status": None}, None, NOW) is False


def test_now_is_the_argument_not_the_clock() -> None:
    predicate = compile_("new.created_at > now() - interval '1 hour'")
    row = {"created_at": "2024-06-01 11:30:00+00"}
    assert predicate.uses_now
    assert predicate.evaluate(row, None, NOW) is True
    assert predicate.evaluate(row, None, NOW + timedelta(hours=1)) is False
    naive = datetime(2024, 6, 1, 12, 0)  # naive means UTC
    assert predicate.evaluate(row, None, naive) is True
    assert not compile_("new.id = 1").uses_now


def test_references_name_every_column_read() -> None:
    predicate = compile_("new.status = 'a' AND old.status <> 'a' OR amount > 1 OR new.raw IS NULL")
    assert predicate.references == frozenset(
        {("new", "status"), ("old", "status"), ("new", "amount"), ("new", "raw")}
    )


@pytest.mark.parametrize(
    ("text", "new", "expected"),
    [
        ("new.day > '2024-01-01'", {"day": "infinity"}, True),
        ("new.day < '2024-01-01'", {"day": "-infinity"}, True),
        ("new.created_at > '2000-01-01'", {"created_at": "infinity"}, True),
        ("new.local_ts < '0001-01-01'", {"local_ts": "0044-03-15 12:00:00 BC"}, True),
        ("new.local_ts > '9999-12-31'", {"local_ts": "10000-01-01 00:00:00"}, True),
        ("new.day + 1 = '10000-01-01'", {"day": "9999-12-31"}, True),
        ("(new.day + 1)::text = '10000-01-01'", {"day": "9999-12-31"}, True),
        ("(new.day - 1)::text = '0001-12-31 BC'", {"day": "0001-01-01"}, True),
        ("new.day + 1 = 'infinity'", {"day": "infinity"}, True),
        ("new.local_ts + interval '9000 years' > now()::timestamp", {"local_ts": "2024-01-01"}, True),
        ("(new.created_at + interval '1 mon')::text = '0044-04-15 00:00:00+00 BC'",
         {"created_at": "0044-03-15 00:00:00+00 BC"}, True),
        ("new.day::timestamp = 'infinity'", {"day": "infinity"}, True),
        ("new.local_ts::date = '-infinity'", {"local_ts": "-infinity"}, True),
        ("new.day > new.local_ts", {"day": "5874897-12-31", "local_ts": "294276-12-31 23:59:59"}, True),
    ],
)  # fmt: skip
def test_dates_beyond_pythons_range_as_postgresql_has_them(text: str, new: Row, expected: bool) -> None:
    assert evaluate(text, new) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(new.ttl * 2)::text = '2 mons 6 days 04:00:00'", True),  # ttl = 1 mon 3 days 02:00:00
        ("(new.ttl * 0.5)::text = '16 days 13:00:00'", True),  # half a month cascades into 15 days
        ("(1.5 * new.ttl)::text = '1 mon 19 days 15:00:00'", True),
        ("(new.ttl / 4)::text = '8 days 06:30:00'", True),
        ("new.ttl * 'Infinity' = 'infinity'", True),
        ("new.ttl / 'Infinity' = '0'", True),
    ],
)
def test_interval_times_and_divided_by_a_number_as_postgresql(text: str, expected: bool) -> None:
    assert evaluate(text, {"ttl": "1 mon 3 days 02:00:00"}) is expected


@pytest.mark.parametrize(
    ("text", "new", "sqlstate"),
    [
        ("new.day + 1 > '2000-01-01'", {"day": "5874897-12-31"}, "22008"),  # date out of range
        ("new.day - new.day = 0", {"day": "infinity"}, "22008"),  # cannot subtract infinite dates
        ("new.local_ts + interval '1 day' > now()", {"local_ts": "294276-12-31 00:00:00"}, "22008"),
        ("new.day::timestamp > now()", {"day": "300000-01-01"}, "22008"),  # date out of range for timestamp
        ("new.local_ts - new.local_ts > interval '1 day'", {"local_ts": "infinity"}, "22008"),
    ],
)
def test_dates_beyond_the_range_fail_as_in_postgresql(text: str, new: Row, sqlstate: str) -> None:
    assert failure(text, new).sqlstate == sqlstate


# ------------------------------------------------------------------------------- load-time errors: refusals


def assert_names(error: PredicateError, fragment: str, fix: str) -> None:
    assert error.fragment is not None and fragment in error.fragment, error.fragment
    assert fragment in str(error)
    assert error.hint is not None and fix in error.hint, error.hint
    assert f"fix: {error.hint}" in str(error)


def test_unknown_column_names_it_and_suggests_the_closest() -> None:
    error = refused("new.stauts = 'paid'")
    assert_names(error, "new.stauts", "did you mean new.status?")
    assert '"stauts"' in str(error) and error.position == 0


def test_unknown_column_without_a_close_match_lists_the_columns() -> None:
    error = refused("new.id = 1 AND old.zzz = 2")
    assert_names(error, "old.zzz", "amount")
    assert error.position == 15


def test_unknown_qualifier_is_refused() -> None:
    assert_names(refused("orders.status = 'x'"), "orders.status", "new.status or old.status")


def test_literal_that_does_not_fit_the_column_type() -> None:
    error = refused("new.id = 'abc'")
    assert_names(error, "'abc'", "e.g. 42")
    assert error.position == 9
    assert error.sqlstate == "22P02"
    assert_names(refused("new.created_at > 'yesterday'"), "'yesterday'", "2024-01-31 12:00:00+00")


def test_type_mismatch_names_the_operator_and_types() -> None:
    error = refused("new.name > 5")
    assert_names(error, "new.name > 5", "cast one side")
    assert "text > integer" in str(error)
    error = refused("new.data ->> 1 + 'x'")  # ->> binds looser: 1 + 'x' reads 'x' as an integer (PG)
    assert_names(error, "'x'", "e.g. 42")
    error = refused("(new.data ->> 'n') > 5")
    assert "text > integer" in str(error)
    assert_names(refused("new.uid = new.id"), "new.uid = new.id", "cast")


def test_the_result_must_be_boolean() -> None:
    error = refused("new.status")
    assert_names(error, "new.status", "new.status = 'value'")
    assert "boolean" in str(error) and "text" in str(error)
    assert_names(refused("new.id + 1"), "new.id + 1", "new.id + 1 = 42")
    assert_names(refused("new.ok AND new.id"), "new.id", "new.id = 42")


def test_comparing_with_null_is_refused() -> None:
    assert_names(refused("new.status = NULL"), "new.status = NULL", "IS NULL")
    assert_names(refused("new.status LIKE NULL"), "new.status LIKE NULL", "IS NULL")


def test_subquery_is_refused() -> None:
    assert_names(refused("new.id IN (SELECT id FROM users)"), "SELECT id FROM users", "changed row")
    assert_names(refused("EXISTS (SELECT 1)"), "EXISTS", "changed row")


def test_unsupported_function_is_refused_with_the_supported_list() -> None:
    error = refused("md5(new.status) = 'x'")
    assert_names(error, "md5(new.status)", "lower, upper")
    assert error.position == 0
    assert_names(refused("random() < 0.5"), "random()", "now()")
    assert_names(refused("lower(new.status, 2) = 'x'"), "lower(new.status, 2)", "supported functions")


def test_aggregate_and_window_functions_are_refused() -> None:
    assert_names(refused("count(*) > 1"), "count(*)", "one changed row")
    assert_names(refused("sum(new.id) > 1"), "sum(new.id)", "one changed row")
    assert_names(refused("rank() OVER () = 1"), "rank() OVER ()", "one row")


def test_ordering_text_under_a_non_c_collation_is_refused() -> None:
    error = refused("new.status > 'b'", collation="en_US.UTF-8")
    assert_names(error, "new.status > 'b'", 'COLLATE "C"')
    assert "en_US.UTF-8" in str(error)
    assert_names(
        refused("new.status BETWEEN 'a' AND 'b'", collation="en_US.UTF-8"), "new.status", 'COLLATE "C"'
    )
    # equality is the same under every deterministic collation; an explicit COLLATE "C" is exact
    assert compile_("new.status = 'b'", collation="en_US.UTF-8").evaluate({"status": "b"}, None, NOW)
    ordered = compile_("new.status COLLATE \"C\" > 'b'", collation="en_US.UTF-8")
    assert ordered.evaluate({"status": "c"}, None, NOW) is True
    assert_names(refused("new.status COLLATE \"en_US\" > 'b'"), 'COLLATE "en_US"', 'COLLATE "C"')


def test_case_folding_under_a_non_c_collation_is_refused() -> None:
    assert_names(
        refused("lower(new.status) = 'a'", collation="en_US.UTF-8"), "lower(new.status)", 'COLLATE "C"'
    )
    assert_names(refused("new.status ILIKE 'a'", collation="de_DE.UTF-8"), "ILIKE", 'COLLATE "C"')
    assert compile_("lower(new.status COLLATE \"C\") = 'a'", collation="en_US.UTF-8")


def test_parse_error_gives_the_position() -> None:
    error = refused("new.status = = 'x'")
    assert error.position == 13
    assert "syntax error" in str(error) and "^" in str(error)
    assert error.hint is not None and "one SQL boolean expression" in error.hint
    error = refused("new.status = 'é' AND AND")
    assert error.position == 21  # characters, not bytes


def test_statements_and_clauses_are_refused() -> None:
    for text in ("true; DROP TABLE users", "new.ok FROM users", "true UNION SELECT true", "new.ok AS x"):
        error = refused(text)
        assert "one expression, not a statement or a query" in str(error)
        assert error.hint is not None and "write only the condition" in error.hint
    assert_names(refused("true; DROP TABLE users"), "DROP TABLE", "remove semicolons")
    assert refused("   ").hint == "write a condition, e.g. new.status = 'paid'"


def test_a_constant_that_always_fails_is_refused_at_load() -> None:
    error = refused("new.id > 1 / 0")
    assert_names(error, "1 / 0", "constant")
    assert error.sqlstate == "22012"
    assert refused("new.id = 2147483647 + 1").sqlstate == "22003"
    # ... unless the planner never folds it (PG: constant FALSE ends an AND; a true CASE arm ends the CASE)
    assert evaluate("false AND 1 / 0 = 1", {}) is False
    assert evaluate("CASE WHEN true THEN true ELSE 1 / 0 = 1 END", {}) is True
    assert evaluate("COALESCE(1, 1 / 0) = 1", {}) is True


@pytest.mark.parametrize(
    ("text", "fragment", "fix"),
    [
        ("new.status ~ 'a.*'", "~", "use LIKE"),
        ("new.status SIMILAR TO 'a%'", "SIMILAR TO", "use LIKE"),
        ("new.id = ANY('{1,2}'::int[])", "ANY", "IN (a, b, c)"),
        ("new.data #>> '{a,b}' = 'x'", "#>>", "->>"),
        ("new.data ?| array['a']", "?|", "OR"),
        ("new.tags[1] = 'x'", "(new.tags)[1]", "IN (...)"),
        ("new.mood > 'happy'", "new.mood > 'happy'", "= or IN"),
        ("new.data > '{}'", "new.data > '{}'", "::numeric"),
        ("new.payload ->> 'a' = 'x'", "new.payload ->> 'a'", "::jsonb"),
        ("new.payload = '{}'", "new.payload = '{}'", "cast to jsonb"),
        ("new.status::inet IS NULL", "inet", "use one of"),
        ("new.id::int[] IS NULL", "[]", "scalar"),
        ("new.raw = '\\x00'", "new.raw", "::text"),
        ("new.tags::text[] IS NULL", "text[]", "scalar"),
        ("new.created_at > now(3)", "now(3)", "supported functions"),
        ("current_timestamp(3) > new.created_at", "CURRENT_TIMESTAMP(3)", "current_timestamp"),
        ("current_user = 'x'", "CURRENT_USER", "session"),
        ("$1 = 1", "$1", "literal"),
        ("GREATEST(new.id, 1) = 1", "GREATEST", "CASE"),
        ("new.* IS NULL", "new.*", "name the columns"),
        ("ROW(new.id, 1) IS NULL", "ROW", "one by one"),
        ("new.flag LIKE 'a%'", "new.flag LIKE", "::text"),
        ("new.status::char(3) = 'a'", "char", "text or varchar"),
        ("new.local_ts::timestamp(0) IS NULL", "timestamp", "plain"),
        ("'a' + 'b' = 'c'", "'a' + 'b'", "cast a literal"),
        ("new.day + '1' = '2024-01-01'", "new.day + '1'", "cast the literal"),
        ("new.created_at - '1 day' > now()", "'1 day'", "ISO 8601"),  # PG reads it as a timestamptz too
        ("length(new.id) = 1", "length(new.id)", "::text"),
        ("-'1' = 1", "'1'", "cast the literal"),
        ("new.address IS NULL", "new.address", "other columns"),
        ("new.id = B'101'", "b'101'", "integers or text"),
        ("new.id OPERATOR(myschema.=) 1", "OPERATOR", "unqualified"),
        ("'{\"a\": 1}' -> 'a' IS NULL", "'{\"a\": 1}' -> 'a'", "::jsonb"),
        ("-new.status = 'a'", "- new.status", "number or an interval"),
        ("new.tags || 'x' IS NULL", "new.tags || 'x'", "cast it to text"),
        ('new.id COLLATE "C" = 1', "COLLATE", "apply COLLATE to text"),
        ("new.ok::date IS NULL", "CAST(new.ok AS date)", "text form"),
        ("current_time > '10:00'", "CURRENT_TIME", "timestamps"),
        ("COALESCE(new.id, new.status) = 'a'", "new.status", "cast the values to one type"),
        ("CASE WHEN new.ok THEN new.uid ELSE new.data END IS NULL", "new.data", "cast the values"),
        ("new.ok AND new.status", "new.status", "new.status = 'value'"),
    ],
)
def test_refused_construct_names_the_part_and_the_fix(text: str, fragment: str, fix: str) -> None:
    assert_names(refused(text), fragment, fix)


# ---------------------------------------------------------------------------------------- row filters


@pytest.mark.parametrize(
    ("text", "sql"),
    [
        ("new.status = 'paid'", "status = 'paid'"),
        ("status = 'paid' AND new.amount > 10", "status = 'paid' AND amount > 10"),
        ("new.data ->> 'kind' = 'x' AND new.data ? 'k'", "data ->> 'kind' = 'x' AND data ? 'k'"),
        ("new.id IN (1, 2) AND new.status LIKE 'a%'", "id IN (1, 2) AND status LIKE 'a%'"),
        ("new.code::text IN ('a', 'b')", "CAST(code AS text) IN ('a', 'b')"),
        ("new.status COLLATE \"C\" > 'a'", "status COLLATE \"C\" > 'a'"),
        ("new.created_at > '2024-01-01'", "created_at > '2024-01-01'"),
        ("lower(new.status) = 'a' OR new.ok IS NULL", "lower(status) = 'a' OR ok IS NULL"),
        ("(new.data -> 'n')::numeric > 1", "CAST(data -> 'n' AS numeric) > 1"),
    ],
)
def test_row_filter_over_bare_columns(text: str, sql: str) -> None:
    assert compile_(text).row_filter() == (sql, "")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("old.status <> new.status", "old.status"),
        ("new.created_at > now() - interval '1 day'", "now()"),
        ("new.day = current_date", "now()"),
        ("new.id::text = '1'", "through text"),  # CoerceViaIO: refused by PostgreSQL
        ("new.status || new.id = 'a1'", "through text"),
        ("new.mood = 'happy'", "user-defined type"),
        (
            "new.created_at + interval '1 day' > '2024-01-01'",
            "time zone",
        ),  # timestamptz_pl_interval is stable
        ("new.day < new.created_at", "time zone"),
        ("new.code IN ('a', 'b')", "::text IN"),  # varchar[] -> text[] coercion: refused by PostgreSQL
    ],
)
def test_row_filter_says_why_not(text: str, reason: str) -> None:
    sql, why = compile_(text).row_filter()
    assert sql is None
    assert reason in why


def test_evaluation_is_compiled_once() -> None:
    predicate = compile_("new.status = 'signed' AND old.status IS DISTINCT FROM 'signed'")
    assert predicate.text == "new.status = 'signed' AND old.status IS DISTINCT FROM 'signed'"
    assert "Predicate(" in repr(predicate)
    assert predicate.evaluate({"status": b"signed"}, {"status": b"draft"}, NOW) is True
    assert predicate.evaluate({"status": b"signed"}, {"status": b"signed"}, NOW) is False
