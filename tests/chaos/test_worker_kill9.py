"""kill -9 a worker process in the middle of a multi-step workflow: the run resumes on another worker,
the finished step is not run again, and the transactional effect exists exactly once.  SIGTERM stops a
worker gracefully: unfinished runs are released at once for other workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from tests.runtime_support import calls, effects, enqueue, prepare, run_row, step_names

Conn = psycopg.Connection[tuple[object, ...]]
ROOT = Path(__file__).parents[2]
CONFIG = """
worker:
  lease_s: {lease}
  grace_s: {grace}
  poll_interval_s: 0.2
rules:
  - {{name: r, table: t, on: [insert], workflow: tests.sample_workflows:two_steps}}
"""


def start_worker(dsn: str, config: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config), "worker"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **env},
        )


def wait(cond: object, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def test_kill_9_mid_workflow_resumes_elsewhere_without_repeating_a_step(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    prepare(sql)
    config = tmp_path / "listener.yaml"
    config.write_text(CONFIG.format(lease=2, grace=5))
    log, hold, calls_file = tmp_path / "workers.log", tmp_path / "hold", tmp_path / "calls.txt"
    hold.touch()  # the workflow waits between its two steps while this file exists
    env = {"LISTENER_TEST_CALLS": str(calls_file), "LISTENER_TEST_HOLD": str(hold)}
    enqueue(sql, "run-1", "tests.sample_workflows:two_steps", {"id": 1, "text": "doc"})
    first = start_worker(dsn, config, log, env)
    try:
        wait(lambda: step_names(sql, "run-1") == ["llm"], "worker 1 to record the first step", log)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        second = start_worker(dsn, config, log, env)
        try:
            hold.unlink()
            # worker 1's lease (2 s) expires; worker 2 reclaims the run as attempt 2 and finishes it
            wait(lambda: run_row(sql, "run-1")["status"] == "done", "worker 2 to finish the run", log)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert calls(str(calls_file)) == ["llm run-1"]  # the LLM step ran once, in the killed worker
    assert effects(sql) == [("run-1", "summary of doc", "run-1:save")]
    row = run_row(sql, "run-1")
    assert (row["status"], row["attempt"], row["failures"]) == ("done", 2, 1)  # the lost attempt counts
    outcomes = sql.execute(
        "SELECT attempt, outcome FROM listener.attempts WHERE run_id = 'run-1' ORDER BY 1"
    ).fetchall()
    assert outcomes == [(1, "lease expired"), (2, "done")]


def test_a_run_whose_worker_keeps_dying_ends_dead_after_its_attempts(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    """The workflow kills its worker process every time (think OOM killer): each expired lease counts as an
    attempt, so the run ends dead after @workflow(max_attempts=2) instead of killing workers for ever."""
    prepare(sql)
    config = tmp_path / "listener.yaml"
    config.write_text(CONFIG.format(lease=1, grace=1).replace("two_steps", "kills_its_worker"))
    log, calls_file = tmp_path / "workers.log", tmp_path / "calls.txt"
    enqueue(sql, "doomed", "tests.sample_workflows:kills_its_worker")
    for _ in range(4):  # more restarts than attempts: a supervisor restarting the worker
        worker = start_worker(dsn, config, log, {"LISTENER_TEST_CALLS": str(calls_file)})
        try:
            wait(
                lambda w=worker: w.poll() is not None or run_row(sql, "doomed")["status"] == "dead",
                "a claim",
                log,
            )
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(30) == 0, log.read_text()[-3000:]
        if run_row(sql, "doomed")["status"] == "dead":
            break
    row = run_row(sql, "doomed")
    assert (row["status"], row["failures"]) == ("dead", 2), log.read_text()[-3000:]
    assert "lease expired" in row["last_error"]
    assert calls(str(calls_file)) == ["kill doomed", "kill doomed"]  # ran (and killed) exactly twice


def test_sigterm_releases_unfinished_runs_after_the_grace_period(dsn: str, sql: Conn, tmp_path: Path) -> None:
    prepare(sql)
    config = tmp_path / "listener.yaml"
    config.write_text(CONFIG.format(lease=30, grace=1).replace("two_steps", "slow"))
    log = tmp_path / "worker.log"
    enqueue(sql, "slow-1", "tests.sample_workflows:slow")
    worker = start_worker(dsn, config, log, {})
    wait(lambda: run_row(sql, "slow-1")["status"] == "running", "the worker to start the run", log)
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, log.read_text()[-3000:]
    assert time.monotonic() - began < 10  # grace 1 s, then release: not the 30 s lease
    row = run_row(sql, "slow-1")
    assert (row["status"], row["lease_owner"], row["failures"]) == ("pending", None, 0)
    outcome = sql.execute("SELECT outcome FROM listener.attempts WHERE run_id = 'slow-1'").fetchall()
    assert outcome == [("released",)]
    assert "released 1 unfinished run(s)" in log.read_text()
