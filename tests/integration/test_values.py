"""Values in event payloads: replica identities, unchanged TOAST, ALTER TABLE mid-stream, typed values."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.support import events, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[Any, ...]]
WORKFLOW = "listener_examples.tickets:triage"
ALL_OPS = ["insert", "update", "delete"]

# ~128 KB of hex from md5: pglz/lz4 find nothing to compress, so the value is TOASTed out of line.
BIG_TEXT = "SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 4000)"


def rule(table: str, on: list[str] = ALL_OPS) -> dict[str, Any]:
    return {"name": f"on_{table}", "table": table, "on": on, "workflow": WORKFLOW}


def changes(dsn: str) -> list[tuple[str, str, Any, Any, list[str]]]:
    """(table, op, new, old, unchanged_toast) of every event, in order."""
    return [
        (e["table_name"], e["op"], e["payload"]["new"], e["payload"]["old"], e["payload"]["unchanged_toast"])
        for e in events(dsn)
    ]


async def test_replica_identity_default(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE t (a int, b int, name text, PRIMARY KEY (a, b))")
    sql.execute("INSERT INTO t VALUES (1, 1, 'x'), (2, 2, 'y')")
    async with running_ingest(dsn, make_config([rule("t")])) as run:
        sql.execute("UPDATE t SET name = 'x2' WHERE a = 1")  # key unchanged: no old row is sent
        sql.execute("UPDATE t SET b = 20, name = NULL WHERE a = 2")  # key changed: old key only
        sql.execute("DELETE FROM t WHERE a = 1")
        await wait_caught_up(run, dsn)
    assert changes(dsn) == [
        ("public.t", "update", {"a": 1, "b": 1, "name": "x2"}, None, []),
        ("public.t", "update", {"a": 2, "b": 20, "name": None}, {"a": 2, "b": 2}, []),
        ("public.t", "delete", None, {"a": 1, "b": 1}, []),
    ]


async def test_replica_identity_full(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE t (id int PRIMARY KEY, name text, qty numeric)")
    sql.execute("ALTER TABLE t REPLICA IDENTITY FULL")
    sql.execute("INSERT INTO t VALUES (1, 'x', 1.50), (2, NULL, 2)")
    async with running_ingest(dsn, make_config([rule("t")])) as run:
        sql.execute("UPDATE t SET qty = 3 WHERE id = 1")
        sql.execute("DELETE FROM t WHERE id = 2")
        await wait_caught_up(run, dsn)
    assert changes(dsn) == [
        ("public.t", "update", {"id": 1, "name": "x", "qty": "3"}, {"id": 1, "name": "x", "qty": "1.50"}, []),
        # a NULL the old row really held is a null; the key is not all the server sent
        ("public.t", "delete", None, {"id": 2, "name": None, "qty": "2"}, []),
    ]


async def test_replica_identity_index(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE t (id int PRIMARY KEY, code text NOT NULL, region int NOT NULL, note text)")
    sql.execute("CREATE UNIQUE INDEX t_code ON t (code, region)")
    sql.execute("ALTER TABLE t REPLICA IDENTITY USING INDEX t_code")
    sql.execute("INSERT INTO t VALUES (1, 'a', 1, 'n1'), (2, 'b', 2, 'n2')")
    async with running_ingest(dsn, make_config([rule("t")])) as run:
        sql.execute("UPDATE t SET note = 'n1b', id = 10 WHERE id = 1")  # the index columns did not change
        sql.execute("UPDATE t SET code = 'b2' WHERE id = 2")
        sql.execute("DELETE FROM t WHERE id = 10")
        await wait_caught_up(run, dsn)
    assert changes(dsn) == [
        ("public.t", "update", {"id": 10, "code": "a", "region": 1, "note": "n1b"}, None, []),
        (
            "public.t",
            "update",
            {"id": 2, "code": "b2", "region": 2, "note": "n2"},
            {"code": "b", "region": 2},
            [],
        ),
        # only the index columns: not the primary key, not the other columns
        ("public.t", "delete", None, {"code": "a", "region": 1}, []),
    ]


async def test_replica_identity_nothing_with_insert_only_rule(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE log (id int, line text)")  # no key at all
    sql.execute("ALTER TABLE log REPLICA IDENTITY NOTHING")
    async with running_ingest(dsn, make_config([rule("log", ["insert"])])) as run:
        sql.execute("INSERT INTO log VALUES (1, 'a'), (2, 'b')")
        # only inserts are published: the application's UPDATE and DELETE keep working
        sql.execute("UPDATE log SET line = 'a2' WHERE id = 1")
        sql.execute("DELETE FROM log WHERE id = 2")
        sql.execute("INSERT INTO log VALUES (3, NULL)")
        await wait_caught_up(run, dsn)
    assert changes(dsn) == [
        ("public.log", "insert", {"id": 1, "line": "a"}, None, []),
        ("public.log", "insert", {"id": 2, "line": "b"}, None, []),
        ("public.log", "insert", {"id": 3, "line": None}, None, []),
    ]
    assert sql.execute("SELECT id, line FROM log ORDER BY id").fetchall() == [(1, "a2"), (3, None)]


async def test_unchanged_toast_is_marked_never_null(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, n int)")
    sql.execute(f"INSERT INTO docs VALUES (1, ({BIG_TEXT}), 1), (2, ({BIG_TEXT}), 1)")
    bodies: dict[int, str] = dict(sql.execute("SELECT id, body FROM docs").fetchall())
    assert len(bodies[1]) == 128_000
    # stored out of line, uncompressed: the premise of this test
    toast_size = sql.execute(
        "SELECT pg_total_relation_size(reltoastrelid) FROM pg_class WHERE relname = 'docs'"
    ).fetchone()
    assert toast_size is not None and toast_size[0] >= 2 * 128_000
    async with running_ingest(dsn, make_config([rule("docs")])) as run:
        sql.execute("UPDATE docs SET n = 2 WHERE id = 1")  # body not sent: unchanged TOAST
        sql.execute("UPDATE docs SET body = 'short', n = 3 WHERE id = 2")  # body changed: sent
        sql.execute("ALTER TABLE docs REPLICA IDENTITY FULL")
        sql.execute("UPDATE docs SET n = 4 WHERE id = 1")
        sql.execute("DELETE FROM docs WHERE id = 1")
        await wait_caught_up(run, dsn)
    got = changes(dsn)
    assert got[0] == ("public.docs", "update", {"id": 1, "n": 2}, None, ["body"])
    assert got[1] == ("public.docs", "update", {"id": 2, "body": "short", "n": 3}, None, [])
    # FULL: the old row carries the whole value (the server detoasts it into the WAL record)
    assert got[2][:2] == ("public.docs", "update")
    assert got[2][3] == {"id": 1, "body": bodies[1], "n": 2}
    assert got[2][2] == {"id": 1, "n": 4}
    assert got[2][4] == ["body"]
    assert got[3] == ("public.docs", "delete", None, {"id": 1, "body": bodies[1], "n": 4}, [])
    assert len(got) == 4


async def test_alter_table_between_transactions(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE t (id int PRIMARY KEY, qty int)")
    async with running_ingest(dsn, make_config([rule("t", ["insert"])])) as run:
        sql.execute("INSERT INTO t VALUES (1, 10)")
        sql.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")  # a user type born mid-stream
        sql.execute("ALTER TABLE t ADD COLUMN m mood DEFAULT 'happy', ADD COLUMN tags text[]")
        sql.execute("INSERT INTO t VALUES (2, 20, 'sad', '{a,NULL}')")
        sql.execute("ALTER TABLE t DROP COLUMN tags")
        sql.execute("INSERT INTO t VALUES (3, 30)")
        sql.execute("ALTER TABLE t ALTER COLUMN qty TYPE numeric(10, 2)")  # int → numeric: now a string
        sql.execute("ALTER TABLE t RENAME COLUMN m TO mood")
        sql.execute("INSERT INTO t VALUES (4, 40)")
        sql.execute("ALTER TABLE t DROP COLUMN mood")
        sql.execute("INSERT INTO t VALUES (5, 50)")
        await wait_caught_up(run, dsn)
    assert [new for _, _, new, _, _ in changes(dsn)] == [
        {"id": 1, "qty": 10},
        {"id": 2, "qty": 20, "m": "sad", "tags": ["a", None]},
        {"id": 3, "qty": 30, "m": "happy"},
        {"id": 4, "qty": "40.00", "mood": "happy"},
        {"id": 5, "qty": "50.00"},
    ]


async def test_alter_table_inside_one_transaction(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE t (id int PRIMARY KEY)")
    async with running_ingest(dsn, make_config([rule("t", ["insert"])])) as run:
        with sql.transaction():
            sql.execute("INSERT INTO t VALUES (1)")
            sql.execute("ALTER TABLE t ADD COLUMN extra text")
            sql.execute("INSERT INTO t VALUES (2, 'two')")
            sql.execute("ALTER TABLE t DROP COLUMN extra")
            sql.execute("INSERT INTO t VALUES (3)")
        await wait_caught_up(run, dsn)
    got = events(dsn)
    assert [e["payload"]["new"] for e in got] == [{"id": 1}, {"id": 2, "extra": "two"}, {"id": 3}]
    assert len({e["commit_lsn"] for e in got}) == 1
    assert [e["idempotency_key"].rsplit("/", 1)[1] for e in got] == ["0", "1", "2"]


async def test_typed_values_in_payload(dsn: str, sql: Conn) -> None:
    """The payload is jsonb: values with no JSON form (NaN, 1e400 in json) arrive as PostgreSQL text,
    never as a value that would make the event unwritable."""
    sql.execute("CREATE TYPE color AS ENUM ('red', 'green')")
    sql.execute("CREATE DOMAIN qty AS int8 CHECK (VALUE >= 0)")
    sql.execute(
        "CREATE TABLE t (id int PRIMARY KEY, f float8, n numeric, c color, q qty, cs color[], fs float4[],"
        " j jsonb, b bytea, ts timestamp, jo json)"
    )
    async with running_ingest(dsn, make_config([rule("t", ["insert"])])) as run:
        sql.execute(
            "INSERT INTO t VALUES (1, 'NaN', 'NaN', 'green', 9007199254740993, '{red,green}',"
            " '{-Infinity,0.5}', '[1, {\"x\": null}]', '\\xdeadbeef', '2000-01-01 00:00:00.5',"
            " '{\"n\": 1e400}')"
        )
        await wait_caught_up(run, dsn)
    assert [e["payload"] for e in events(dsn)] == [
        {
            "new": {
                "id": 1,
                "f": "NaN",
                "n": "NaN",
                "c": "green",
                "q": 9007199254740993,
                "cs": ["red", "green"],
                "fs": ["-Infinity", 0.5],
                "j": [1, {"x": None}],
                "b": "\\xdeadbeef",
                "ts": "2000-01-01 00:00:00.5",
                # beyond a float (Python would say inf, which JSON cannot hold): kept as text
                "jo": '{"n": 1e400}',
            },
            "old": None,
            "unchanged_toast": [],
            "as_text": ["jo"],  # marked: a JSON string would look the same
        }
    ]


async def test_bytea_is_hex_under_bytea_output_escape(dsn: str, sql: Conn) -> None:
    sql.execute(f'ALTER DATABASE "{sql.info.dbname}" SET bytea_output = escape')
    sql.execute("CREATE TABLE t (id int PRIMARY KEY, b bytea, bs bytea[])")
    async with running_ingest(dsn, make_config([rule("t", ["insert"])])) as run:
        sql.execute("INSERT INTO t VALUES (1, '\\x00ff5c22', ARRAY['\\x'::bytea, NULL, 'ab'])")
        await wait_caught_up(run, dsn)
    assert [e["payload"]["new"] for e in events(dsn)] == [
        {"id": 1, "b": "\\x00ff5c22", "bs": ["\\x", None, "\\x6162"]}
    ]


async def test_floats_are_exact_under_extra_float_digits_zero(dsn: str, sql: Conn) -> None:
    sql.execute(f'ALTER DATABASE "{sql.info.dbname}" SET extra_float_digits = 0')
    sql.execute("CREATE TABLE t (id int PRIMARY KEY, f float8)")
    async with running_ingest(dsn, make_config([rule("t", ["insert"])])) as run:
        sql.execute("INSERT INTO t VALUES (1, 0.1::float8 + 0.2::float8)")
        await wait_caught_up(run, dsn)
    assert [e["payload"]["new"] for e in events(dsn)] == [{"id": 1, "f": 0.1 + 0.2}]
