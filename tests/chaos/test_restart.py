"""`pg_ctl restart -m immediate` (a crash of the server) under load: `listener run` and `listener worker`
ride it out -- no process exits, no event lost, none duplicated, every run done (invariants 1-3, 9)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from listener.pg.embedded import EmbeddedPostgres

ROOT = Path(__file__).parents[2]
CONFIG = """
slot: restart
publication: restart
worker:
  poll_interval_s: 0.5
rules:
  - {name: items_in, table: items, on: [insert], workflow: listener_examples.onboarding:welcome}
"""


@pytest.fixture
def server() -> Iterator[EmbeddedPostgres]:
    """A server of this test's own (it is crashed), durable unlike the shared test server: fsync on."""
    data = Path(tempfile.mkdtemp(prefix="listener-restart-pg-"))
    data.chmod(0o755)
    pg = EmbeddedPostgres(data / "pgdata")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(data, ignore_errors=True)


def restart_immediately(pg: EmbeddedPostgres) -> None:
    """Crash and restart the server (no shutdown checkpoint: recovery replays the WAL)."""
    log = str(pg.data_dir / "server.log")  # the new server's output: not our pipe, which would never end
    pg._run("pg_ctl", "-D", str(pg.data_dir), "-l", log, "-m", "immediate", "-w", "restart", what="restart")


def start(dsn: str, config: Path, log: Path, *command: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config), *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


class Writer(threading.Thread):
    """Inserts rows one per transaction until stopped, reconnecting through the restart."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="writer", daemon=True)
        self.dsn = dsn
        self.stopping = threading.Event()
        self.committed = 0
        self.errors = 0

    def run(self) -> None:
        next_id = 1
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    while not self.stopping.is_set():
                        # an id whose commit was cut off may or may not exist: the table is the truth
                        conn.execute("INSERT INTO items VALUES (%s) ON CONFLICT DO NOTHING", [next_id])
                        next_id += 1
                        self.committed += 1
                        time.sleep(0.005)
            except psycopg.OperationalError:
                self.errors += 1
                next_id += 1
                time.sleep(0.2)


def wait(cond: object, what: str, logs: list[Path], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{log.read_text()[-6000:]}" for log in logs)
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.2)


def scalar(dsn: str, query: str) -> object:
    with contextlib.suppress(psycopg.OperationalError), psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        return row[0] if row else None
    return None


@pytest.mark.slow
def test_an_immediate_restart_under_load_stops_nothing_and_loses_nothing(
    server: EmbeddedPostgres, tmp_path: Path
) -> None:
    dsn = server.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    config = tmp_path / "listener.yaml"
    config.write_text(CONFIG)
    run_log, worker_log = tmp_path / "run.log", tmp_path / "worker.log"
    logs = [run_log, worker_log]
    service = start(dsn, config, run_log, "run")
    worker = None
    writer = Writer(dsn)
    try:
        wait(lambda: scalar(dsn, "SELECT active FROM pg_replication_slots") is True, "streaming", logs)
        worker = start(f"{dsn}&application_name=restart_worker", config, worker_log, "worker")
        writer.start()
        # The worker process is up (it started in parallel with the writer and may still be importing or
        # connecting) and listening: the crash meets it running, not starting.  (It may have claimed
        # nothing: while `listener run`'s own worker keeps up, ingest hands it the new runs.)
        listening = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'restart_worker' AND query ~ '^LISTEN'"
        )
        wait(lambda: scalar(dsn, listening) not in (None, 0), "the worker's LISTEN", logs)
        wait(lambda: writer.committed >= 300, "rows before the restart", logs)
        restart_immediately(server)
        before = writer.committed
        wait(lambda: writer.committed >= before + 300, "rows after the restart", logs)
        writer.stopping.set()
        writer.join(30)
        assert writer.errors >= 1  # the writer did see the crash
        rows = scalar(dsn, "SELECT count(*) FROM items")
        done = "SELECT count(*) FROM listener.runs WHERE status = 'done'"
        state = """
            SELECT json_build_object(
                'events', (SELECT count(*) FROM listener.events),
                'runs', (SELECT json_object_agg(status, n)
                         FROM (SELECT status, count(*) AS n FROM listener.runs GROUP BY 1) s),
                'unfinished', (SELECT json_agg(u) FROM (
                    SELECT id, status, attempt, failures, lease_owner, lease_expires - now() AS lease_left,
                           run_after - now() AS after, last_error,
                           (SELECT json_agg(json_build_array(a.attempt, a.worker, a.outcome, a.error))
                            FROM listener.attempts a WHERE a.run_id = r.id) AS attempts
                    FROM listener.runs r WHERE status <> 'done' ORDER BY seq LIMIT 10) u),
                'at', now())
        """
        try:
            wait(lambda: scalar(dsn, done) == rows, f"{rows} runs done", logs)
        except AssertionError as exc:
            raise AssertionError(f"{scalar(dsn, state)}\n{exc}") from None
        assert service.poll() is None, run_log.read_text()[-3000:]
        assert worker.poll() is None, worker_log.read_text()[-3000:]
        with psycopg.connect(dsn, autocommit=True) as conn:
            # every row exactly one event and one run, done; nothing else
            per_row = conn.execute(
                """
                SELECT i.id, count(e.idempotency_key), count(r.id), bool_and(r.status = 'done')
                FROM items i
                LEFT JOIN listener.events e ON (e.payload -> 'new' ->> 'id')::int = i.id
                LEFT JOIN listener.runs r ON r.event_key = e.idempotency_key
                GROUP BY i.id HAVING count(e.idempotency_key) <> 1 OR count(r.id) <> 1
                    OR NOT bool_and(r.status = 'done')
                """
            ).fetchall()
            assert per_row == []
            assert conn.execute("SELECT count(*) FROM listener.events").fetchone() == (rows,)
            assert conn.execute("SELECT count(*) FROM listener.runs").fetchone() == (rows,)
    finally:
        writer.stopping.set()
        for proc in (service, worker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
