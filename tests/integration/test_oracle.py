"""`listener tail` against an external oracle: PostgreSQL's own ``test_decoding`` plugin on the same WAL.

Both decode the same transactions (both slots exist before the first write); every change tail prints
must be the change test_decoding prints -- table, operation, old and new values as PostgreSQL's text,
unchanged TOAST values marked -- on whichever server version the suite runs (14-18).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import psycopg

from tests.integration.test_tail import _wait_for, running_tail
from tests.support import make_config

Conn = psycopg.Connection[tuple[Any, ...]]
TYPES = {
    "id": "int",
    "t": "text",
    "n": "numeric",
    "f": "float8",
    "b": "bool",
    "j": "jsonb",
    "ts": "timestamptz",
    "iv": "interval",
    "d": "date",
    "by": "bytea",
    "arr": "int4[]",
    "big": "text",  # TOASTed: left out of updates that do not change it
}
COLUMNS = ", ".join(f"{name} {kind}" for name, kind in TYPES.items())
# an incompressible 40 kB value: stored out of line
BIG = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 1250) g)"
WRITES = [
    "INSERT INTO keyed VALUES (1, 'plain', 1.50, 0.1, true, '{\"a\": [1, 2.5, null]}', "
    "'2024-02-29 23:59:59.999999+05', '1 mon -2 days 03:04:05.000006', '0001-01-01 BC', '\\x00ff', "
    f"'{{1,NULL,3}}', {BIG})",
    "INSERT INTO keyed (id, t, n, f, b, j, arr) VALUES (2, 'it''s \\ \"é\" 🐘', 'NaN', 'NaN', false, "
    "'\"text\"', '{}')",
    "INSERT INTO keyed (id, n, f, j, iv) VALUES (3, 12345678901234567890.000001, '-Infinity', '[]', "
    "'-178000000 years')",
    "UPDATE keyed SET t = 'changed', f = 1e308 WHERE id = 1",  # big unchanged: not sent
    "UPDATE keyed SET id = 10 WHERE id = 2",  # the key changes: its old value is sent
    "DELETE FROM keyed WHERE id = 3",
    "INSERT INTO whole SELECT * FROM keyed WHERE id = 1",
    "UPDATE whole SET b = NULL, ts = 'infinity'",  # REPLICA IDENTITY FULL: the whole old row
    "DELETE FROM whole",
    "TRUNCATE keyed, whole",
]
TD_LINE = re.compile(r"table (?P<tables>.+?): (?P<op>INSERT|UPDATE|DELETE|TRUNCATE): ?(?P<rest>.*)")


def _value(rest: str, at: int) -> tuple[str | None, int]:
    """One value of test_decoding's tuple text at ``at``: quoted ('' doubled), null, or a bare token."""
    if rest.startswith("'", at):
        out, i = [], at + 1
        while True:
            end = rest.index("'", i)
            out.append(rest[i:end])
            if rest.startswith("''", end):
                out.append("'")
                i = end + 2
                continue
            return "".join(out), end + 1
    end = rest.find(" ", at)
    end = len(rest) if end < 0 else end
    token = rest[at:end]
    return (None if token == "null" else token), end


def _tuple(rest: str) -> dict[str, str | None]:
    """``name[type]:value name[type]:value ...`` -> {name: text or None}."""
    out: dict[str, str | None] = {}
    at = 0
    while at < len(rest):
        bracket = rest.index("[", at)
        name = rest[at:bracket]
        colon = rest.index("]:", bracket)
        out[name], at = _value(rest, colon + 2)
        at += 1  # the space between columns
    return out


def decoded_by_test_decoding(line: str) -> tuple[str, str, dict[str, str | None] | None, Any]:
    """(tables, op, old values, new values) of one test_decoding line."""
    match = TD_LINE.fullmatch(line)
    assert match is not None, line
    op, rest = match["op"].lower(), match["rest"]
    if op == "truncate":
        return match["tables"], op, None, None
    if op == "delete":
        return match["tables"], op, _tuple(rest), None
    old = None
    if rest.startswith("old-key: "):
        old_text, new_text = rest.removeprefix("old-key: ").split(" new-tuple: ")
        old = _tuple(old_text)
        rest = new_text
    return match["tables"], op, old, _tuple(rest)


def as_text(column: str, value: Any) -> str | None:
    """A value tail printed, as PostgreSQL's text (what test_decoding prints)."""
    if value is None:
        return None
    kind = TYPES[column]
    if kind == "bool":
        return "true" if value else "false"
    if kind == "jsonb":
        return json.dumps(value)
    if kind == "int4[]":
        return "{" + ",".join("NULL" if v is None else str(v) for v in value) + "}"
    return str(value)


def same(column: str, tail_text: str | None, oracle: str | None) -> bool:
    if tail_text is None or oracle is None:
        return tail_text is oracle
    if TYPES[column] == "float8":
        a, b = float(tail_text), float(oracle)
        return (math.isnan(a) and math.isnan(b)) or a == b
    if TYPES[column] == "jsonb":
        return bool(json.loads(tail_text) == json.loads(oracle))
    return tail_text == oracle


def assert_same_row(what: str, tail_row: dict[str, Any] | None, oracle: dict[str, str | None] | None,
                    unchanged: list[str], *, old: bool = False) -> None:  # fmt: skip
    if oracle is None:
        assert tail_row is None, what
        return
    assert tail_row is not None, what
    for column, text in oracle.items():
        if text == "unchanged-toast-datum":
            assert column in unchanged and column not in tail_row, (what, column)
            continue
        got = as_text(column, tail_row[column])
        assert same(column, got, text), f"{what}: {column}: tail {got!r}, test_decoding {text!r}"
    # test_decoding leaves NULLs out of old tuples (skip_nulls): there tail's other columns must be null
    left_out = set(tail_row) - set(oracle)
    assert all(tail_row[c] is None for c in left_out) if old else not left_out, (what, left_out)
    assert not set(unchanged) - set(oracle), what


async def test_tail_prints_what_test_decoding_decodes(dsn: str, sql: Conn) -> None:
    sql.execute(f"CREATE TABLE keyed ({COLUMNS}, PRIMARY KEY (id))")
    sql.execute(f"CREATE TABLE whole ({COLUMNS})")
    sql.execute("ALTER TABLE whole REPLICA IDENTITY FULL")
    sql.execute("ALTER TABLE keyed ALTER COLUMN big SET STORAGE EXTERNAL")
    sql.execute("ALTER TABLE whole ALTER COLUMN big SET STORAGE EXTERNAL")
    rules = [
        {
            "name": t,
            "table": f"public.{t}",
            "on": ["insert", "update", "delete", "truncate"],
            "workflow": "m:f",
        }
        for t in ("keyed", "whole")
    ]
    config = make_config(rules)
    async with running_tail(config, dsn) as running:
        sql.execute("SELECT pg_create_logical_replication_slot('oracle', 'test_decoding')")
        sql.execute("SET synchronous_commit = on")  # SQL decoding reads only flushed WAL
        for statement in WRITES:
            sql.execute(statement)
        # test_decoding prints values with the output settings tail pins on its replication connection
        for setting in ("DateStyle = ISO", "IntervalStyle = postgres", "TimeZone = UTC",
                        "extra_float_digits = 3", "bytea_output = hex"):  # fmt: skip
            sql.execute(f"SET {setting}")
        oracle = [
            str(data)
            for (data,) in sql.execute(
                "SELECT data FROM pg_logical_slot_get_changes('oracle', NULL, NULL, 'include-xids', '0',"
                " 'skip-empty-xacts', '1')"
            )
            if str(data).startswith("table ")
        ]
        await _wait_for(lambda: len(running.out.getvalue().splitlines()) >= len(oracle), "tail")
    printed = [json.loads(line) for line in running.out.getvalue().splitlines()]
    assert len(printed) == len(oracle) == len(WRITES)
    assert [line["unchanged_toast"] for line in printed][3] == ["big"]  # the path is taken
    for n, (line, td) in enumerate(zip(printed, oracle, strict=True)):
        tables, op, old, new = decoded_by_test_decoding(td)
        what = f"change {n}: {td[:80]}"
        assert line["op"] == op, what
        if op == "truncate":
            assert line["tables"] == tables.split(", "), what
            continue
        assert line["table"] == tables, what
        unchanged = list(line["unchanged_toast"])
        assert_same_row(what, line["old"], old, [], old=True)
        assert_same_row(what, line["new"], new, unchanged)
