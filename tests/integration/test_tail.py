"""`listener tail`: decoded changes as JSON lines from a temporary slot, on a real server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml

from listener.cli.views import JsonLines
from listener.ops.tail import tail, tail_names
from listener.pg.lsn import parse_lsn
from listener.rules.config import Config
from tests.support import make_config

WAIT_S = 30.0
STREAMING = "listener tail: streaming changes of "
KEYS = {"lsn", "commit_lsn", "xid", "commit_time", "table", "op", "new", "old", "unchanged_toast"}

Conn = psycopg.Connection[tuple[Any, ...]]


def _rule(table: str, name: str | None = None) -> dict[str, Any]:
    return {
        "name": name or f"watch_{table.replace('.', '_')}",
        "table": table,
        "on": ["insert"],
        "workflow": "listener_examples.onboarding:welcome",
    }


def _no_constant(name: str) -> None:
    raise AssertionError(f"tail printed {name}, which is not JSON")


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Each printed line as a JSON object; NaN/Infinity literals (not JSON) fail the test."""
    assert text.endswith("\n") or text == ""
    return [json.loads(line, parse_constant=_no_constant) for line in text.splitlines()]


@dataclass
class Tail:
    task: asyncio.Task[int]
    out: io.StringIO
    err: io.StringIO
    stop: asyncio.Event

    async def finish(self) -> list[dict[str, Any]]:
        """Wait until tail returns by itself (``max_changes`` reached); return its lines."""
        printed = await asyncio.wait_for(self.task, WAIT_S)
        lines = parse_lines(self.out.getvalue())
        assert printed == len(lines)
        return lines


async def _wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running_tail(config: Config, dsn: str, max_changes: int | None = None) -> AsyncIterator[Tail]:
    """tail() as a task in this loop, yielded once it has said on stderr that it is streaming."""
    out, err, stop = io.StringIO(), io.StringIO(), asyncio.Event()
    task = asyncio.create_task(
        tail(config, dsn, output=JsonLines(out, err), max_changes=max_changes, stop=stop)
    )
    running = Tail(task, out, err, stop)
    try:
        await _wait_for(lambda: STREAMING in err.getvalue() or task.done(), "tail to stream")
        if task.done():
            task.result()
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


def slots(sql: Conn) -> list[tuple[str, bool]]:
    return [
        (str(n), bool(t)) for n, t in sql.execute("SELECT slot_name, temporary FROM pg_replication_slots")
    ]


def publications(sql: Conn) -> list[str]:
    return [str(n) for (n,) in sql.execute("SELECT pubname FROM pg_publication ORDER BY pubname")]


def current_lsn(sql: Conn) -> int:
    row = sql.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


def write(sql: Conn, *statements: str) -> int:
    """Run statements in one transaction; return its xid (32 bits, as pgoutput sends it)."""
    with sql.transaction():
        for statement in statements:
            sql.execute(statement)
        row = sql.execute("SELECT pg_current_xact_id()::text::int8 % 4294967296").fetchone()
    assert row is not None
    return int(row[0])


def check_envelope(line: dict[str, Any], *, xid: int, low: int, high: int) -> None:
    """The source fields of a line: its xid, LSNs inside the window of the write, a commit time."""
    assert set(line) == KEYS | ({"tables"} if line["op"] == "truncate" else set())
    assert line["xid"] == xid
    lsn, commit_lsn = parse_lsn(line["lsn"]), parse_lsn(line["commit_lsn"])
    assert low <= lsn < commit_lsn <= high
    commit_time = datetime.fromisoformat(line["commit_time"])
    assert commit_time.tzinfo is not None
    assert abs(time.time() - commit_time.timestamp()) < 60


TYPES_DDL = [
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE DOMAIN posint AS int CHECK (VALUE > 0)",
    "CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%')",
    """
    CREATE TABLE everything (
        id int PRIMARY KEY,
        i2 int2, i8 int8, flag bool, t text, vc varchar(10), ch char(4),
        f8 float8, f8_nan float8, f8_inf float8, f8_ninf float8, f4 float4,
        num numeric, num_big numeric(30, 6),
        j json, jb jsonb,
        tstz timestamptz, ts timestamp, d date, iv interval,
        raw bytea, u uuid, m mood, pi posint, em email,
        ia int[], ia2 int[], ta text[], fa float8[], ba bool[], ma mood[], na numeric[], pia posint[],
        jba jsonb[], ua uuid[]
    )
    """,
]

EVERYTHING_ROW = """
INSERT INTO everything VALUES (
    1,
    -32768, 9223372036854775807, true, 'tab	"quote" \\ ünïcode ☃', 'varchar', 'ab',
    1.5, 'NaN', 'Infinity', '-Infinity', 0.25,
    '12345678901234567890.000001', 0.1,
    '{"b": [1, 2.5, null], "a": "x"}', '{"b": {"c": true}, "a": 1}',
    '2024-01-02 03:04:05.123456+00', '2024-01-02 03:04:05', '2024-02-29', '1 year 2 mons 3 days 04:05:06.5',
    '\\x0102ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', 42, 'me@example.com',
    '{1,NULL,3}', '{{1,2},{3,4}}', '{"a b",NULL,"NULL","x\\"y",""}', '{1.5,NaN,Infinity,-Infinity,NULL}',
    '{t,f,NULL}', '{sad,NULL,happy}', '{1.10,NULL,2e30}', '{7,NULL}',
    ARRAY['{"k": [1]}', NULL, '2']::jsonb[], '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'
)
"""

EVERYTHING_NEW = {
    "id": 1,
    "i2": -32768,
    "i8": 9223372036854775807,
    "flag": True,
    "t": 'tab\t"quote" \\ ünïcode ☃',
    "vc": "varchar",
    "ch": "ab  ",
    "f8": 1.5,
    "f8_nan": "NaN",
    "f8_inf": "Infinity",
    "f8_ninf": "-Infinity",
    "f4": 0.25,
    "num": "12345678901234567890.000001",
    "num_big": "0.100000",
    "j": {"b": [1, 2.5, None], "a": "x"},
    "jb": {"a": 1, "b": {"c": True}},
    "tstz": "2024-01-02 03:04:05.123456+00",
    "ts": "2024-01-02 03:04:05",
    "d": "2024-02-29",
    "iv": "1 year 2 mons 3 days 04:05:06.5",
    "raw": "\\x0102ff",
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "m": "happy",
    "pi": 42,
    "em": "me@example.com",
    "ia": [1, None, 3],
    "ia2": [[1, 2], [3, 4]],
    "ta": ["a b", None, "NULL", 'x"y', ""],
    "fa": [1.5, "NaN", "Infinity", "-Infinity", None],
    "ba": [True, False, None],
    "ma": ["sad", None, "happy"],
    "na": ["1.10", None, "2000000000000000000000000000000"],
    "pia": [7, None],
    "jba": [{"k": [1]}, None, 2],
    "ua": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
}


async def test_every_type_prints_as_json(dsn: str, sql: Conn) -> None:
    # listener pins the walsender's output settings: whatever the database says (here a zone that is
    # not UTC and a German date style), timestamptz comes out as PostgreSQL's ISO text in UTC.
    dbname = sql.info.dbname
    sql.execute(f"ALTER DATABASE \"{dbname}\" SET timezone = 'Asia/Kolkata'")
    sql.execute(f"ALTER DATABASE \"{dbname}\" SET datestyle = 'German, DMY'")
    sql.execute(f"ALTER DATABASE \"{dbname}\" SET intervalstyle = 'postgres'")
    for ddl in TYPES_DDL:
        sql.execute(ddl)
    config = make_config([_rule("everything")])
    async with running_tail(config, dsn, max_changes=3) as running:
        before = current_lsn(sql)
        xid = write(sql, EVERYTHING_ROW, "INSERT INTO everything (id) VALUES (2)")
        xid_update = write(sql, "UPDATE everything SET m = 'ok', ma = '{ok}' WHERE id = 1")
        after = current_lsn(sql)
        lines = await running.finish()
    assert [line["op"] for line in lines] == ["insert", "insert", "update"]
    for line in lines:
        assert line["table"] == "public.everything"
        assert line["old"] is None
        assert line["unchanged_toast"] == []
    check_envelope(lines[0], xid=xid, low=before, high=after)
    check_envelope(lines[1], xid=xid, low=before, high=after)
    check_envelope(lines[2], xid=xid_update, low=before, high=after)
    assert lines[0]["commit_lsn"] == lines[1]["commit_lsn"]
    assert parse_lsn(lines[0]["lsn"]) < parse_lsn(lines[1]["lsn"])
    assert parse_lsn(lines[1]["commit_lsn"]) < parse_lsn(lines[2]["lsn"])
    assert lines[0]["new"] == EVERYTHING_NEW
    assert list(lines[0]["new"]) == list(EVERYTHING_NEW)  # the table's column order
    assert lines[1]["new"] == {name: (2 if name == "id" else None) for name in EVERYTHING_NEW}
    assert lines[2]["new"] == {**EVERYTHING_NEW, "m": "ok", "ma": ["ok"]}
    # The exact line for a NULL-only row, byte for byte (json.dumps defaults, non-ASCII kept).
    raw = running.out.getvalue().splitlines()[1]
    assert raw.startswith('{"lsn": "') and '"op": "insert", "new": {"id": 2, "i2": null,' in raw


async def test_bytea_is_hex_whatever_bytea_output_says(dsn: str, sql: Conn) -> None:
    """With ``bytea_output = escape`` for the database the walsender writes escape format; tail still
    prints ``\\x`` hex, for bytea, a domain over it and arrays of both."""
    sql.execute(f'ALTER DATABASE "{sql.info.dbname}" SET bytea_output = escape')
    sql.execute("CREATE DOMAIN blob AS bytea")
    sql.execute("CREATE TABLE t (id int PRIMARY KEY, b bytea, d blob, ba bytea[], da blob[])")
    async with running_tail(make_config([_rule("t")]), dsn, max_changes=2) as running:
        sql.execute(
            "INSERT INTO t VALUES (1, '\\x0102ff41', '\\x5c00', ARRAY['\\x01'::bytea, NULL, '\\x'],"
            " ARRAY['\\xfe'::blob])"
        )
        sql.execute("INSERT INTO t (id) VALUES (2)")
        lines = await running.finish()
    assert [line["new"] for line in lines] == [
        {"id": 1, "b": "\\x0102ff41", "d": "\\x5c00", "ba": ["\\x01", None, "\\x"], "da": ["\\xfe"]},
        {"id": 2, "b": None, "d": None, "ba": None, "da": None},
    ]


async def test_json_with_a_number_beyond_float_stays_text(dsn: str, sql: Conn) -> None:
    """PostgreSQL's json keeps ``1e400`` (and jsonb a 400-digit decimal); as a Python float it would be
    ``inf``, which JSON cannot carry: that value is printed as its text instead."""
    sql.execute("CREATE TABLE t (id int PRIMARY KEY, j json, jb jsonb, ja json[])")
    huge = "1" + "0" * 400 + ".5"
    async with running_tail(make_config([_rule("t")]), dsn, max_changes=1) as running:
        sql.execute(
            "INSERT INTO t VALUES (1, %s, %s, %s::json[])",
            ['{"big": 1e400, "e": 2.5e3}', f'{{"big": {huge}}}', ['{"ok": 1e2}', "[-1e999]"]],
        )
        lines = await running.finish()
    assert lines[0]["new"] == {
        "id": 1,
        "j": '{"big": 1e400, "e": 2.5e3}',
        "jb": f'{{"big": {huge}}}',
        "ja": [{"ok": 100.0}, "[-1e999]"],
    }


async def test_floats_are_exact_whatever_extra_float_digits_says(dsn: str, sql: Conn) -> None:
    sql.execute(f'ALTER DATABASE "{sql.info.dbname}" SET extra_float_digits = 0')
    sql.execute("CREATE TABLE t (id int PRIMARY KEY, f float8, fa float8[])")
    async with running_tail(make_config([_rule("t")]), dsn, max_changes=1) as running:
        sql.execute("INSERT INTO t VALUES (1, 0.1::float8 + 0.2::float8, ARRAY[1/3::float8])")
        lines = await running.finish()
    assert lines[0]["new"] == {"id": 1, "f": 0.1 + 0.2, "fa": [1 / 3]}


async def test_delete_and_update_old_values(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE keyed (id int PRIMARY KEY, name text, qty int)")
    sql.execute("CREATE TABLE whole (id int PRIMARY KEY, name text, qty int)")
    sql.execute("ALTER TABLE whole REPLICA IDENTITY FULL")
    sql.execute("INSERT INTO keyed VALUES (1, 'a', 1), (2, 'b', 2)")
    sql.execute("INSERT INTO whole VALUES (1, 'a', 1)")
    config = make_config([_rule("keyed"), _rule("whole")])
    async with running_tail(config, dsn, max_changes=5) as running:
        sql.execute("UPDATE keyed SET qty = 10 WHERE id = 1")
        sql.execute("UPDATE keyed SET id = 3 WHERE id = 2")
        sql.execute("DELETE FROM keyed WHERE id = 1")
        sql.execute("UPDATE whole SET qty = NULL")
        sql.execute("DELETE FROM whole")
        lines = await running.finish()
    got = [(line["table"], line["op"], line["new"], line["old"]) for line in lines]
    expected: list[tuple[str, str, Any, Any]] = [
        ("public.keyed", "update", {"id": 1, "name": "a", "qty": 10}, None),
        ("public.keyed", "update", {"id": 3, "name": "b", "qty": 2}, {"id": 2}),
        ("public.keyed", "delete", None, {"id": 1}),
        ("public.whole", "update", {"id": 1, "name": "a", "qty": None}, {"id": 1, "name": "a", "qty": 1}),
        ("public.whole", "delete", None, {"id": 1, "name": "a", "qty": None}),
    ]
    assert got == expected


async def test_truncate_of_two_tables_is_one_line(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE a (id int PRIMARY KEY)")
    sql.execute('CREATE TABLE "Mixed Case" (id int PRIMARY KEY)')
    sql.execute("INSERT INTO a VALUES (1)")
    config = make_config([_rule("a"), _rule('public."Mixed Case"', "mixed")])
    async with running_tail(config, dsn, max_changes=2) as running:
        before = current_lsn(sql)
        xid = write(sql, 'TRUNCATE a, "Mixed Case"')
        after = current_lsn(sql)
        sql.execute('INSERT INTO "Mixed Case" VALUES (7)')
        lines = await running.finish()
    truncate, insert = lines
    check_envelope(truncate, xid=xid, low=before, high=after)
    assert {k: v for k, v in truncate.items() if k not in ("lsn", "commit_lsn", "xid", "commit_time")} == {
        "table": None,
        "tables": ["public.a", "public.Mixed Case"],
        "op": "truncate",
        "new": None,
        "old": None,
        "unchanged_toast": [],
    }
    assert insert["table"] == "public.Mixed Case"
    assert insert["new"] == {"id": 7}


async def test_temporary_slot_and_own_publication_only(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    config = make_config([_rule("items")], slot="main_slot", publication="main_pub")
    publication, slot = tail_names(config)
    assert (publication, slot) == (f"main_pub_tail_{os.getpid()}", f"main_slot_tail_{os.getpid()}")
    async with running_tail(config, dsn, max_changes=3) as running:
        # while streaming: a temporary slot and a publication of tail's own, nothing of the main ones
        assert slots(sql) == [(slot, True)]
        assert publications(sql) == [publication]
        assert running.err.getvalue() == f"{STREAMING}public.items (Ctrl-C to stop)\n"
        sql.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")
        lines = await running.finish()
    # --max 3 stopped after three of the four rows
    assert [line["new"] for line in lines] == [
        {"id": 1, "name": "a"},
        {"id": 2, "name": "b"},
        {"id": 3, "name": "c"},
    ]
    assert publications(sql) == []
    # the temporary slot goes with its session; the main slot was never created
    await _wait_for(lambda: not slots(sql), "the temporary slot to go")
    assert slots(sql) == []


async def test_long_names_keep_the_pid(dsn: str, sql: Conn) -> None:
    """PostgreSQL cuts names at 63 bytes: the PID that tells two tails apart must survive the cut."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    suffix = f"_tail_{os.getpid()}"
    config = make_config([_rule("items")], slot="s" * 63, publication="p" * 63)
    publication, slot = tail_names(config)
    assert publication == "p" * (63 - len(suffix)) + suffix
    assert slot == "s" * (63 - len(suffix)) + suffix
    async with running_tail(config, dsn, max_changes=1) as running:
        assert slots(sql) == [(slot, True)]
        assert publications(sql) == [publication]
        sql.execute("INSERT INTO items VALUES (1)")
        assert [line["new"] for line in await running.finish()] == [{"id": 1}]
    assert publications(sql) == []


MAIN_SLOT = (
    "SELECT confirmed_flush_lsn::text, restart_lsn::text, active FROM pg_replication_slots"
    " WHERE slot_name = 'main_slot'"
)


async def test_main_slot_is_left_alone(dsn: str, sql: Conn) -> None:
    """An existing main slot (in use by `listener run`, say) is not read, advanced or dropped by tail."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    config = make_config([_rule("items")], slot="main_slot", publication="main_pub")
    sql.execute("SELECT pg_create_logical_replication_slot('main_slot', 'pgoutput')")
    main_before = sql.execute(MAIN_SLOT).fetchone()
    async with running_tail(config, dsn, max_changes=1) as running:
        sql.execute("INSERT INTO items VALUES (1)")
        lines = await running.finish()
    assert [line["new"] for line in lines] == [{"id": 1}]
    main_after = sql.execute(MAIN_SLOT).fetchone()
    assert main_after == main_before
    assert main_after is not None and main_after[2] is False
    assert publications(sql) == []


async def test_stop_event_ends_tail(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    config = make_config([_rule("items")])
    async with running_tail(config, dsn) as running:
        sql.execute("INSERT INTO items VALUES (1)")
        await _wait_for(lambda: running.out.getvalue().count("\n") == 1, "one line")
        running.stop.set()
        assert await asyncio.wait_for(running.task, WAIT_S) == 1
    assert [line["new"] for line in parse_lines(running.out.getvalue())] == [{"id": 1}]
    assert publications(sql) == []


def test_cli_tail_max(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    config_file = tmp_path / "listener.yaml"
    config_file.write_text(yaml.safe_dump({"rules": [_rule("items")]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config_file), "tail", "--max", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert proc.stderr is not None
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(proc.stderr.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(WAIT_S)
        assert first == [f"{STREAMING}public.items (Ctrl-C to stop)\n"]
        sql.execute("INSERT INTO items VALUES (1, 'one')")
        sql.execute("INSERT INTO items VALUES (2, 'two'), (3, 'three')")
        stdout, stderr = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    lines = parse_lines(stdout)
    assert [(line["table"], line["op"], line["new"], line["old"]) for line in lines] == [
        ("public.items", "insert", {"id": 1, "name": "one"}, None),
        ("public.items", "insert", {"id": 2, "name": "two"}, None),
    ]
    assert publications(sql) == []


async def test_unchanged_toast_and_identity_change_mid_stream(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, n int)")
    sql.execute("ALTER TABLE docs REPLICA IDENTITY FULL")
    sql.execute(
        "INSERT INTO docs SELECT 1, string_agg(md5(random()::text), ''), 0 FROM generate_series(1, 4000)"
    )
    sql.execute("INSERT INTO docs VALUES (2, 'small', 0)")
    row = sql.execute("SELECT body FROM docs WHERE id = 1").fetchone()
    assert row is not None
    body = row[0]
    config = make_config([_rule("docs")])
    async with running_tail(config, dsn, max_changes=4) as running:
        sql.execute("UPDATE docs SET n = 1 WHERE id = 1")
        # back to DEFAULT: the server describes the table again, and old rows shrink to the key
        sql.execute("ALTER TABLE docs REPLICA IDENTITY DEFAULT")
        sql.execute("UPDATE docs SET n = 2, id = 3 WHERE id = 1")
        sql.execute("DELETE FROM docs WHERE id = 2")
        sql.execute("UPDATE docs SET body = 'short' WHERE id = 3")
        lines = await running.finish()
    got = [(line["op"], line["new"], line["old"], line["unchanged_toast"]) for line in lines]
    assert got == [
        ("update", {"id": 1, "n": 1}, {"id": 1, "body": body, "n": 0}, ["body"]),
        # even with the key changed, the new row reuses the stored value: not sent, marked, old is the key
        ("update", {"id": 3, "n": 2}, {"id": 1}, ["body"]),
        ("delete", None, {"id": 2}, []),
        ("update", {"id": 3, "body": "short", "n": 2}, None, []),
    ]


def test_cli_tail_stops_on_sigint(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    config_file = tmp_path / "listener.yaml"
    config_file.write_text(yaml.safe_dump({"slot": "main", "rules": [_rule("items")]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config_file), "tail"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(proc.stderr.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(WAIT_S)
        assert lines == [f"{STREAMING}public.items (Ctrl-C to stop)\n"]
        sql.execute("INSERT INTO items VALUES (5)")
        # the line arrives while tail is still running (stdout is flushed per batch)
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(WAIT_S)
        assert parse_lines(lines[1])[0]["new"] == {"id": 5}
        assert proc.poll() is None
        assert [n for n, _ in slots(sql)] == [f"main_tail_{proc.pid}"]
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert stdout == ""
    assert "SIGINT received: stopping" in stderr
    assert publications(sql) == []
    deadline = time.monotonic() + WAIT_S
    while slots(sql) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slots(sql) == []
