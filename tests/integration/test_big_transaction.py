"""A 1,000,000-row transaction: every row becomes exactly one event, in bounded memory (invariant 6).

Most of it is stored in compact chunks first and expanded into events after; both stay in the bound."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from listener.pg.lsn import parse_lsn
from tests.support import emit_marker

Conn = psycopg.Connection[tuple[object, ...]]
ROWS = 1_000_000
RSS_LIMIT_MB = 300


@pytest.mark.slow
def test_a_million_row_transaction_in_bounded_memory(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE big (id bigint PRIMARY KEY, account int, note text)")
    config = tmp_path / "listener.yaml"
    config.write_text(
        "slot: big\npublication: big\n"
        "ingest: {expand_ahead: 2000000}\n"  # no workers here: let every chunk become events at once
        "rules:\n  - {name: big_in, table: big, on: [insert],"
        " workflow: listener_examples.onboarding:welcome}\n"
    )
    log = tmp_path / "listener.log"
    root = Path(__file__).parents[2]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config), "run", "--no-workers"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    peak = 0
    try:
        child = psutil.Process(proc.pid)
        while sql.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'big'").fetchone() != (
            True,
        ):
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        sql.execute("INSERT INTO big SELECT g, g %% 1000, 'note ' || g FROM generate_series(1, %s) g", [ROWS])
        marker = emit_marker(dsn)
        deadline = time.monotonic() + 600
        while True:
            peak = max(peak, child.memory_info().rss)
            row = sql.execute("SELECT lsn::text FROM listener.checkpoints WHERE slot_name = 'big'").fetchone()
            left = sql.execute("SELECT count(*) FROM listener.event_chunks").fetchone()
            if row and parse_lsn(str(row[0])) > marker and left == (0,):
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "ingest did not finish in 10 minutes"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    count, distinct, low, high = sql.execute(
        "SELECT count(*), count(DISTINCT idempotency_key), min((payload->'new'->>'id')::bigint),"
        " max((payload->'new'->>'id')::bigint) FROM listener.events"
    ).fetchone()  # type: ignore[misc]
    assert (count, distinct, low, high) == (ROWS, ROWS, 1, ROWS)
    assert peak / 2**20 < RSS_LIMIT_MB, f"peak RSS {peak / 2**20:.0f} MB"
