"""The README's runtime example, end to end: a row insert → ingest → worker → LLM step → database write."""

from __future__ import annotations

import asyncio

import psycopg

from listener.service import make_worker
from tests.runtime_support import wait_until
from tests.support import make_config, running_ingest

Conn = psycopg.Connection[tuple[object, ...]]


async def test_summarize_writes_the_summary_once(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE tickets (id int PRIMARY KEY, tenant_id text, body text, summary text)")
    config = make_config(
        [
            {
                "name": "summarize_ticket",
                "table": "public.tickets",
                "on": ["insert"],
                "workflow": "listener_examples.support:summarize",
            }
        ]
    )
    stop = asyncio.Event()
    async with running_ingest(dsn, config):
        worker_task = asyncio.create_task(make_worker(config, dsn).run(stop))
        sql.execute(
            "INSERT INTO tickets (id, tenant_id, body) VALUES (42, 'acme', 'The app crashes on login')"
        )

        def summary() -> object:
            row = sql.execute("SELECT summary FROM tickets WHERE id = 42").fetchone()
            return row[0] if row else None

        await wait_until(lambda: summary() is not None, "the summary to be written")
        stop.set()
        await worker_task
    assert summary() == "The app crashes on login"
    steps = sql.execute("SELECT name FROM listener.steps ORDER BY finished_at").fetchall()
    assert steps == [("summarize",), ("save",)]
    assert sql.execute("SELECT status, attempt FROM listener.runs").fetchall() == [("done", 1)]
