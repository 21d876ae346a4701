"""`listener run`'s worker processes: `listener worker` children that take the runs the service's own
workers cannot, stop with it (even when it is killed), and stop it loudly when one dies."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.runtime_support import enqueue, prepare, run_row, step_names

Conn = psycopg.Connection[tuple[object, ...]]

ROOT = Path(__file__).parents[2]
WAIT_S = 60.0
WORKFLOW = "tests.sample_workflows:two_steps"


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux: /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(what: str, check: object, service: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_S} s\n{log.read_text()}"
        time.sleep(0.05)


@pytest.fixture
def service(dsn: str, sql: Conn, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """`listener run` with one worker process, concurrency 1 in each process; runs of ``two_steps`` wait
    between their steps while the returned hold file exists."""
    prepare(sql)
    sql.execute("CREATE TABLE t (id int PRIMARY KEY)")
    config = tmp_path / "listener.yaml"
    config.write_text(
        "slot: processes\npublication: processes\n"
        "worker: {concurrency: 1, processes: 1, poll_interval_s: 0.2, grace_s: 5}\n"
        f"rules:\n  - {{name: r, table: t, on: [insert], workflow: '{WORKFLOW}'}}\n"
    )
    log, hold = tmp_path / "run.log", tmp_path / "hold"
    hold.touch()
    env = {**os.environ, "LISTENER_DSN": dsn, "LISTENER_TEST_HOLD": str(hold)}
    env["LISTENER_TEST_CALLS"] = str(tmp_path / "calls")
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT writes every thread's stack to the log (see exit_code)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "listener", "-c", str(config), "run"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc, log, hold
    finally:
        for pid in children_of(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT_S)


def exit_code(proc: subprocess.Popen[bytes], log: Path) -> int:
    """The service's exit code; if it has not exited within WAIT_S, its threads' stacks (faulthandler, on
    SIGABRT) in the failure, to show where it hangs."""
    try:
        return proc.wait(WAIT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        raise AssertionError(f"the service did not exit within {WAIT_S} s:\n{log.read_text()}") from None


def command_line(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def the_child(proc: subprocess.Popen[bytes], log: Path) -> int:
    found: list[int] = []

    def started() -> bool:
        # Between fork and exec the child still shows the service's own command line.
        found[:] = children_of(proc.pid)
        return bool(found) and b"worker" in command_line(found[0])

    wait_for("the worker process", started, proc, log)
    assert len(found) == 1, found
    cmdline = command_line(found[0])
    assert b"worker" in cmdline and not any(b"dbname" in arg or b"host=" in arg for arg in cmdline), cmdline
    return found[0]


def two_runs_held(sql: Conn, proc: subprocess.Popen[bytes], log: Path) -> int:
    """Two runs, held between their steps: one in the service's own worker, one in its child (each runs
    one at a time).  The child's pid."""
    child = the_child(proc, log)
    for key in ("k1", "k2"):
        enqueue(sql, key, WORKFLOW, {"id": 1, "text": key})
    wait_for("both runs started", lambda: all(step_names(sql, k) == ["llm"] for k in ("k1", "k2")), proc, log)
    workers = {
        str(r[0]).split(":")[1] for r in sql.execute("SELECT worker FROM listener.attempts").fetchall()
    }
    assert workers == {str(proc.pid), str(child)}
    return child


def test_the_worker_process_takes_the_runs_the_service_cannot_and_stops_with_it(
    sql: Conn, service: tuple[subprocess.Popen[bytes], Path, Path]
) -> None:
    proc, log, hold = service
    child = two_runs_held(sql, proc, log)
    hold.unlink()
    wait_for(
        "both runs done", lambda: all(run_row(sql, k)["status"] == "done" for k in ("k1", "k2")), proc, log
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT_S) == 0, log.read_text()
    assert not alive(child)


def test_a_killed_service_takes_its_worker_process_with_it_and_its_run_finishes(
    sql: Conn, service: tuple[subprocess.Popen[bytes], Path, Path]
) -> None:
    proc, log, hold = service
    child = two_runs_held(sql, proc, log)
    proc.kill()
    proc.wait(WAIT_S)
    time.sleep(0.5)
    assert alive(child), "the child stops as on SIGTERM: its running workflow may finish first"
    hold.unlink()
    wait_for("the child's exit", lambda: not alive(child), proc, log)
    statuses = sorted(run_row(sql, k)["status"] for k in ("k1", "k2"))
    # the child's run finished in its grace period; the killed service's run waits for its lease
    assert statuses == ["done", "running"], statuses


def test_a_worker_process_that_dies_stops_the_service_loudly_naming_it(
    service: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    proc, log, _ = service
    child = the_child(proc, log)
    os.kill(child, signal.SIGKILL)
    assert exit_code(proc, log) == 3, log.read_text()
    text = log.read_text()
    assert f"worker process 1 (pid {child}) was killed by SIGKILL while the service ran" in text, text
    assert "fix:" in text and "worker.processes: 0" in text, text
    assert "Traceback" not in text, text
