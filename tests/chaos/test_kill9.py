"""kill -9 the listener process at arbitrary moments: no event lost, none duplicated (invariants 1, 2)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from listener.pg.lsn import parse_lsn
from tests.support import emit_marker

Conn = psycopg.Connection[tuple[object, ...]]

CONFIG = """
slot: chaos
publication: chaos
ingest:
  batch_events: 300
  compact_after: 500         # the 4000-row transactions go mostly into compact chunks...
  compact_chunk_changes: 700
  expand_ahead: 1000000      # ...and all of them become events (no workers run here)
rules:
  - name: items_in
    table: items
    on: [insert]
    workflow: listener_examples.onboarding:welcome
  - name: items_up
    table: items
    on: [update]
    workflow: listener_examples.tickets:escalated
"""


def start_listener(dsn: str, config: Path, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    """`listener run --no-workers` of ``config`` in the background, its output appended to ``log``
    (``flags``: global options such as ``-v``)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "listener",
                *flags,
                "--dsn",
                dsn,
                "-c",
                str(config),
                "run",
                "--no-workers",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parents[2],
        )


def checkpoint(sql: Conn) -> int:
    row = sql.execute("SELECT lsn::text FROM listener.checkpoints WHERE slot_name = 'chaos'").fetchone()
    return parse_lsn(str(row[0])) if row else 0


def slot_flush(sql: Conn) -> int:
    row = sql.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'chaos'"
    ).fetchone()
    return parse_lsn(str(row[0])) if row and row[0] else 0


def chunks_left(sql: Conn) -> int:
    row = sql.execute("SELECT count(*) FROM listener.event_chunks").fetchone()
    return int(str(row[0])) if row else 0


def chunks_written(sql: Conn) -> int:
    sql.execute("SELECT pg_stat_clear_snapshot()")
    row = sql.execute(
        "SELECT n_tup_ins FROM pg_stat_user_tables WHERE schemaname = 'listener' AND relname = 'event_chunks'"
    ).fetchone()
    return int(str(row[0])) if row else 0


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(dsn: str, sql: Conn, tmp_path: Path) -> None:
    rng = random.Random(20261124)
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)")
    config = tmp_path / "listener.yaml"
    config.write_text(CONFIG)
    log = tmp_path / "listener.log"
    subprocess.run(
        [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config), "init"],
        check=True,
        capture_output=True,
        cwd=Path(__file__).parents[2],
    )
    inserted: list[int] = []
    updates = 0
    stop_writing = threading.Event()

    def writer() -> None:
        nonlocal updates
        next_id = 1
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop_writing.is_set():
                size = 4000 if rng.random() < 0.1 else rng.randint(1, 40)
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO items (id) SELECT g FROM generate_series(%s::int, %s::int) g",
                        [next_id, next_id + size - 1],
                    )
                    if next_id > 1:
                        conn.execute("UPDATE items SET v = v + 1 WHERE id = %s", [next_id - 1])
                        updates += 1
                inserted.extend(range(next_id, next_id + size))
                next_id += size
                time.sleep(rng.random() * 0.01)

    thread = threading.Thread(target=writer, name="chaos-writer")
    proc = start_listener(dsn, config, log)
    thread.start()
    kills = 0
    try:
        for _ in range(6):
            time.sleep(0.3 + rng.random() * 1.2)
            # invariant 1, observed from outside: the slot never confirms beyond the durable checkpoint
            assert slot_flush(sql) <= checkpoint(sql) or checkpoint(sql) == 0
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            assert slot_flush(sql) <= checkpoint(sql) or checkpoint(sql) == 0
            proc = start_listener(dsn, config, log)
        stop_writing.set()
        thread.join()
        marker = emit_marker(dsn)
        deadline = time.monotonic() + 120
        while checkpoint(sql) <= marker or chunks_left(sql):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "listener did not catch up:\n" + log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        stop_writing.set()
        thread.join()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert kills == 6
    rows = sql.execute(
        "SELECT op, (payload->'new'->>'id')::int, idempotency_key FROM listener.events ORDER BY seq"
    ).fetchall()
    got_inserts = sorted(int(str(r[1])) for r in rows if r[0] == "insert")
    assert got_inserts == inserted  # every row exactly once
    assert sum(1 for r in rows if r[0] == "update") == updates
    assert len({r[2] for r in rows}) == len(rows)
    assert len(inserted) > 4000  # a big transaction was in flight at some point
    # a clean stop (SIGTERM) reported the final position: nothing left for the server to resend
    assert slot_flush(sql) == checkpoint(sql)
    assert proc.returncode == 0, log.read_text()[-3000:]  # SIGTERM is a graceful stop
    deadline = time.monotonic() + 10  # the server publishes table statistics a moment later
    while chunks_written(sql) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert chunks_written(sql) > 0  # the big transactions did go through compact chunks
