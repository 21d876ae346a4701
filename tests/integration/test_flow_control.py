"""Flow control enforced in Postgres: it holds across workers (in-process pools here; separate worker
processes in test_limits_hold_across_two_worker_processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from listener.rules.config import WorkflowLimit
from tests.runtime_support import enqueue, max_overlap, prepare, running_worker, wait_until

Conn = psycopg.Connection[tuple[Any, ...]]
TRACKED = "tests.sample_workflows:tracked"


def done_count(sql: Conn) -> int:
    row = sql.execute("SELECT count(*) FROM listener.runs WHERE status = 'done'").fetchone()
    assert row is not None
    return int(row[0])


async def test_workflow_concurrency_holds_across_two_workers(dsn: str, sql: Conn) -> None:
    prepare(sql)
    for i in range(8):
        enqueue(sql, f"c{i}", TRACKED, gated=True)
    limits = [WorkflowLimit(workflow=TRACKED, concurrency=2)]
    async with (
        running_worker(dsn, limits=limits, concurrency=8),
        running_worker(dsn, limits=limits, concurrency=8),
    ):
        await wait_until(lambda: done_count(sql) == 8, "all runs to finish")
    assert max_overlap(sql) == 2  # never more, and the limit was used


async def test_key_concurrency_and_order(dsn: str, sql: Conn) -> None:
    prepare(sql)
    for i in range(6):  # tenant a: at most 2 at once
        enqueue(sql, f"a{i}", TRACKED, {"key": "a"}, gated=True, run_key="r:a", key_limit=2)
    for i in range(4):  # ticket 7: one at a time, in commit order
        enqueue(sql, f"t{i}", TRACKED, {"key": "t"}, gated=True, run_key="r:7", key_limit=1, ordered=True)
    async with running_worker(dsn, concurrency=10), running_worker(dsn, concurrency=10):
        await wait_until(lambda: done_count(sql) == 10, "all runs to finish")
    assert max_overlap(sql, "a") == 2
    assert max_overlap(sql, "t") == 1
    order = [r[0] for r in sql.execute("SELECT run_id FROM public.spans WHERE key = 't' ORDER BY started")]
    assert order == ["t0", "t1", "t2", "t3"]
    assert max_overlap(sql) >= 3  # different keys did run side by side


async def test_an_ordered_key_waits_for_a_retry_of_its_head(dsn: str, sql: Conn) -> None:
    """In order means in order: while the first run of a key waits to be retried, the next one waits."""
    prepare(sql)
    enqueue(sql, "o0", TRACKED, {"key": "o"}, gated=True, run_key="r:o", key_limit=1, ordered=True)
    enqueue(sql, "o1", TRACKED, {"key": "o"}, gated=True, run_key="r:o", key_limit=1, ordered=True)
    sql.execute("UPDATE listener.runs SET run_after = now() + interval '1 second' WHERE id = 'o0'")
    async with running_worker(dsn):
        await wait_until(lambda: done_count(sql) == 2, "both runs to finish")
    order = [r[0] for r in sql.execute("SELECT run_id FROM public.spans ORDER BY started")]
    assert order == ["o0", "o1"]


def test_limits_hold_across_two_worker_processes(dsn: str, sql: Conn, tmp_path: Path) -> None:
    prepare(sql)
    config = tmp_path / "listener.yaml"
    config.write_text(
        "worker: {poll_interval_s: 0.2, concurrency: 2}\n"  # 2 + 2 per process > the limit of 3
        f"limits:\n  - {{workflow: '{TRACKED}', concurrency: 3, rate: 4/second}}\n"
        f"rules:\n  - {{name: r, table: t, on: insert, workflow: '{TRACKED}'}}\n"
    )
    for i in range(12):
        enqueue(sql, f"p{i}", TRACKED, gated=True)
    log = tmp_path / "workers.log"
    env = {**os.environ, "LISTENER_TEST_SPAN_S": "0.5"}
    command = [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config), "worker"]
    root = Path(__file__).parents[2]
    with log.open("wb") as out:
        workers = [
            subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env)
            for _ in range(2)
        ]
    try:
        deadline = time.monotonic() + 60
        while done_count(sql) < 12:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        assert [w.wait(30) for w in workers] == [0, 0], log.read_text()[-3000:]
    assert max_overlap(sql) <= 3
    # rate: no 1-second window holds more than 4 starts (as the limiter counts them: claim times)
    worst = sql.execute(
        """
        SELECT max((SELECT count(*) FROM listener.attempts b
                    WHERE b.started_at >= a.started_at AND b.started_at < a.started_at + interval '1 second'))
        FROM listener.attempts a
        """
    ).fetchone()
    assert worst is not None and worst[0] <= 4
    workers_used = sql.execute("SELECT count(DISTINCT worker) FROM listener.attempts").fetchone()
    assert workers_used == (2,)  # both processes took part


async def test_ingest_gives_gated_runs_their_key(dsn: str, sql: Conn) -> None:
    from tests.support import make_config, running_ingest, wait_caught_up

    sql.execute("CREATE TABLE tickets (id int PRIMARY KEY, tenant text, body text)")
    sql.execute("CREATE TABLE notes (a int, b int, PRIMARY KEY (a, b))")
    config = make_config(
        [
            {
                "name": "by_ticket",
                "table": "tickets",
                "on": ["insert", "update"],
                "workflow": TRACKED,
                "ordered": True,
            },
            {
                "name": "by_tenant",
                "table": "tickets",
                "on": ["insert"],
                "workflow": TRACKED,
                "key": "{new.tenant}",
                "key_concurrency": 4,
            },
            {
                "name": "plain",
                "table": "notes",
                "on": ["insert", "delete"],
                "workflow": TRACKED,
                "ordered": True,
            },
            {"name": "free", "table": "notes", "on": ["insert"], "workflow": "m:f"},
        ],
        limits=[{"workflow": "m:f", "rate": "10/second"}],
    )
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO tickets VALUES (7, 'acme', 'x')")
        sql.execute("UPDATE tickets SET body = 'y' WHERE id = 7")
        sql.execute("INSERT INTO notes VALUES (1, 2)")
        sql.execute("DELETE FROM notes")
        await wait_caught_up(run, dsn)
    rows = sql.execute(
        "SELECT split_part(id, '/', 1), gated, key, key_limit, ordered FROM listener.runs ORDER BY seq"
    ).fetchall()
    assert rows == [
        ("by_ticket", True, "by_ticket:7", 1, True),  # default key: the primary key
        ("by_tenant", True, "by_tenant:acme", 4, False),  # a template over the row
        ("by_ticket", True, "by_ticket:7", 1, True),
        ("plain", True, "plain:1|2", 1, True),  # composite primary key
        ("free", True, "free:1|2", None, False),  # a limited workflow: gated (its key limits nothing)
        ("plain", True, "plain:1|2", 1, True),  # a delete's key comes from the old row
    ]
