"""Helpers for runtime tests: enqueue events as ingest would, run workers, read runs and steps."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from listener.queue import migrations, queries, store
from listener.runtime.worker import Worker

Conn = psycopg.Connection[tuple[Any, ...]]

EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS public.effects (run_id text, summary text, step_key text);
CREATE TABLE IF NOT EXISTS public.spans (run_id text, key text, started timestamptz, ended timestamptz);
"""


def prepare(sql: Conn) -> None:
    migrations.migrate(sql, "listener")
    sql.execute(EFFECTS_DDL)


def enqueue(
    sql: Conn,
    key: str,
    workflow: str,
    new: dict[str, Any] | None = None,
    *,
    gated: bool = False,
    run_key: str | None = None,
    key_limit: int | None = None,
    ordered: bool = False,
) -> None:
    """An event and its run, with the statement the ingest makes a backfill's with (redelivery adds
    nothing): the event's key ``key`` as given, its rule ``r``."""
    payload = json.dumps({"new": new or {"id": 1, "text": key}, "old": None, "unchanged_toast": []})
    event = {"keys": [key], "payloads": [payload], "run_keys": [run_key]}
    rule = {"source": "test", "rule": "r", "workflow": workflow, "op": "insert", "table_name": "public.t"}
    flow = {"gated": gated, "key_limit": key_limit, "ordered": ordered, "priority": 0}
    with sql.transaction():
        sql.execute("SET LOCAL search_path TO listener")
        sql.execute(
            queries.get("insert_keyed_events"), {**event, **rule, **flow, "lsn": None, "commit_time": None}
        )
        sql.execute(queries.get("wake"), {"channel": store.notify_channel("listener")})


def run_row(sql: Conn, run_id: str) -> dict[str, Any]:
    cur = sql.cursor(row_factory=psycopg.rows.dict_row)
    row = cur.execute("SELECT * FROM listener.runs WHERE id = %s", [run_id]).fetchone()
    assert row is not None, f"no run {run_id}"
    return row


def step_names(sql: Conn, run_id: str) -> list[str]:
    return [
        r[0] for r in sql.execute("SELECT name FROM listener.steps WHERE run_id = %s ORDER BY name", [run_id])
    ]


def effects(sql: Conn) -> list[tuple[Any, ...]]:
    return sql.execute("SELECT run_id, summary, step_key FROM public.effects ORDER BY run_id").fetchall()


def calls(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running_worker(dsn: str, **options: Any) -> AsyncIterator[Worker]:
    options = {"concurrency": 4, "poll_interval": 0.2, **options}
    worker = Worker(dsn, schema="listener", **options)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop), name="test-worker")
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def max_overlap(sql: Conn, key: str | None = None) -> int:
    """The most workflow runs (spans) that were running at the same moment, for one key or all."""
    row = sql.execute(
        """
        SELECT coalesce(max(n), 0) FROM (
            SELECT (SELECT count(*) FROM public.spans o
                    WHERE o.started <= s.started AND o.ended > s.started
                      AND (%(key)s::text IS NULL OR o.key = %(key)s)) AS n
            FROM public.spans s WHERE %(key)s::text IS NULL OR s.key = %(key)s
        ) t
        """,
        {"key": key},
    ).fetchone()
    assert row is not None
    return int(row[0])
