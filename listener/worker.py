"""Workers: claim events from the queue and run their workflow functions.

At-least-once for now: a claimed event is marked running; on success done, on error retried with
exponential backoff, failed after the last attempt; an event whose worker died is reclaimed when its lock
is older than the lease.  Workers wake on NOTIFY from ingest and fall back to a slow poll (a lost
notification costs latency, never an event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import traceback
from collections.abc import Callable

import asyncpg

from listener import workflow as wf
from listener.errors import ConfigError
from listener.store import asyncpg_params, notify_channel

logger = logging.getLogger(__name__)

CLAIM_BATCH = 64
MAX_ATTEMPTS = 5
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0
LEASE_SECONDS = 300

_CLAIM = """
UPDATE events e SET status = 'running', attempts = e.attempts + 1, locked_by = $2, locked_at = now()
FROM (
    SELECT id FROM events
    WHERE status = 'pending' AND run_after <= now()
    ORDER BY run_after, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
) c
WHERE e.id = c.id
RETURNING e.id, e.idempotency_key, e.rule, e.workflow, e.op, e.table_name, e.lsn::text AS lsn,
          e.commit_lsn::text AS commit_lsn, e.xid, e.commit_time, e.payload::text AS payload, e.attempts
"""
_DONE = """
UPDATE events SET status = 'done', finished_at = now(), locked_by = NULL, last_error = NULL
WHERE id = $1 AND locked_by = $2 AND status = 'running'
"""
_FAIL = """
UPDATE events
SET status = CASE WHEN attempts >= $3 THEN 'failed' ELSE 'pending' END,
    run_after = now() + make_interval(secs => $4),
    last_error = $5, locked_by = NULL,
    finished_at = CASE WHEN attempts >= $3 THEN now() END
WHERE id = $1 AND locked_by = $2 AND status = 'running'
"""
_RECLAIM = """
UPDATE events SET status = 'pending', locked_by = NULL
WHERE status = 'running' AND locked_at < now() - make_interval(secs => $1)
"""


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))


class Worker:
    """Runs workflows of claimed events, up to ``concurrency`` at a time."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str,
        concurrency: int = 16,
        poll_interval: float = 5.0,
        on_start: Callable[[wf.Event], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.on_start = on_start
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self.completed = 0
        self.failed = 0

    async def run(self, stop: asyncio.Event) -> None:
        pool = await asyncpg.create_pool(
            min_size=1, max_size=4, server_settings={"search_path": self.schema}, **asyncpg_params(self.dsn)
        )
        assert pool is not None
        listen_conn = await pool.acquire()
        await listen_conn.add_listener(notify_channel(self.schema), self._on_notify)
        try:
            await pool.execute(_RECLAIM, float(LEASE_SECONDS))
            while not stop.is_set():
                free = self.concurrency - len(self._tasks)
                rows = await pool.fetch(_CLAIM, min(free, CLAIM_BATCH), self.worker_id) if free else []
                for row in rows:
                    await self._slots.acquire()
                    task = asyncio.create_task(self._run_one(pool, row), name=f"event-{row['id']}")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                if len(rows) == CLAIM_BATCH:
                    continue
                self._wake.clear()
                await _wait_any(self._wake, stop, timeout=self.poll_interval)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await listen_conn.remove_listener(notify_channel(self.schema), self._on_notify)
            await pool.release(listen_conn)
            await pool.close()

    def _on_notify(self, *args: object) -> None:
        self._wake.set()

    async def _run_one(self, pool: asyncpg.Pool, row: asyncpg.Record) -> None:
        try:
            event = wf.Event.from_row(row)
            try:
                if self.on_start is not None:
                    self.on_start(event)
                fn = wf.resolve(event.workflow, rule=event.rule)
                await wf.call(fn, wf.Context(event))
            except Exception as exc:  # a workflow's error is data, never a crash of the worker
                self.failed += 1
                detail = "".join(traceback.format_exception(exc))
                # A workflow that does not import will not import on retry either: fail at once.
                max_attempts = 0 if isinstance(exc, ConfigError) else MAX_ATTEMPTS
                logger.warning("workflow %s failed for event %s: %s", event.workflow, event.id, exc)
                await pool.execute(
                    _FAIL, event.id, self.worker_id, max_attempts, backoff_seconds(event.attempt), detail
                )
                return
            await pool.execute(_DONE, event.id, self.worker_id)
            self.completed += 1
        finally:
            self._slots.release()
            self._wake.set()


async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
