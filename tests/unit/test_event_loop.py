"""The service and the tests run on one event loop: uvloop's (a dependency except on Windows; see
listener.supervise.new_event_loop)."""

from __future__ import annotations

import asyncio

import uvloop

from listener import supervise


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_the_service_runs_on_uvloop() -> None:
    assert supervise.run(_loop_type()) is uvloop.Loop


async def test_async_tests_run_on_the_services_loop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
