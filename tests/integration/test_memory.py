"""Memory is bounded by bytes, not counts (invariant 6): the RSS of `listener run` stays under the README's
300 MB through a burst of big NOTIFYs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import psycopg
import pytest

ROOT = Path(__file__).parents[2]
RSS_BOUND = 300 * 1024 * 1024  # the README's bound
Conn = psycopg.Connection[tuple[object, ...]]
CONFIG = (
    "slot: mem\npublication: mem\nrules:\n"
    "  - {{name: r, {rule}, workflow: listener_examples.onboarding:welcome}}\n"
)


class Peak(threading.Thread):
    """Samples a process's resident set size until stopped; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)


@contextmanager
def listener_run(
    dsn: str, config_text: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Peak]]:
    config = tmp_path / "listener.yaml"
    config.write_text(config_text)
    log = tmp_path / "run.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "listener", "-v", "--dsn", dsn, "-c", str(config), "run", "--no-workers"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    peak = Peak(proc.pid)
    peak.start()
    try:
        yield proc, peak
    finally:
        peak.stopping.set()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait(
    proc: subprocess.Popen[bytes], cond: Callable[[], bool], what: str, log: Path, timeout: float = 240
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def count(sql: Conn, query: str) -> int:
    row = sql.execute(query).fetchone()
    assert row is not None
    return int(str(row[0]))


def streaming(sql: Conn) -> bool:
    return count(sql, "SELECT count(*) FROM pg_replication_slots WHERE active") > 0


@pytest.mark.slow
def test_a_burst_of_big_notifies_stays_under_the_bound_dropping_what_does_not_fit(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    """120,000 NOTIFYs of 7.9 kB (940 MB) at once: NOTIFY is at most once, so what the buffer cannot hold
    is dropped, counted and logged -- never held without bound."""
    config = CONFIG.format(rule="channel: hooks")
    log = tmp_path / "run.log"
    with listener_run(dsn, config, tmp_path) as (proc, peak):
        wait(proc, lambda: streaming(sql), "streaming", log)
        time.sleep(1)  # LISTEN follows the start of the stream
        sql.execute(
            "SELECT pg_notify('hooks', g || repeat('x', 7900)) FROM generate_series(1, 120000) g"
        )  # one transaction: delivered at once, at its commit
        events = "SELECT count(*) FROM listener.events"
        wait(proc, lambda: count(sql, events) > 0, "the first events", log)
        settled = -1
        while (now := count(sql, events)) != settled:  # until ingest has written what it kept
            settled = now
            time.sleep(3)
        assert proc.poll() is None, log.read_text()[-3000:]
    assert peak.peak < RSS_BOUND, f"peak RSS {peak.peak / 2**20:.0f} MB"
    assert "NOTIFY" in log.read_text() and "dropped" in log.read_text()
    assert 0 < settled < 120000
