"""Deep JSON (legal in PostgreSQL) and odd numbers never raise while rendering or reading events."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from listener.defaults import MAX_JSON_DEPTH
from listener.pg.types import TypeRegistry
from listener.pg.values import json_depth, json_or_text
from listener.rules.predicate import ColumnType, compile_predicate
from listener.runtime.workflow import Event


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_depth_counts_brackets_outside_strings() -> None:
    assert json_depth("1") == 0
    assert json_depth(nested(3)) == 3
    assert json_depth('{"a": [{"b": "[[[[[[\\"]]"}]}') == 3
    assert json_depth(b'["\\\\", [["{"]]]') == 3


def test_json_or_text() -> None:
    assert json_or_text(nested(MAX_JSON_DEPTH)) == (json.loads(nested(MAX_JSON_DEPTH)), False)
    assert json_or_text(nested(MAX_JSON_DEPTH + 1)) == (nested(MAX_JSON_DEPTH + 1), True)
    assert json_or_text("1e400") == ("1e400", True)
    assert json_or_text('{"a": [1e999]}') == ('{"a": [1e999]}', True)
    assert json_or_text("NaN") == (None, False)
    assert json_or_text("Infinity") == (None, False)
    assert json_or_text("nope") == (None, False)
    assert json_or_text('{"a": 1}') == ({"a": 1}, False)
    assert json_or_text('["\\u0000"]') == ('["\\u0000"]', True)  # the queue's jsonb refuses it


def test_deep_json_columns_render_as_text() -> None:
    types = TypeRegistry()
    deep = nested(5000).encode()
    for oid in (114, 3802):
        assert types.renderer(oid)(deep) == deep.decode()
    assert types.renderer(3807)(b'{"' + deep.replace(b'"', b'\\"') + b'"}') == [deep.decode()]  # jsonb[]


def test_event_from_row_never_recurses_on_a_deep_payload() -> None:
    deep = nested(5000)
    row = {
        "event_key": "k", "rule": "r", "workflow": "m:f", "op": "message", "table_name": None, "lsn": None,
        "commit_lsn": None, "xid": None, "commit_time": None, "payload": '{"data": ' + deep + "}",
    }  # fmt: skip
    event = Event.from_row(row)
    assert event.data == row["payload"] and event.as_text == ("payload",)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("new.data->>'x' IS NULL", True),
        ("new.data ? 'x'", False),
        ("new.data = new.payload::jsonb", True),
        ("new.data @> '[[[]]]'", True),
        ("length(new.data::text) = 10000", True),
        ("new.data->0->0 IS NOT NULL", True),
    ],
)
def test_predicates_read_deep_jsonb_as_postgresql_does(when: str, expected: bool) -> None:
    columns = {
        "data": ColumnType("data", 3802, "jsonb"),
        "payload": ColumnType("payload", 114, "json"),
    }
    predicate = compile_predicate(when, columns)
    deep = nested(5000).encode()
    assert predicate.evaluate({"data": deep, "payload": deep}, None, datetime.now(UTC)) is expected


def test_only_array_dimensions_are_searched_for_values_carried_as_text() -> None:
    from listener.pg.values import JsonText, PgArray, carried_as_text

    assert carried_as_text(JsonText("[[]]"))
    assert carried_as_text(PgArray([None, PgArray([JsonText("1e400")])]))  # a jsonb[][] element
    assert not carried_as_text([[1], [2]] * 1000)  # a JSON value: never walked
    assert TypeRegistry().renderer(3807)(b'{"[1]",NULL}') == [[1], None]
