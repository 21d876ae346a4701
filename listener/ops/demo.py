"""`listener demo`: a newcomer sees row changes turn into workflow runs, in one command."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

from listener import service
from listener.defaults import DEMO_WAIT_S
from listener.pg import conninfo
from listener.rules.config import parse_config
from listener.runtime.workflow import Event
from listener.supervise import task_group, wait_first

# The demo's tables: the same file creates them in `docker compose up` (docker-entrypoint-initdb.d).
SCHEMA_SQL = resources.files("listener_examples").joinpath("demo.sql").read_text()


@dataclass
class DemoRun:
    """What the demo saw: each event whose workflow started, with the time it started (epoch seconds)."""

    expected: int = 0  # changes written that a rule turns into an event
    started: list[tuple[Event, float]] = field(default_factory=list)


async def demo(dsn: str, *, rows: int = 6, on_streaming: Callable[[], None] | None = None) -> DemoRun | None:
    """Run the service on the demo's rules, write ``rows`` sample rows and collect the workflows started;
    ``on_streaming`` is called once the service streams, before the first row.  None when the service
    stopped by itself before streaming (without an error)."""
    text = resources.files("listener_examples").joinpath("demo.yaml").read_text()
    config = parse_config(text, filename="listener_examples/demo.yaml")
    with conninfo.connection(dsn) as conn:
        conn.execute(SCHEMA_SQL.encode())
    started: list[tuple[Event, float]] = []

    def on_start(event: Event) -> None:
        started.append((event, time.time()))

    stop = asyncio.Event()
    ready = asyncio.Event()
    # The service runs in a task group: if it fails, the rows stop and its error is what this raises.
    async with task_group() as tg:
        task = tg.create_task(
            service.run(config, dsn, dsn, stop=stop, on_event_start=on_start, ready=ready), name="service"
        )
        try:
            return await _write_and_collect(dsn, rows, ready, task, started, on_streaming)
        finally:
            stop.set()


async def _write_and_collect(
    dsn: str,
    rows: int,
    ready: asyncio.Event,
    task: asyncio.Task[None],
    started: list[tuple[Event, float]],
    on_streaming: Callable[[], None] | None,
) -> DemoRun | None:
    """Once the service streams, write the sample rows and wait for their workflows to start."""
    await wait_first(ready, task, timeout=DEMO_WAIT_S)
    if task.done():
        return None  # it stopped by itself (had it failed, the task group would raise its error)
    if not ready.is_set():
        raise TimeoutError(f"listener did not start streaming within {DEMO_WAIT_S:.0f}s")
    if on_streaming is not None:
        on_streaming()
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
    deadline = time.monotonic() + DEMO_WAIT_S
    while len(started) < expected and time.monotonic() < deadline and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # let the last workflows finish
    return DemoRun(expected, started)
