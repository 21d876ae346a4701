"""kill -9 of `listener run` in the middle of a backfill: it resumes after its last durable chunk, and every
row arrives exactly once (invariant 2: backfill keys are a pure function of the backfill and the key)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from tests.chaos.test_kill9 import start_listener

Conn = psycopg.Connection[tuple[object, ...]]

ROWS = 60_000
CONFIG = """
slot: chaos
publication: chaos
ingest:
  backfill_chunk_rows: 1000
  expand_ahead: 1000000      # no workers run here: expand everything
rules:
  - name: items_in
    table: items
    on: [insert, update]
    workflow: listener_examples.onboarding:welcome
"""


def progress(sql: Conn, backfill_id: int) -> tuple[str, int, int]:
    row = sql.execute(
        "SELECT status, rows_read, chunks FROM listener.backfills WHERE id = %s", [backfill_id]
    ).fetchone()
    assert row is not None
    return str(row[0]), int(str(row[1])), int(str(row[2]))


def unexpanded(sql: Conn) -> int:
    row = sql.execute("SELECT count(*) FROM listener.backfill_chunks").fetchone()
    return int(str(row[0])) if row else 0


def test_kill_9_mid_backfill_resumes_without_duplicates(dsn: str, sql: Conn, tmp_path: Path) -> None:
    rng = random.Random(20261124)
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)")
    sql.execute(f"INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(1, {ROWS}) g")
    config = tmp_path / "listener.yaml"
    config.write_text(CONFIG)
    log = tmp_path / "listener.log"
    root = Path(__file__).parents[2]
    base = [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config)]
    subprocess.run([*base, "init"], check=True, capture_output=True, cwd=root)
    done = subprocess.run(
        [*base, "backfill", "--detach", "--rule", "items_in"], check=True, capture_output=True, cwd=root
    )
    backfill_id = int(done.stdout.decode().split()[-1])
    proc = start_listener(dsn, config, log)
    kills, seen = 0, list[int]()
    try:
        deadline = time.monotonic() + 120
        while kills < 3:
            assert time.monotonic() < deadline, "no progress:\n" + log.read_text()[-3000:]
            status, read, _ = progress(sql, backfill_id)
            assert status in ("pending", "running"), f"the backfill ended before the kills: {status}"
            if read > (seen[-1] if seen else 0):
                time.sleep(rng.random() * 0.05)  # somewhere inside the next chunk
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                seen.append(progress(sql, backfill_id)[1])
                proc = start_listener(dsn, config, log)
            time.sleep(0.01)
        while progress(sql, backfill_id)[0] != "done" or unexpanded(sql):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the backfill did not finish:\n" + log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert seen == sorted(seen) and seen[0] > 0 and seen[-1] < ROWS  # killed mid-backfill, never went back
    status, read, chunks = progress(sql, backfill_id)
    assert (status, read, chunks) == ("done", ROWS, ROWS // 1000 + 1)  # each chunk counted once
    rows = sql.execute(
        "SELECT (payload->'new'->>'id')::int, idempotency_key FROM listener.events WHERE op = 'read'"
    ).fetchall()
    assert sorted(int(str(r[0])) for r in rows) == list(range(1, ROWS + 1))  # every row exactly once
    assert all(r[1] == f"items_in/backfill/{backfill_id}/{r[0]}" for r in rows)
    runs = sql.execute("SELECT count(*), count(DISTINCT event_key) FROM listener.runs").fetchone()
    assert runs == (ROWS, ROWS)
