"""Steering the running service: rewinds, backfills and reloads each take their own path, none reloads
or stops the service by the way, and a request is a row in the state schema (NOTIFY only wakes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import Result

from listener import defaults, service
from listener.pg.lsn import format_lsn, parse_lsn
from listener.rules.config import Config
from tests import support
from tests.runtime_support import enqueue, prepare, run_row, step_names
from tests.support import acli, emit_marker, events

Conn = psycopg.Connection[tuple[object, ...]]

SLOT = "listener_test"
WORKFLOW = "listener_examples.onboarding:welcome"
LIVE = {"name": "live", "table": "items", "on": ["insert"], "workflow": WORKFLOW}
# only backfills give this rule rows: the writer never updates
FILL = {"name": "fill", "table": "items", "on": ["update"], "workflow": WORKFLOW}
EXTRA = {"name": "extra", "table": "items", "on": ["insert"], "workflow": WORKFLOW}
WAIT_S = 120.0


def write_config(path: Path, *rules: dict[str, Any]) -> Config:
    return support.write_config(path, rules, retain={"duration": "1h"}, ingest={"backfill_chunk_rows": 50})


@dataclass
class Service:
    task: asyncio.Task[None]
    stop: asyncio.Event

    def alive(self) -> None:
        if self.task.done():
            self.task.result()  # raises what stopped it
            raise AssertionError("the service stopped")


@contextlib.asynccontextmanager
async def running_service(dsn: str, config: Config) -> AsyncIterator[Service]:
    """`listener run --no-workers` in this event loop, until the block ends."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        service.run(config, dsn, dsn, workers=False, stop=stop, ready=ready), name="test-service"
    )
    running = Service(task, stop)
    try:
        await until(lambda: ready.is_set() or task.done(), "the service to stream", running)
        running.alive()
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


async def until(cond: Callable[[], bool], what: str, running: Service | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if running is not None and running.task.done():
            running.alive()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def one(sql: Conn, query: str, params: list[Any] | None = None) -> Any:
    row = sql.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def caught_up(dsn: str, sql: Conn, target: int) -> bool:
    cp = sql.execute("SELECT lsn::text FROM listener.checkpoints WHERE slot_name = %s", [SLOT]).fetchone()
    return cp is not None and parse_lsn(str(cp[0])) > target


def oldest_rewindable(sql: Conn) -> str:
    confirmed = one(
        sql, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [SLOT]
    )
    oldest = one(
        sql, "SELECT min(lsn)::text FROM listener.lsn_history WHERE lsn >= %s::pg_lsn", [str(confirmed)]
    )
    return str(oldest) if oldest is not None else format_lsn(parse_lsn(str(confirmed)))


def recorded(result: Result) -> int:
    assert result.exit_code == 0, (result.output, result.stderr)
    return int(result.stdout.strip().splitlines()[-1])


def requests_finished(sql: Conn) -> bool:
    rewinds = one(sql, "SELECT count(*) FROM listener.rewinds WHERE finished_at IS NULL")
    backfills = one(sql, "SELECT count(*) FROM listener.backfills WHERE status IN ('pending', 'running')")
    chunks = one(sql, "SELECT count(*) FROM listener.backfill_chunks")
    return bool(rewinds == backfills == chunks == 0)


async def test_a_rewind_or_a_backfill_does_not_reload_the_rules(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
    path = tmp_path / "listener.yaml"
    config = write_config(path, LIVE, FILL)
    async with running_service(dsn, config) as running:
        sql.execute("INSERT INTO items SELECT g, g FROM generate_series(1, 10) g")
        marker = emit_marker(dsn)
        await until(lambda: caught_up(dsn, sql, marker), "ingest to catch up", running)
        rewind_id = recorded(await acli(dsn, path, "rewind", "--to-lsn", oldest_rewindable(sql)))
        write_config(path, LIVE, FILL, EXTRA)  # edited, but nobody asked for a reload
        backfill_id = recorded(await acli(dsn, path, "backfill", "--rule", "fill", "--detach"))
        await until(lambda: requests_finished(sql), "the rewind and the backfill", running)
        sql.execute("INSERT INTO items VALUES (11, 11)")
        marker = emit_marker(dsn)
        await until(lambda: caught_up(dsn, sql, marker), "ingest to catch up", running)
        running.alive()
    assert one(sql, "SELECT error FROM listener.rewinds WHERE id = %s", [rewind_id]) is None
    assert one(sql, "SELECT status FROM listener.backfills WHERE id = %s", [backfill_id]) == "done"
    got = events(dsn)
    assert {e["rule"] for e in got} == {"live", "fill"}  # rule extra was never loaded
    assert len([e for e in got if e["rule"] == "live"]) == 11
    assert len([e for e in got if e["rule"] == "fill"]) == 10


async def test_alternating_rewinds_and_backfills_under_a_writer_make_one_run_per_row_and_rule(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    """20 requests (10 rewinds, 10 backfills, each backfill its tenth of the rows) while a writer inserts:
    the service stays up, every request finishes, and every row has exactly one run per rule."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
    sql.execute("INSERT INTO items SELECT g, g FROM generate_series(1, 500) g")  # before the slot: backfills
    path = tmp_path / "listener.yaml"
    config = write_config(path, LIVE, FILL)
    stop_writing = threading.Event()

    def writer() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            i = 100_000
            while not stop_writing.is_set():
                i += 1
                conn.execute("INSERT INTO items VALUES (%s, %s)", [i, i])
                stop_writing.wait(0.01)

    async with running_service(dsn, config) as running:
        thread = threading.Thread(target=writer, name="writer")
        thread.start()
        try:
            await asyncio.sleep(0.5)
            rewinds, backfills = [], []
            for i in range(20):
                running.alive()
                if i % 2 == 0:
                    result = await acli(dsn, path, "rewind", "--to-lsn", oldest_rewindable(sql))
                    rewinds.append(recorded(result))
                else:
                    where = f"id < 100000 AND id % 10 = {i // 2}"
                    result = await acli(dsn, path, "backfill", "--rule", "fill", "--where", where, "--detach")
                    backfills.append(recorded(result))
            await until(lambda: requests_finished(sql), "every request to finish", running)
        finally:
            stop_writing.set()
            thread.join()
        marker = emit_marker(dsn)
        await until(lambda: caught_up(dsn, sql, marker), "ingest to catch up", running)
        running.alive()
    errors = sql.execute("SELECT id, error FROM listener.rewinds WHERE error IS NOT NULL").fetchall()
    assert errors == [] and len(rewinds) == 10
    statuses = sql.execute("SELECT status, count(*) FROM listener.backfills GROUP BY 1").fetchall()
    assert statuses == [("done", 10)]
    per_row = sql.execute(
        """
        SELECT e.rule, (e.payload -> 'new' ->> 'id')::int AS id, count(r.id)
        FROM listener.events e LEFT JOIN listener.runs r ON r.event_key = e.idempotency_key
        GROUP BY 1, 2
        """
    ).fetchall()
    live = {row_id: n for rule, row_id, n in per_row if rule == "live"}
    fill = {row_id: n for rule, row_id, n in per_row if rule == "fill"}
    table = {int(str(r[0])) for r in sql.execute("SELECT id FROM items").fetchall()}
    assert set(live) == table - set(range(1, 501)) and set(live.values()) == {1}
    assert set(fill) == set(range(1, 501)) and set(fill.values()) == {1}
    assert len(table) > 500  # the writer wrote during the requests


# ---------------------------------------------------------------------------------------------------------
# Who may steer the service: a request is a row in the state schema; NOTIFY only wakes.


def intruder(dsn: str, sql: Conn) -> str:
    """The DSN of a role that may connect and nothing more (no privilege on the state schema)."""
    sql.execute("DROP ROLE IF EXISTS intruder")
    sql.execute("CREATE ROLE intruder LOGIN PASSWORD 'x'")
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params.update(user="intruder", password="x")
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def answered(sql: Conn) -> list[tuple[Any, ...]]:
    return sql.execute(
        "SELECT id, requested_by, ok, answer FROM listener.reload_requests ORDER BY id"
    ).fetchall()


async def test_a_notify_without_a_request_row_reloads_nothing(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
    path = tmp_path / "listener.yaml"
    config = write_config(path, LIVE)
    other = intruder(dsn, sql)
    async with running_service(dsn, config) as running:
        write_config(path, LIVE, EXTRA)  # edited: a reload would load rule extra
        with psycopg.connect(other, autocommit=True) as conn:
            for channel in ("listener_reload", "listener_control", "listener_rewind", "listener_backfill"):
                for payload in ("", "reload", "x"):
                    conn.execute("SELECT pg_notify(%s, %s)", [channel, payload])
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO listener.reload_requests (slot_name) VALUES (%s)", [SLOT])
        await asyncio.sleep(1.5)  # time for a reload, were there one (the assertions below do not wait)
        sql.execute("INSERT INTO items VALUES (1, 1)")
        marker = emit_marker(dsn)
        await until(lambda: caught_up(dsn, sql, marker), "ingest to catch up", running)
        running.alive()
    assert [e["rule"] for e in events(dsn)] == ["live"]
    assert answered(sql) == []


async def test_listener_reload_is_a_row_answered_in_the_row(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
    path = tmp_path / "listener.yaml"
    config = write_config(path, LIVE)
    async with running_service(dsn, config) as running:
        write_config(path, LIVE, {**EXTRA, "when": "new.nn > 1"})
        refused = await acli(dsn, path, "reload")
        assert refused.exit_code != 0 and 'unknown column "nn"' in refused.stderr
        write_config(path, LIVE, EXTRA)
        done = await acli(dsn, path, "reload")
        assert done.exit_code == 0, done.stderr
        assert done.stdout.startswith("reloaded: the new rules apply from LSN ")
        sql.execute("INSERT INTO items VALUES (1, 1)")
        marker = emit_marker(dsn)
        await until(lambda: caught_up(dsn, sql, marker), "ingest to catch up", running)
    assert sorted(e["rule"] for e in events(dsn)) == ["extra", "live"]
    rows = answered(sql)
    user = one(sql, "SELECT current_user")
    assert [(r[1], r[2]) for r in rows] == [(user, False), (user, True)]
    assert 'unknown column "nn"' in rows[0][3] and done.stdout.split()[-3] in rows[1][3]


async def test_requests_in_a_burst_share_reloads_at_most_one_a_second(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
    path = tmp_path / "listener.yaml"
    config = write_config(path, LIVE)
    async with running_service(dsn, config) as running:
        started = time.monotonic()
        for _ in range(30):  # one transaction (and one wake-up) each, as fast as they go
            sql.execute("INSERT INTO listener.reload_requests (slot_name) VALUES (%s)", [SLOT])
            sql.execute("NOTIFY listener_reload")
        elapsed = time.monotonic() - started
        await until(lambda: all(r[2] is not None for r in answered(sql)), "the answers", running)
        running.alive()
    rows = answered(sql)
    assert len(rows) == 30 and all(r[2] for r in rows)
    reloads = {r[3] for r in rows}  # each reload's answer names its own LSN
    assert len(reloads) <= elapsed / defaults.RELOAD_INTERVAL_S + 2
    assert len(reloads) < 30


# ---------------------------------------------------------------------------------------------------------
# A second `listener run` on the same slot; odd operator input


ROOT = Path(__file__).parents[2]


def test_a_second_run_on_the_same_slot_stands_by_or_says_who_holds_it_in_one_line(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    """A second `listener run` of the same state schema is a replica: it stands by, saying so in one line
    naming the leader.  One of another state schema cannot be one (its checkpoint is another): it stops with
    one line naming the slot's holder and the fix."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
    path = tmp_path / "listener.yaml"
    write_config(path, LIVE)
    other_schema = tmp_path / "other.yaml"
    other_schema.write_text(path.read_text() + "state_schema: other_state\n")
    env = {**os.environ, "LISTENER_DSN": dsn}
    run = [sys.executable, "-m", "listener", "run", "--no-workers", "-c"]
    processes: list[subprocess.Popen[Any]] = []
    with (tmp_path / "first.log").open("wb") as log:
        first = subprocess.Popen([*run, str(path)], cwd=ROOT, env=env, stdout=log, stderr=log)
    processes.append(first)
    try:
        deadline = time.monotonic() + WAIT_S
        while (
            holder := sql.execute(  # held by the walsender, not the backend that created the slot
                "SELECT s.active_pid FROM pg_replication_slots s JOIN pg_stat_replication r"
                " ON r.pid = s.active_pid WHERE s.slot_name = %s",
                [SLOT],
            ).fetchone()
        ) is None:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        standby_log = tmp_path / "standby.log"
        with standby_log.open("wb") as log:
            standby = subprocess.Popen([*run, str(path)], cwd=ROOT, env=env, stdout=log, stderr=log)
        other = subprocess.Popen(
            [*run, str(other_schema)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
        )
        processes += [standby, other]
        _, err = other.communicate(timeout=WAIT_S)  # never a silent retry forever
        assert other.returncode == 2, err
        assert "Traceback" not in err and "--slot" not in err, err
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1 and f"slot {SLOT!r}" in lines[0] and f"PID {holder[0]}" in lines[0], err
        assert "fix:" in err and "slot:" in err, err
        assert standby.poll() is None, standby_log.read_text()  # the replica waits
        said = standby_log.read_text().splitlines()
        # one line, at the default verbosity: the startup line, saying it stands by and for whom
        assert len(said) == 1 and f"listener run: standby for slot {SLOT!r}, streamed by" in said[0], said
        assert f"PID {first.pid} (epoch 1" in said[0], said
        assert first.poll() is None  # the first one runs on
        standby.terminate()
        standby.wait(WAIT_S)
        assert standby.returncode == 0, standby_log.read_text()
    finally:
        for process in processes:  # none left running when an assert fails
            if process.poll() is None:
                process.terminate()
            process.communicate(timeout=WAIT_S)


def test_listener_worker_outlives_sighup_and_finishes_its_run(dsn: str, sql: Conn, tmp_path: Path) -> None:
    """A terminal closing, or `kill -HUP` meant for `listener run`, must not kill a worker mid-run."""
    prepare(sql)
    config = tmp_path / "listener.yaml"
    config.write_text(
        "worker: {poll_interval_s: 0.2}\n"
        "rules:\n  - {name: r, table: t, on: [insert], workflow: tests.sample_workflows:two_steps}\n"
    )
    log, hold = tmp_path / "worker.log", tmp_path / "hold"
    hold.touch()  # the workflow waits between its two steps while this file exists
    env = {**os.environ, "LISTENER_TEST_CALLS": str(tmp_path / "calls"), "LISTENER_TEST_HOLD": str(hold)}
    enqueue(sql, "run-1", "tests.sample_workflows:two_steps", {"id": 1, "text": "doc"})
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config), "worker"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_S
        while step_names(sql, "run-1") != ["llm"]:
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        worker.send_signal(signal.SIGHUP)
        time.sleep(0.5)  # had the signal killed it, it would be gone by now
        assert worker.poll() is None, log.read_text()
        hold.unlink()
        while run_row(sql, "run-1")["status"] == "running":
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert (run_row(sql, "run-1")["status"], run_row(sql, "run-1")["attempt"]) == ("done", 1)
        assert "SIGHUP" in log.read_text()  # said, not silently ignored
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(WAIT_S) == 0, log.read_text()
