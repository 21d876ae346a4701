"""Snapshot backfill against a real server: every row once, `--where`, live updates and deletes during the
backfill (each row's latest state delivered once overall), cancel, status, refusals with their fix."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from listener import install as setup
from listener.ingest.backfill import Backfills
from listener.ingest.backfill_table import TableShape
from listener.rules.config import Config
from tests import support
from tests.support import _wait_for, acli, cli, events, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]

SLOT = "listener_test"
ROWS = {"name": "rows", "table": "items", "on": ["insert", "update", "delete"], "workflow": "m:f"}
WAIT_S = 60.0


def write_config(path: Path, rules: list[dict[str, Any]], **ingest: Any) -> Config:
    return support.write_config(
        path, rules, ingest={"backfill_chunk_rows": 100, "expand_ahead": 1_000_000, **ingest}
    )


def backfill_row(sql: Conn, backfill_id: int) -> dict[str, Any]:
    cur = sql.cursor(row_factory=psycopg.rows.dict_row)
    row = cur.execute("SELECT * FROM listener.backfills WHERE id = %s", [backfill_id]).fetchone()
    assert row is not None
    return row


def unexpanded(sql: Conn) -> int:
    row = sql.execute("SELECT count(*) FROM listener.backfill_chunks").fetchone()
    assert row is not None
    return int(str(row[0]))


async def wait_done(sql: Conn, backfill_id: int) -> dict[str, Any]:
    await _wait_for(
        lambda: backfill_row(sql, backfill_id)["status"] not in ("pending", "running"), "backfill"
    )
    await _wait_for(lambda: unexpanded(sql) == 0, "the expander to empty backfill_chunks")
    return backfill_row(sql, backfill_id)


def read_events(dsn: str) -> list[dict[str, Any]]:
    return [e for e in events(dsn) if e["op"] == "read"]


def slow_reads(monkeypatch: pytest.MonkeyPatch, seconds_per_row: float) -> None:
    """Each row the backfill reads takes this long on the server: a pg_sleep() added to the service's
    query (`--where` allows no such function)."""
    original = Backfills._query
    delay = f"pg_sleep({seconds_per_row})::text = ''"

    def slow(self: Backfills, shape: TableShape, where: str | None, last_key: list[str] | None) -> Any:
        return original(self, shape, f"({where}) AND {delay}" if where else delay, last_key)

    monkeypatch.setattr(Backfills, "_query", slow)


def start(dsn: str, config: Config, *args: str) -> int:
    result = cli(dsn, config, "backfill", "--detach", *args)
    assert result.exit_code == 0, result.output
    return int(result.stdout.strip().splitlines()[-1])


async def test_every_row_arrives_once_as_the_stream_would_render_it(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    sql.execute(
        "CREATE TABLE items (id int PRIMARY KEY, v text, amount numeric, doc jsonb, tags text[],"
        " at timestamptz, raw bytea)"
    )
    sql.execute(
        "INSERT INTO items SELECT g,"
        " CASE WHEN g % 9 = 0 THEN E'tab\\there\\nnew line \\\\ back' ELSE 'v' || g END, g * 1.5,"
        " jsonb_build_object('g', g), ARRAY['a', NULL, 'c\"q'], '2025-01-02 03:04:05+02',"
        " '\\x00ff'::bytea FROM generate_series(1, 1050) g"
    )
    config = write_config(tmp_path / "l.yaml", [ROWS])
    async with running_ingest(dsn, config) as run:
        backfill_id = await asyncio.to_thread(start, dsn, config, "--rule", "rows")
        row = await wait_done(sql, backfill_id)
        sql.execute("UPDATE items SET v = 'live' WHERE id = 9")  # the stream renders it: compare
        await wait_caught_up(run, dsn)
    assert row["status"] == "done" and row["rows_read"] == 1050 and row["chunks"] == 11
    got = read_events(dsn)
    assert sorted(e["payload"]["new"]["id"] for e in got) == list(range(1, 1051))
    assert len({e["idempotency_key"] for e in got}) == 1050
    first = next(e for e in got if e["payload"]["new"]["id"] == 9)
    assert first["idempotency_key"] == f"rows/backfill/{backfill_id}/9"
    assert first["payload"]["old"] is None and first["payload"]["unchanged_toast"] == []
    live = next(e for e in events(dsn) if e["op"] == "update")["payload"]["new"]
    assert {**first["payload"]["new"], "v": "live"} == live  # the same values as the stream's
    assert first["payload"]["new"]["v"] == "tab\there\nnew line \\ back"
    runs = sql.execute("SELECT count(*) FROM listener.runs WHERE event_key LIKE 'rows/backfill/%'").fetchone()
    assert runs == (1050,)


async def test_where_limits_the_rows_and_when_and_payload_apply(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int, k text, n int, PRIMARY KEY (k, id))")
    sql.execute("INSERT INTO items SELECT g, 'k' || (g % 3), g FROM generate_series(1, 600) g")
    shaped = {
        "name": "shaped", "table": "items", "on": ["insert"], "workflow": "m:g",
        "when": "new.n % 2 = 0", "payload": {"num": "new.n"},
    }  # fmt: skip
    config = write_config(tmp_path / "l.yaml", [ROWS, shaped])
    async with running_ingest(dsn, config):
        first = await asyncio.to_thread(
            start, dsn, config, "--rule", "rows", "--where", "n <= 250 AND k <> 'k0'"
        )
        await wait_done(sql, first)
        second = await asyncio.to_thread(start, dsn, config, "--rule", "shaped", "--where", "n > 500")
        await wait_done(sql, second)
    got = read_events(dsn)
    plain = [e for e in got if e["rule"] == "rows"]
    assert sorted(e["payload"]["new"]["n"] for e in plain) == [n for n in range(1, 251) if n % 3 != 0]
    key = next(e["idempotency_key"] for e in plain if e["payload"]["new"]["n"] == 7)
    assert key == f'rows/backfill/{first}/["k1","7"]'  # a composite key: a JSON array of the texts
    data = sorted(e["payload"]["data"]["num"] for e in got if e["rule"] == "shaped")
    assert data == [n for n in range(501, 601) if n % 2 == 0]


async def test_concurrent_updates_and_deletes_deliver_each_rows_latest_state_once(
    dsn: str, sql: Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer updates and deletes rows while the backfill reads: for every row, the newest state a
    workflow receives (backfill or live event, in delivery order) is the row's final state, a deleted row
    ends deleted, and no backfill event carries a state older than a live event delivered before it."""
    n = 3000
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, version int NOT NULL)")
    sql.execute(f"INSERT INTO items SELECT g, 0 FROM generate_series(1, {n}) g")
    config = write_config(tmp_path / "l.yaml", [ROWS], backfill_chunk_rows=200)
    stop = threading.Event()
    writes = 0

    def writer() -> None:
        nonlocal writes
        rng = random.Random(7)
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                ids = rng.sample(range(1, n + 1), 5)
                with conn.transaction():
                    for i in ids[:4]:
                        conn.execute("UPDATE items SET version = version + 1 WHERE id = %s", [i])
                    conn.execute("DELETE FROM items WHERE id = %s", [ids[4]])
                writes += 1

    async with running_ingest(dsn, config) as run:
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            await asyncio.sleep(0.2)
            # each row read takes 0.2 ms, so that live changes land inside the chunks' windows
            slow_reads(monkeypatch, 0.0002)
            backfill_id = await asyncio.to_thread(start, dsn, config, "--rule", "rows")
            await _wait_for(lambda: backfill_row(sql, backfill_id)["status"] == "done", "backfill", WAIT_S)
        finally:
            stop.set()
            thread.join()
        await wait_caught_up(run, dsn)
        await _wait_for(lambda: unexpanded(sql) == 0, "expansion")
    assert writes > 20
    final: dict[Any, Any] = dict(sql.execute("SELECT id, version FROM items").fetchall())  # type: ignore[arg-type]
    # Delivery order: live events at their transaction's commit record, a backfill row at its chunk's high
    # mark.  A message's LSN is the end of its record, so a commit record starting there comes after it.
    cur = sql.cursor(row_factory=psycopg.rows.dict_row)
    delivered = cur.execute(
        "SELECT op, payload FROM listener.events ORDER BY coalesce(commit_lsn, lsn), op <> 'read', lsn"
    ).fetchall()
    latest: dict[int, int | None] = {}  # id -> version (None: deleted)
    backfilled: dict[int, int] = {}
    for e in delivered:
        if e["op"] == "delete":
            latest[e["payload"]["old"]["id"]] = None
            continue
        new = e["payload"]["new"]
        if e["op"] == "read":
            assert new["id"] not in backfilled, "a row backfilled twice"
            backfilled[new["id"]] = new["version"]
            seen = latest.get(new["id"], -1)
            assert seen is not None, f"row {new['id']} delivered from the backfill after its delete"
            assert new["version"] >= seen, f"row {new['id']}: backfill state older than a delivered one"
        latest[new["id"]] = new["version"]
    for i in range(1, n + 1):
        assert latest.get(i, "missing") == final.get(i), (
            f"row {i}: {latest.get(i, 'missing')} != {final.get(i)}"
        )
    row = backfill_row(sql, backfill_id)
    assert row["rows_dropped"] == row["rows_read"] - len(backfilled) > 0  # the windows did drop rows


async def test_cancel_and_status(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    sql.execute("INSERT INTO items SELECT g FROM generate_series(1, 500) g")
    sql.execute("ANALYZE items")  # the estimate is the planner's
    config = write_config(tmp_path / "l.yaml", [ROWS])
    await asyncio.to_thread(setup.init, config, dsn, dsn)
    backfill_id = await asyncio.to_thread(start, dsn, config, "--rule", "rows")  # no ingest runs yet
    status = await acli(dsn, config, "backfill", "status", "--json")
    assert status.exit_code == 0, status.output
    listed = [json.loads(line) for line in status.stdout.splitlines()]
    assert [(r["id"], r["status"], r["rows_total"]) for r in listed] == [(backfill_id, "pending", 500)]
    result = await acli(dsn, config, "backfill", "cancel", str(backfill_id))
    assert result.exit_code == 0 and "cancelled backfill" in result.stdout
    again = await acli(dsn, config, "backfill", "cancel", str(backfill_id))
    assert again.exit_code == 2 and "is cancelled: nothing to cancel" in again.output
    async with running_ingest(dsn, config) as run:  # a cancelled backfill is not carried out
        await asyncio.sleep(0.3)
        await wait_caught_up(run, dsn)
        second = await asyncio.to_thread(start, dsn, config, "--rule", "rows", "--where", "id <= 120")
        await wait_done(sql, second)
        table = await acli(dsn, config, "backfill", "status")
    assert table.exit_code == 0 and "cancelled" in table.stdout and "done" in table.stdout
    assert sorted(e["payload"]["new"]["id"] for e in read_events(dsn)) == list(range(1, 121))
    overall = await acli(dsn, config, "status", "--json")  # `listener status` lists them too
    assert overall.exit_code == 0, overall.output
    found = json.loads(overall.stdout)["backfills"]
    assert [(b["id"], b["status"], b["rows_read"]) for b in found] == [
        (backfill_id, "cancelled", 0),
        (second, "done", 120),
    ]
    shown = await acli(dsn, config, "status")
    assert "backfills" in shown.stdout and "120 of ~" in shown.stdout


@pytest.mark.parametrize(
    ("args", "message", "fix"),
    [
        (["--rule", "rowz"], "no rule named 'rowz'", "did you mean 'rows'?"),
        (["--rule", "msgs"], "listens to logical decoding messages", "name a rule with `table:`"),
        (["--rule", "nokey"], "has no primary key", "ALTER TABLE public.nokey ADD PRIMARY KEY"),
        (["--rule", "rows", "--where", "idd > 3"], 'unknown column "idd"', "did you mean new.id?"),
        (["--rule", "rows", "--where", "id > 1; DROP TABLE items"], "one expression, not a statement", ""),
        (
            ["--rule", "rows", "--where", "id IN (SELECT 1)"],
            "a subquery is not supported",
            "compare its columns",
        ),
        (["--rule", "rows", "--where", "id + 1"], "must be a boolean expression", "one immutable boolean"),
        (["--rule", "rows", "--where", "id >"], "cannot parse", "one SQL boolean expression"),
    ],
)
def test_refusals_name_the_fix(
    dsn: str, sql: Conn, tmp_path: Path, args: list[str], message: str, fix: str
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    sql.execute("CREATE TABLE nokey (id int)")
    rules: list[dict[str, Any]] = [
        ROWS,
        {"name": "msgs", "message": "m", "workflow": "m:f"},
        {"name": "nokey", "table": "nokey", "on": ["insert"], "workflow": "m:f"},
    ]
    config = write_config(tmp_path / "l.yaml", rules)
    setup.init(config, dsn, dsn)
    result = cli(dsn, config, "backfill", "--detach", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and fix in result.output
    row = sql.execute("SELECT count(*) FROM listener.backfills").fetchone()
    assert row == (0,)


async def test_snapshot_true_backfills_a_new_rule_once(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    sql.execute("INSERT INTO items SELECT g FROM generate_series(1, 250) g")
    config = write_config(tmp_path / "l.yaml", [{**ROWS, "snapshot": True}])
    async with running_ingest(dsn, config):
        await _wait_for(
            lambda: sql.execute("SELECT count(*) FROM listener.backfills").fetchone() == (1,), "it"
        )
        row = sql.execute("SELECT id, snapshot FROM listener.backfills").fetchone()
        assert row is not None and row[1] is True
        await wait_done(sql, int(str(row[0])))
    async with running_ingest(dsn, config) as run:  # the second start: no second snapshot
        await asyncio.sleep(0.3)
        await wait_caught_up(run, dsn)
    assert sql.execute("SELECT count(*) FROM listener.backfills").fetchone() == (1,)
    assert sorted(e["payload"]["new"]["id"] for e in read_events(dsn)) == list(range(1, 251))


def test_snapshot_is_for_table_rules_only(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="snapshot: only applies to table rules"):
        write_config(
            tmp_path / "l.yaml", [{"name": "m", "message": "m", "workflow": "m:f", "snapshot": True}]
        )


async def test_the_command_follows_the_backfill_to_its_end(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    sql.execute("INSERT INTO items SELECT g FROM generate_series(1, 450) g")
    config = write_config(tmp_path / "l.yaml", [ROWS])
    async with running_ingest(dsn, config):
        result = await acli(dsn, config, "backfill", "--rule", "rows", "--where", "id > 50")
    assert result.exit_code == 0, result.output
    assert "backfill 1: rule rows, table public.items where id > 50" in result.stderr
    assert "backfill 1 done: 400 row(s) read, 0 superseded by live changes" in result.stderr
    assert result.stdout.strip() == "1"


async def test_cancel_stops_a_running_backfill(
    dsn: str, sql: Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    sql.execute("INSERT INTO items SELECT g FROM generate_series(1, 5000) g")
    config = write_config(tmp_path / "l.yaml", [ROWS])
    async with running_ingest(dsn, config):
        slow_reads(monkeypatch, 0.0005)  # 50 ms a chunk of 100 rows
        backfill_id = await asyncio.to_thread(start, dsn, config, "--rule", "rows")
        await _wait_for(lambda: backfill_row(sql, backfill_id)["rows_read"] > 0, "the first chunk")
        result = await acli(dsn, config, "backfill", "cancel", str(backfill_id))
        assert result.exit_code == 0, result.output
        await asyncio.sleep(0.5)  # chunks in flight commit; no further one is read
        read = backfill_row(sql, backfill_id)["rows_read"]
        await asyncio.sleep(0.5)
        row = backfill_row(sql, backfill_id)
    assert row["status"] == "cancelled" and row["rows_read"] == read < 5000
    assert len(read_events(dsn)) <= read
