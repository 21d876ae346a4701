"""The one statement that picks the generation of a deliberate rerun (invariant 3; sql/queries/rewind.sql,
next_generation), as `listener rewind --rerun`, `listener replay --rerun` and `listener retry --rerun`
ask it: the same answers their three statements gave, through psycopg and through asyncpg."""

from __future__ import annotations

from typing import Any

import asyncpg
import psycopg
import pytest

from listener.pg.conninfo import asyncpg_params
from listener.queue import migrations, queries

Conn = psycopg.Connection[tuple[object, ...]]

# (key, rule, commit LSN or None): rule "a" has two changes, a backfill row and, beside it, rule "a/b",
# whose keys also start with "a/"; one run's event is gone.
EVENTS = [
    ("a/0/16/0", "a", "0/16"),
    ("a/0/20/0", "a", "0/20"),
    ("a/backfill/1/5", "a", None),
    ("a/b/0/30/0", "a/b", "0/30"),
    ("c/0/16/0", "c", "0/16"),
]
RUNS = {"a/0/16/0": [0, 3], "a/0/20/0": [0], "a/backfill/1/5": [0, 4], "a/b/0/30/0": [0, 7], "c/0/16/0": [0]}
RUNS_WITHOUT_EVENT = {"gone/0/1/0": [0, 1]}
# (rule, generation, finished)
REWINDS = [("a", 1, True), ("a", 2, False), ("c", 5, True)]


def rewind(rule: str, start: str, end: str) -> dict[str, Any]:
    return {"event_key": None, "rule": rule, "from": start, "up_to": end, "finished_too": True}


def replay(rule: str) -> dict[str, Any]:
    return {"event_key": None, "rule": rule, "from": None, "up_to": None, "finished_too": True}


def retry(key: str) -> dict[str, Any]:
    return {"event_key": key, "rule": None, "from": None, "up_to": None, "finished_too": False}


CASES = [
    # rewind: above the rule's runs in the range and above every rerun of the rule, finished or not
    (rewind("a", "0/10", "0/18"), 4),  # a/0/16/0#3
    (rewind("a", "0/18", "0/40"), 3),  # the unfinished rewind's 2
    (rewind("c", "0/10", "0/18"), 6),  # a finished rewind counts
    (rewind("new", "0/10", "0/18"), 1),
    # replay: any commit LSN (the backfill row's run too), but only the rule's own events: rule "a/b"'s
    # run 7 does not count for rule "a" (the key prefix "a/" of the old statement counted it)
    (replay("a"), 5),
    (replay("a/b"), 8),
    # retry: the event's own runs, and the generations unfinished rewinds of its rule have fixed
    (retry("a/0/20/0"), 3),
    (retry("a/0/16/0"), 4),
    (retry("c/0/16/0"), 1),  # c's rewind is finished: its runs, if it reran this event, exist
    (retry("gone/0/1/0"), 2),  # an event no longer stored: its runs alone
]


@pytest.fixture
def state(sql: Conn) -> Conn:
    migrations.migrate(sql, "listener")
    sql.execute("SET search_path TO listener")
    for key, rule, commit in EVENTS:
        sql.execute(
            "INSERT INTO events (idempotency_key, source, rule, workflow, commit_lsn, payload)"
            " VALUES (%s, 'test', %s, 'm:f', %s, '{}')",
            [key, rule, commit],
        )
    for key, generations in {**RUNS, **RUNS_WITHOUT_EVENT}.items():
        for g in generations:
            run_id = key if g == 0 else f"{key}#{g}"
            sql.execute(
                "INSERT INTO runs (id, event_key, generation, workflow) VALUES (%s, %s, %s, 'm:f')",
                [run_id, key, g],
            )
    for rule, generation, finished in REWINDS:
        sql.execute(
            "INSERT INTO rewinds (slot_name, from_lsn, up_to, rerun_rule, generation, rules, finished_at)"
            " VALUES ('s', '0/1', '0/2', %s, %s, '{}', CASE WHEN %s THEN now() END)",
            [rule, generation, finished],
        )
    return sql


@pytest.mark.parametrize(("params", "expected"), CASES)
def test_psycopg(state: Conn, params: dict[str, Any], expected: int) -> None:
    row = state.execute(queries.get("next_generation"), params).fetchone()
    assert row is not None and row[0] == expected


async def test_asyncpg(state: Conn, dsn: str) -> None:
    query = queries.query("next_generation")
    conn = await asyncpg.connect(**asyncpg_params(dsn, {"search_path": "listener"}))
    try:
        got = [await conn.fetchval(query.asyncpg, *query.args(**params)) for params, _ in CASES]
    finally:
        await conn.close()
    assert got == [expected for _, expected in CASES]
