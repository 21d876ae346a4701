"""The supervision helper: transient failures are retried with backoff and logged once; others raised."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from listener.errors import is_transient
from listener.supervise import ConnectionWatch, shielded, spawn, supervised, task_group, wait_first


def test_transient_is_decided_by_exception_class_and_sqlstate() -> None:
    assert is_transient(ConnectionRefusedError())
    assert is_transient(asyncpg.CannotConnectNowError("starting up"))  # 57P03
    assert is_transient(asyncpg.AdminShutdownError("terminating"))  # 57P01
    assert is_transient(asyncpg.SerializationError("x"))  # 40001
    # what asyncpg raised when the server terminated a LISTEN connection during add_listener
    assert is_transient(
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
    )
    assert not is_transient(asyncpg.UndefinedTableError("no such table"))  # 42P01
    assert not is_transient(asyncpg.InsufficientPrivilegeError("no"))  # 42501
    assert not is_transient(ValueError("a bug"))


async def test_transient_failures_are_retried_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    attempts = 0

    async def body() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise ConnectionResetError("cut")

    with caplog.at_level(logging.DEBUG, logger="listener.supervise"):
        await supervised("t", body, min_delay=0.001, max_delay=0.002)
    assert attempts == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "t interrupted (ConnectionResetError: cut)" in warnings[0].getMessage()


async def test_a_fatal_failure_stops_the_group_naming_the_task(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()

    async def fatal() -> None:
        raise asyncpg.UndefinedTableError('relation "x" does not exist')

    with caplog.at_level(logging.ERROR), pytest.raises(asyncpg.UndefinedTableError):
        async with task_group() as tg:
            spawn(tg, "doomed", fatal)
            await stop.wait()  # cancelled by the group: never hangs
    assert any(r.getMessage().startswith("doomed failed, stopping the service") for r in caplog.records)


async def test_stop_ends_the_retries() -> None:
    stop = asyncio.Event()
    attempts = 0

    async def body() -> None:
        nonlocal attempts
        attempts += 1
        stop.set()
        raise OSError("down")

    await supervised("t", body, stop=stop, min_delay=10)
    assert attempts == 1


class PooledConnection:
    """What asyncpg's pool hands out, as it behaves once the server closed the connection: the pool has
    taken it back, and every call raises."""

    def __init__(self) -> None:
        self.listeners: list[object] = []
        self.closed = False

    def add_termination_listener(self, callback: object) -> None:
        self.listeners.append(callback)

    def remove_termination_listener(self, callback: object) -> None:
        raise asyncpg.InterfaceError(
            "cannot call Connection.remove_termination_listener(): connection has been "
            "released back to the pool"
        )

    def is_closed(self) -> bool:
        return self.closed


def test_a_watched_connection_closed_by_the_server_reports_the_lost_connection() -> None:
    """Not asyncpg's complaint about the released connection: the log says what happened."""
    conn, wake = PooledConnection(), asyncio.Event()
    lost = pytest.raises(ConnectionResetError, match="the LISTEN connection was closed")
    with lost, ConnectionWatch(conn, wake, "LISTEN") as watch:
        for callback in conn.listeners:
            callback(conn)  # type: ignore[operator]
        conn.closed = True
        assert wake.is_set()
        watch.check()


async def test_a_shielded_write_finishes_when_its_caller_is_cancelled_then_the_cancellation_goes_on() -> None:
    release = asyncio.Event()
    began = asyncio.Event()
    steps: list[str] = []

    async def write() -> int:
        steps.append("began")
        began.set()
        await release.wait()
        steps.append("committed")
        return 1

    async def caller() -> int:
        return await shielded(write())

    task = asyncio.create_task(caller())
    await asyncio.wait_for(began.wait(), 10)
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # cancelled again while it waits: still waits for the write
    await asyncio.sleep(0)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["began", "committed"]


async def test_a_shielded_write_returns_its_result_or_raises_its_failure() -> None:
    async def ok() -> int:
        return 7

    async def fails() -> int:
        raise ConnectionResetError("lost")

    assert await shielded(ok()) == 7
    with pytest.raises(ConnectionResetError):
        await shielded(fails())


async def test_wait_first_returns_at_the_first_event_or_task_and_leaves_the_tasks_running() -> None:
    stop = asyncio.Event()
    never = asyncio.Event()
    sleeper = asyncio.create_task(asyncio.sleep(3600))
    quick = asyncio.create_task(asyncio.sleep(0))
    await asyncio.wait_for(wait_first(never, quick, sleeper), 10)
    assert quick.done() and not sleeper.done()
    stop.set()
    await asyncio.wait_for(wait_first(never, stop, sleeper), 10)
    assert not sleeper.done()
    sleeper.cancel()
