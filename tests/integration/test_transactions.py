"""Transactions through ingest: only committed work becomes events, keyed rule/commit_lsn/ordinal."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg

from listener.pg.lsn import parse_lsn
from tests.support import events, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[Any, ...]]
WORKFLOW = "listener_examples.tickets:triage"
RULES = [
    {"name": "on_a", "table": "a", "on": ["insert", "update", "delete"], "workflow": WORKFLOW},
    {"name": "on_b", "table": "b", "on": ["insert", "update", "delete"], "workflow": WORKFLOW},
]


def setup_tables(sql: Conn) -> None:
    sql.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
    sql.execute("CREATE TABLE b (id int PRIMARY KEY, v text)")


def xact_id(sql: Conn) -> int:
    row = sql.execute("SELECT pg_current_xact_id()::text::int8 % 4294967296").fetchone()
    assert row is not None
    return int(row[0])


def summary(dsn: str) -> list[tuple[str, str, Any, str]]:
    """(idempotency key with the commit LSN written as C, op, new, table) per event, in order."""
    out = []
    for e in events(dsn):
        key = e["idempotency_key"]
        assert key.startswith(f"{e['rule']}/{e['commit_lsn']}/")
        out.append(
            (key.replace(f"/{e['commit_lsn']}/", "/C/"), e["op"], e["payload"]["new"], e["table_name"])
        )
    return out


async def test_rolled_back_transaction_never_appears(dsn: str, sql: Conn) -> None:
    setup_tables(sql)
    sql.execute("INSERT INTO a VALUES (1, 'kept')")
    async with running_ingest(dsn, make_config(RULES)) as run:
        with sql.transaction(force_rollback=True):
            sql.execute("INSERT INTO a VALUES (2, 'rolled back')")
            sql.execute("UPDATE a SET v = 'rolled back' WHERE id = 1")
            sql.execute("INSERT INTO b VALUES (1, 'rolled back')")
            sql.execute("DELETE FROM a WHERE id = 1")
        sql.execute("BEGIN")
        sql.execute("INSERT INTO b VALUES (2, 'aborted by error')")
        with contextlib.suppress(psycopg.errors.UniqueViolation):
            sql.execute("INSERT INTO b VALUES (2, 'duplicate')")
        sql.execute("ROLLBACK")
        sql.execute("INSERT INTO b VALUES (3, 'committed')")
        await wait_caught_up(run, dsn)
    assert summary(dsn) == [("on_b/C/0", "insert", {"id": 3, "v": "committed"}, "public.b")]
    assert sql.execute("SELECT count(*) FROM a").fetchone() == (1,)


async def test_rolled_back_savepoint_inside_committed_transaction(dsn: str, sql: Conn) -> None:
    setup_tables(sql)
    async with running_ingest(dsn, make_config(RULES)) as run:
        with sql.transaction():
            xid = xact_id(sql)
            sql.execute("INSERT INTO a VALUES (1, 'a1')")
            with sql.transaction(force_rollback=True):  # SAVEPOINT … ROLLBACK TO SAVEPOINT
                sql.execute("INSERT INTO a VALUES (2, 'gone')")
                sql.execute("INSERT INTO b VALUES (1, 'gone')")
                sql.execute("UPDATE a SET v = 'gone' WHERE id = 1")
            sql.execute("INSERT INTO b VALUES (2, 'b2')")
            with sql.transaction():  # SAVEPOINT … RELEASE: its changes commit with the transaction
                sql.execute("INSERT INTO a VALUES (3, 'a3')")
                with sql.transaction(force_rollback=True):  # nested, rolled back
                    sql.execute("DELETE FROM a WHERE id = 1")
                sql.execute("UPDATE b SET v = 'b2!' WHERE id = 2")
            sql.execute("INSERT INTO a VALUES (4, 'a4')")
        await wait_caught_up(run, dsn)
    assert summary(dsn) == [
        ("on_a/C/0", "insert", {"id": 1, "v": "a1"}, "public.a"),
        ("on_b/C/0", "insert", {"id": 2, "v": "b2"}, "public.b"),
        ("on_a/C/1", "insert", {"id": 3, "v": "a3"}, "public.a"),
        ("on_b/C/1", "update", {"id": 2, "v": "b2!"}, "public.b"),
        ("on_a/C/2", "insert", {"id": 4, "v": "a4"}, "public.a"),
    ]
    got = events(dsn)
    assert {e["commit_lsn"] for e in got} == {got[0]["commit_lsn"]}
    assert {e["xid"] for e in got} == {xid}  # subtransactions report the top-level transaction
    assert sql.execute("SELECT id, v FROM a ORDER BY id").fetchall() == [(1, "a1"), (3, "a3"), (4, "a4")]


async def test_tables_get_independent_ordinals(dsn: str, sql: Conn) -> None:
    setup_tables(sql)
    async with running_ingest(dsn, make_config(RULES)) as run:
        with sql.transaction():
            sql.execute("INSERT INTO a VALUES (1, 'x')")
            sql.execute("INSERT INTO b VALUES (1, 'x'), (2, 'y')")
            sql.execute("UPDATE a SET v = 'z'")
            sql.execute("DELETE FROM b WHERE id = 1")
            sql.execute("INSERT INTO a VALUES (2, 'w')")
        # a second transaction starts counting from 0 again, under its own commit LSN
        with sql.transaction():
            sql.execute("INSERT INTO b VALUES (3, 'v')")
            sql.execute("INSERT INTO a VALUES (3, 'v')")
        await wait_caught_up(run, dsn)
    assert [(key, op) for key, op, _, _ in summary(dsn)] == [
        ("on_a/C/0", "insert"),
        ("on_b/C/0", "insert"),
        ("on_b/C/1", "insert"),
        ("on_a/C/1", "update"),
        ("on_b/C/2", "delete"),
        ("on_a/C/2", "insert"),
        ("on_b/C/0", "insert"),
        ("on_a/C/0", "insert"),
    ]
    got = events(dsn)
    first, second = got[0]["commit_lsn"], got[6]["commit_lsn"]
    assert [e["commit_lsn"] for e in got] == [first] * 6 + [second] * 2
    assert first != second
    assert len({e["idempotency_key"] for e in got}) == 8
    lsns = [parse_lsn(e["lsn"]) for e in got]
    assert lsns == sorted(set(lsns))  # each change its own position, in commit order


async def test_truncate_takes_an_ordinal_in_each_table(dsn: str, sql: Conn) -> None:
    setup_tables(sql)
    rules = [{**r, "on": ["insert", "truncate"]} for r in RULES]
    async with running_ingest(dsn, make_config(rules)) as run:
        with sql.transaction():
            sql.execute("INSERT INTO a VALUES (1, 'x')")
            sql.execute("TRUNCATE a, b")
            sql.execute("INSERT INTO b VALUES (1, 'y')")
        await wait_caught_up(run, dsn)
    assert [(key, op, table) for key, op, _, table in summary(dsn)] == [
        ("on_a/C/0", "insert", "public.a"),
        ("on_a/C/1", "truncate", "public.a"),
        ("on_b/C/0", "truncate", "public.b"),
        ("on_b/C/1", "insert", "public.b"),
    ]
    truncates = [e["payload"] for e in events(dsn) if e["op"] == "truncate"]
    assert (
        truncates
        == [{"new": None, "old": None, "unchanged_toast": [], "tables": ["public.a", "public.b"]}] * 2
    )
