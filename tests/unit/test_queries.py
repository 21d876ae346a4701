"""The named blocks of sql/queries: every one loads, names are unique, each holds the placeholders it
declares; and the loader refuses the blocks that would not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from psycopg import sql

from listener.queue import queries

QUERIES = Path(__file__).resolve().parents[2] / "sql" / "queries"


def test_every_block_loads_with_a_unique_name() -> None:
    loaded = queries.load()
    headers = [
        (path.name, match[1])
        for path in sorted(QUERIES.glob("*.sql"))
        for match in re.finditer(r"^--\s*name:\s*(\S+)", path.read_text(), re.MULTILINE)
    ]
    names = [name for _, name in headers]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]
    assert sorted(loaded) == sorted(names)
    assert {q.placeholders for q in loaded.values()} == {"asyncpg", "psycopg", "none"}


@pytest.mark.parametrize("name", sorted(queries.load()))
def test_each_block_holds_the_placeholders_it_declares(name: str) -> None:
    query = queries.query(name)
    code = re.sub(r"'(?:[^']|'')*'", "''", query.text)
    dollars = re.findall(r"\$\d+", code)
    percents = re.findall(r"%(?:\(\w+\))?s", query.text)
    if query.placeholders == "asyncpg":
        assert dollars and not percents
    elif query.placeholders == "psycopg":
        assert percents and not dollars
    else:
        assert not dollars and not re.findall(r"%(?:\(\w+\))?s", code)
    if query.identifiers:
        fields = dict.fromkeys(query.identifiers, sql.Identifier("x"))
        assert query.compose(**fields).as_string(None)


def test_named_psycopg_blocks_run_through_asyncpg_too() -> None:
    query = queries.query("next_generation")
    assert query.names == ("event_key", "rule", "from", "up_to", "finished_too")
    assert "%" not in query.asyncpg
    assert sorted(set(re.findall(r"\$\d+", query.asyncpg))) == ["$1", "$2", "$3", "$4", "$5"]
    args = query.args(rule="r", event_key=None, up_to=None, finished_too=True, **{"from": None})
    assert args == [None, "r", None, None, True]
    with pytest.raises(queries.QueryError, match="takes event_key"):
        query.args(rule="r")
    assert queries.query("wake").asyncpg == "SELECT pg_notify($1, '')"


def block(header: str, body: str) -> str:
    return f"-- name: q\n{header}\n-- what it does\n{body}\n"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (block("-- placeholders: asyncpg", "SELECT %s"), "has psycopg parameters"),
        (block("-- placeholders: asyncpg", "SELECT $2"), "skips a parameter number"),
        (block("-- placeholders: asyncpg", "SELECT 1"), "has no \\$n parameter"),
        (block("-- placeholders: psycopg", "SELECT $1"), "has no %s parameter"),
        (block("-- placeholders: psycopg", "SELECT %s, $1"), "has asyncpg parameters"),
        (block("-- placeholders: psycopg", "SELECT %s % 2"), "lone %"),
        (block("-- placeholders: psycopg", "SELECT %s, %(a)s"), "mixes"),
        (block("-- placeholders: none", "SELECT $1"), "has parameters"),
        (block("-- placeholders: none", "SELECT %s"), "has psycopg parameters"),
        (block("-- placeholders: pyformat", "SELECT 1"), "needs '-- placeholders"),
        (block("-- placeholders: none\n-- identifiers: schema", "SELECT 1"), "has fields none"),
        (block("-- placeholders: none", ""), "has no statement"),
        ("-- name: Bad\n-- placeholders: none\nSELECT 1\n", "not a lower-case identifier"),
    ],
)
def test_a_malformed_block_is_refused(text: str, error: str) -> None:
    with pytest.raises(queries.QueryError, match=error):
        queries.parse(text, "x.sql")


def test_literals_and_comments_are_not_placeholders() -> None:
    text = (
        "-- name: q\n-- placeholders: asyncpg\n"
        "SELECT format('%s costs $5', $1) /* $7 */, '{}'::jsonb, $x$ $9 $x$ -- %s\n"
    )
    (query,) = queries.parse(text, "x.sql")
    assert query.text.startswith("SELECT format(")
    assert query.where == "x.sql:1"


def test_blocks_split_at_each_name() -> None:
    text = (
        "-- file comment\n\n"
        "-- name: a\n-- placeholders: none\nSELECT 1\n\n"
        "-- name: b\n-- placeholders: psycopg\n-- says why\nSELECT %(x)s\n"
    )
    a, b = queries.parse(text, "x.sql")
    assert (a.name, a.text, b.name, b.text, b.where) == ("a", "SELECT 1", "b", "SELECT %(x)s", "x.sql:7")
