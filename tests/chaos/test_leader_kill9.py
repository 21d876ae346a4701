"""Two `listener run` replicas of one slot under a writer; kill -9 the leader again and again: the standby
takes over within seconds each time, and no event is lost or duplicated (listener.ingest.leadership)."""

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
from tests.chaos.test_kill9 import start_listener
from tests.support import current_wal_lsn, emit_marker

Conn = psycopg.Connection[tuple[object, ...]]
ROOT = Path(__file__).parents[2]
TAKEOVER_S = 10.0
KILLS = 4

CONFIG = """
slot: ha
publication: ha
rules:
  - name: items_in
    table: items
    on: [insert]
    workflow: listener_examples.onboarding:welcome
"""


def checkpoint(sql: Conn) -> int:
    row = sql.execute("SELECT lsn::text FROM listener.checkpoints WHERE slot_name = 'ha'").fetchone()
    return parse_lsn(str(row[0])) if row else 0


def leader(sql: Conn) -> tuple[int, int]:
    """(epoch, PID) of the slot's leader as recorded; (0, 0) before the first election."""
    row = sql.execute("SELECT epoch, holder FROM listener.leaders WHERE slot_name = 'ha'").fetchone()
    if row is None:
        return 0, 0
    return int(str(row[0])), int(str(row[1]).rpartition(" PID ")[2])


def wait_until(cond: object, what: str, logs: list[Path], timeout: float = 60.0) -> float:
    began = time.monotonic()
    while not cond():  # type: ignore[operator]
        if time.monotonic() - began > timeout:
            tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.05)
    return time.monotonic() - began


def test_kill_9_of_the_leader_hands_the_slot_to_the_standby_without_loss_or_duplicates(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    rng = random.Random(20261207)
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    config = tmp_path / "listener.yaml"
    config.write_text(CONFIG)
    subprocess.run(
        [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config), "init"],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_listener(dsn, config, logs[0])]
    wait_until(lambda: leader(sql)[1] == procs[0].pid, "the first leader", logs)
    procs.append(start_listener(dsn, config, logs[1]))
    wait_until(lambda: "standby for slot 'ha'" in logs[1].read_text(), "the second replica to stand by", logs)

    inserted: list[int] = []
    stop_writing = threading.Event()

    def writer() -> None:
        next_id = 1
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop_writing.is_set():
                size = rng.randint(1, 20)
                conn.execute(
                    "INSERT INTO items SELECT g FROM generate_series(%s::int, %s::int) g",
                    [next_id, next_id + size - 1],
                )
                inserted.extend(range(next_id, next_id + size))
                next_id += size
                time.sleep(rng.random() * 0.005)

    thread = threading.Thread(target=writer, name="ha-writer")
    thread.start()
    takeovers: list[float] = []
    try:
        for kill in range(KILLS):
            time.sleep(0.5 + rng.random())
            epoch, pid = leader(sql)
            index = next(i for i, p in enumerate(procs) if p.pid == pid)
            os.kill(pid, signal.SIGKILL)
            procs[index].wait()
            written = current_wal_lsn(dsn)  # a standby streams once the checkpoint passes this
            took = wait_until(
                lambda: leader(sql)[0] > epoch and checkpoint(sql) > written,  # noqa: B023
                f"a standby to take over after kill {kill + 1}",
                logs,
            )
            takeovers.append(took)
            assert leader(sql)[1] == procs[1 - index].pid
            before = logs[index].stat().st_size
            procs[index] = start_listener(dsn, config, logs[index])
            wait_until(
                lambda: b"standby for slot 'ha'" in logs[index].read_bytes()[before:],  # noqa: B023
                "the restarted replica to stand by",
                logs,
            )
        stop_writing.set()
        thread.join()
        marker = emit_marker(dsn)
        wait_until(lambda: checkpoint(sql) > marker, "the last leader to catch up", logs, 120)
    finally:
        stop_writing.set()
        thread.join()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
    print("takeovers (s):", ", ".join(f"{t:.2f}" for t in takeovers))  # shown by pytest -rP
    assert len(takeovers) == KILLS and max(takeovers) < TAKEOVER_S, takeovers
    assert all(proc.returncode == 0 for proc in procs), [log.read_text()[-2000:] for log in logs]
    rows = sql.execute("SELECT (payload->'new'->>'id')::int FROM listener.events").fetchall()
    got = sorted(int(str(r[0])) for r in rows)
    assert got == inserted  # every row once: none lost, none twice
    assert len(inserted) > 500
    assert leader(sql)[0] == KILLS + 1
