"""Supervised background tasks: never half-alive (invariant 9).

Every long-lived task of the service runs its body under :func:`supervised`: a failure that reconnecting
can cure (a lost connection, a server restarting or shutting down: see
:func:`listener.errors.is_transient`) restarts the
body with exponential backoff and jitter, logged once per outage; any other failure is logged as the
named task's, then raised, so the task group that owns the task stops the whole service loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

import asyncpg

from listener.defaults import HEALTHY_AFTER_S, RESTART_MAX_S, RESTART_MIN_S
from listener.errors import ListenerError, is_transient

logger = logging.getLogger(__name__)

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The service's event loop: uvloop's (libuv), a dependency except on Windows, where asyncio's own
    is used.  The worker spends most of its time in the loop and in socket writes to the database;
    uvloop does both with about a fifth less CPU per run (README "Sustained load")."""
    try:
        import uvloop
    except ImportError:  # Windows: uvloop does not build there
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on :func:`new_event_loop`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


async def supervised(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    stop: asyncio.Event | None = None,
    retry: Callable[[BaseException], bool] = is_transient,
    min_delay: float = RESTART_MIN_S,
    max_delay: float = RESTART_MAX_S,
    healthy_after: float = HEALTHY_AFTER_S,
) -> None:
    """Run ``body()`` until it returns or ``stop`` is set.

    A failure ``retry`` accepts runs ``body()`` again after a backoff (doubling from ``min_delay`` up to
    ``max_delay``, with jitter); the first failure of an outage is logged as a warning, the next ones only
    at debug level.  Any other failure is logged as an error naming the task, and raised."""
    loop = asyncio.get_running_loop()
    delay = min_delay
    failing = False
    while stop is None or not stop.is_set():
        began = loop.time()
        try:
            await body()
            return
        except Exception as exc:
            if not retry(exc):
                # An error listener raises on purpose carries its own fix, printed where the service
                # stops: one line here. Anything else is a bug, logged with its traceback.
                planned = isinstance(exc, ListenerError)
                logger.error(
                    "%s failed, stopping the service: %s",
                    name,
                    describe(exc),
                    exc_info=None if planned else exc,
                )
                raise
            if loop.time() - began >= healthy_after:
                failing, delay = False, min_delay
            if failing:
                logger.debug("%s: still failing (%s); next try in %.1fs", name, describe(exc), delay)
            else:
                logger.warning(
                    "%s interrupted (%s); retrying with backoff up to %.0fs", name, describe(exc), max_delay
                )
                failing = True
        await sleep_unless(stop, delay * (0.5 + random.random()))
        delay = min(max_delay, delay * 2)


def spawn(
    tg: asyncio.TaskGroup,
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    stop: asyncio.Event | None = None,
    retry: Callable[[BaseException], bool] = is_transient,
) -> asyncio.Task[None]:
    """A named, supervised task in ``tg``: a fatal failure stops the group (and the service)."""
    return tg.create_task(supervised(name, body, stop=stop, retry=retry), name=name)


async def sleep_unless(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def first_of(*waits: Awaitable[Any]) -> None:
    """Wait until the first of ``waits`` completes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_first(*waits: asyncio.Event | asyncio.Task[Any], timeout: float | None = None) -> None:
    """Wait until one of the events is set or one of the tasks is done (the tasks are left running), or
    ``timeout`` seconds passed."""
    waiters = [asyncio.ensure_future(w.wait()) for w in waits if isinstance(w, asyncio.Event)]
    tasks = [w for w in waits if isinstance(w, asyncio.Task)]
    try:
        await asyncio.wait([*waiters, *tasks], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def shielded(final: Awaitable[T]) -> T:
    """Run a final write (a batch's commit, the checkpoint reported on stop) to its end even when the
    caller is cancelled meanwhile: its transaction commits or rolls back, never stops half-way on a
    connection that is then closed under it.  The cancellation goes on once it is done."""
    task = asyncio.ensure_future(final)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True  # wait for the write, however often we are cancelled meanwhile
    if cancelled:
        raise asyncio.CancelledError
    return result


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An :class:`asyncio.TaskGroup` that raises its first failure itself, not wrapped in an exception
    group: callers catch it by its type (the others were logged by :func:`supervised`)."""
    try:
        async with asyncio.TaskGroup() as tg:
            yield tg
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None


class ConnectionWatch:
    """Notices when an asyncpg connection closes under a task that only waits on it (a LISTEN): the server
    terminated it or restarted.  ``wake`` is set then, and :meth:`check` raises a transient error."""

    def __init__(self, conn: Any, wake: asyncio.Event, what: str) -> None:
        self.conn = conn
        self.wake = wake
        self.what = what
        self.closed = False

    def _on_close(self, _conn: object) -> None:
        self.closed = True
        self.wake.set()

    def check(self) -> None:
        if self.closed or self.conn.is_closed():
            raise ConnectionResetError(f"the {self.what} connection was closed")

    def __enter__(self) -> ConnectionWatch:
        self.conn.add_termination_listener(self._on_close)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # a connection the server closed is back in asyncpg's pool already, and refuses every call
        with contextlib.suppress(asyncpg.InterfaceError):
            self.conn.remove_termination_listener(self._on_close)
