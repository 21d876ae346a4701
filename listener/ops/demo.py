"""`listener demo`: a newcomer sees row changes turn into workflow runs, in one command."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from importlib import resources

from rich.console import Console
from rich.table import Table

from listener import service
from listener.pg import conninfo
from listener.rules.config import parse_config
from listener.runtime.workflow import Event

# The demo's tables: the same file creates them in `docker compose up` (docker-entrypoint-initdb.d).
SCHEMA_SQL = resources.files("listener_examples").joinpath("demo.sql").read_text()

WAIT_S = 30.0


async def demo(dsn: str, *, rows: int = 6) -> None:
    console = Console()
    text = resources.files("listener_examples").joinpath("demo.yaml").read_text()
    config = parse_config(text, filename="listener_examples/demo.yaml")
    with conninfo.connection(dsn) as conn:
        conn.execute(SCHEMA_SQL.encode())
    started: list[tuple[Event, float]] = []

    def on_start(event: Event) -> None:
        started.append((event, time.time()))

    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(
        service.run(config, dsn, dsn, stop=stop, on_event_start=on_start, ready=ready), name="service"
    )
    ready_wait = asyncio.create_task(ready.wait())
    await asyncio.wait({ready_wait, task}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready_wait.cancel()
        await task  # raises what stopped the service
        return
    if not ready.is_set():
        stop.set()
        await task
        raise TimeoutError(f"listener did not start streaming within {WAIT_S:.0f}s")
    console.print("[bold]listener is streaming.[/bold] Writing sample rows...\n")
    expected = 0
    with conninfo.connection(dsn) as conn:
        for i in range(rows):
            if i % 3 == 0:
                conn.execute("INSERT INTO demo.users (email) VALUES (%s)", [f"user{i}@example.com"])
                expected += 1
            elif i % 3 == 1:
                subject = "App crashes on login" if i % 2 else "How do I export data?"
                conn.execute(
                    "INSERT INTO demo.tickets (user_email, subject) VALUES (%s, %s)",
                    [f"user{i}@example.com", subject],
                )
                expected += 1
            else:
                cur = conn.execute(
                    "UPDATE demo.tickets SET priority = 'urgent'"
                    " WHERE id = (SELECT max(id) FROM demo.tickets) RETURNING id"
                )
                expected += cur.rowcount
            await asyncio.sleep(0.2)
    deadline = time.monotonic() + WAIT_S
    while len(started) < expected and time.monotonic() < deadline and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # let the last workflows finish
    stop.set()
    await task
    from listener_examples.onboarding import ACTIONS

    table = Table(title="row change → workflow run")
    table.add_column("rule")
    table.add_column("change")
    table.add_column("commit → start", justify="right")
    for event, at in started:
        commit = event.commit_time or datetime.now(UTC)
        latency_ms = (at - commit.timestamp()) * 1000
        row = (event.new or {}).get("email") or (event.new or {}).get("subject", "")
        table.add_row(
            event.rule,
            f"{event.op} {event.table} #{(event.new or {}).get('id')} {row}",
            f"{latency_ms:.1f} ms",
        )
    console.print(table)
    for action in ACTIONS:
        console.print(f"  • {action}")
    console.print(
        f"\n{len(started)} of {expected} changes ran their workflow. "
        "Try `listener tail` with your own rules next (see README)."
    )
