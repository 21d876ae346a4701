"""Reloading rules while streaming: new rules apply from a precise LSN; a bad config changes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import psycopg
import pytest

from listener.errors import ConfigError
from listener.pg.lsn import parse_lsn
from listener.queue.store import control_channel
from listener.rules.config import load_config
from tests import support
from tests.support import _wait_for, events, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]
ROOT = Path(__file__).parents[2]

RULE_A: dict[str, object] = {
    "name": "a",
    "table": "items",
    "on": ["insert"],
    "workflow": "listener_examples.onboarding:welcome",
}
RULE_B: dict[str, object] = {
    "name": "b",
    "table": "items",
    "on": ["insert"],
    "workflow": "listener_examples.onboarding:welcome",
    "when": "new.n % 2 = 0",
}


def write_config(path: Path, *rules: Mapping[str, object]) -> Path:
    support.write_config(path, rules)
    return path


async def test_new_rules_apply_from_the_reload_lsn_on(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
    path = write_config(tmp_path / "listener.yaml", RULE_A)
    stop_writing = threading.Event()

    def writer() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            i = 0
            while not stop_writing.is_set():
                i += 1
                conn.execute("INSERT INTO items VALUES (%s, %s)", [i, i])

    async with running_ingest(dsn, load_config(path)) as run:
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            await asyncio.sleep(0.3)
            lsn = await run.reload(load_config(write_config(path, RULE_A, RULE_B)))
            await _wait_for(lambda: run.ingest.reloads == [lsn], "the reload to take effect")
            await asyncio.sleep(0.3)
        finally:
            stop_writing.set()
            thread.join()
        await wait_caught_up(run, dsn)
    got = events(dsn)
    a = [e for e in got if e["rule"] == "a"]
    b = [e for e in got if e["rule"] == "b"]
    rows = sql.execute("SELECT count(*) FROM items").fetchone()
    assert rows is not None and len(a) == rows[0]  # rule a: every row, before and after
    assert len({e["idempotency_key"] for e in got}) == len(got)
    # rule b: exactly the even rows committed after the reload message, none before
    after = [e for e in a if parse_lsn(e["commit_lsn"]) > lsn]
    assert after and len(after) < len(a)
    assert sorted(e["payload"]["new"]["n"] for e in b) == sorted(
        e["payload"]["new"]["n"] for e in after if e["payload"]["new"]["n"] % 2 == 0
    )


async def test_an_invalid_config_is_refused_and_the_old_rules_keep_running(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
    path = write_config(tmp_path / "listener.yaml", RULE_A)
    async with running_ingest(dsn, load_config(path)) as run:
        bad = write_config(path, RULE_A, {**RULE_B, "when": "new.nn > 1"})
        with pytest.raises(ConfigError) as caught:
            await run.reload(load_config(bad))
        assert 'unknown column "nn"' in str(caught.value) and caught.value.rule == "b"
        when_line = bad.read_text().splitlines().index("  when: new.nn > 1") + 1
        assert caught.value.file == str(bad) and caught.value.line == when_line
        assert caught.value.hint == "did you mean new.n?"
        sql.execute("INSERT INTO items VALUES (1, 2)")
        await wait_caught_up(run, dsn)
        assert run.ingest.reloads == []
    assert [e["rule"] for e in events(dsn)] == ["a"]


def test_listener_reload_asks_the_running_service(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
    path = write_config(tmp_path / "listener.yaml", RULE_A)
    env = {**os.environ, "LISTENER_DSN": dsn, "LISTENER_CONFIG": str(path)}
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(
        # -v: a reload that went through is said at INFO (routine)
        [sys.executable, "-m", "listener", "-v", "run", "--no-workers"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        sql.execute("SELECT 1")
        deadline = 60.0
        while sql.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'listener_test'"
        ).fetchone() != (True,):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            deadline -= 0.1
            assert deadline > 0
            threading.Event().wait(0.1)
        write_config(path, RULE_A, {**RULE_B, "when": "new.nn > 1"})
        refused = subprocess.run(
            [sys.executable, "-m", "listener", "reload"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert refused.returncode == 2  # a configuration error: the new rules were refused
        assert "refused" in refused.stderr and 'unknown column "nn"' in refused.stderr
        write_config(path, RULE_A, RULE_B)
        done = subprocess.run(
            [sys.executable, "-m", "listener", "reload"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        answer, count = done.stdout.splitlines()  # the LSN, then the rule count on a line of its own
        assert answer.startswith("reloaded: the new rules apply from LSN ") and count == "2 rule(s)"
        lsn = parse_lsn(answer.split()[-1])
        sql.execute("INSERT INTO items VALUES (1, 2)")
        target = sql.execute("SELECT (pg_current_wal_lsn() - '0/0')::int8").fetchone()
        assert target is not None
        for _ in range(300):
            got = {e["rule"] for e in events(dsn)}
            if got == {"a", "b"}:
                break
            threading.Event().wait(0.1)
        assert {e["rule"] for e in events(dsn)} == {"a", "b"}
        assert all(parse_lsn(e["commit_lsn"]) > lsn for e in events(dsn))
        # SIGHUP does the same (answering in the log, not to a command)
        write_config(path, RULE_A, RULE_B, {**RULE_A, "name": "c"})
        proc.send_signal(signal.SIGHUP)
        for _ in range(300):
            if "reload (SIGHUP): ok" in (tmp_path / "run.log").read_text():
                break
            threading.Event().wait(0.1)
        assert "reload (SIGHUP): ok" in (tmp_path / "run.log").read_text()
        sql.execute("INSERT INTO items VALUES (2, 4)")
        for _ in range(300):
            if "c" in {e["rule"] for e in events(dsn)}:
                break
            threading.Event().wait(0.1)
        assert sorted(e["payload"]["new"]["id"] for e in events(dsn) if e["rule"] == "c") == [2]
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    assert proc.returncode == 0
    # a quiet, clean shutdown: no asyncpg warning about the reloader's connection going back to the pool
    assert "Warning" not in (tmp_path / "run.log").read_text()
    assert control_channel("listener", "reload") == "listener_reload"
