"""Workflows used by the runtime tests (importable from worker subprocesses as tests.sample_workflows).

Real invocations of the "LLM" step are appended to the file named by LISTENER_TEST_CALLS, outside any
transaction, so a test can count how often a step really ran across processes and crashes.  While the
file named by LISTENER_TEST_HOLD exists, two_steps waits between its steps (a test kills the worker
there).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Awaitable

from listener.workflow import Context, workflow

# in-process gate for tests that run workers in the test's own event loop
GATE: asyncio.Event | None = None


def _record_call(step: str, run_id: str) -> None:
    path = os.environ.get("LISTENER_TEST_CALLS")
    if path:
        with open(path, "a") as f:
            f.write(f"{step} {run_id}\n")


async def fake_llm(run_id: str, text: str) -> dict[str, str]:
    _record_call("llm", run_id)
    await asyncio.sleep(0.01)
    return {"summary": f"summary of {text}"}


async def _wait_for_gate() -> None:
    hold = os.environ.get("LISTENER_TEST_HOLD")
    # a file, not an asyncio.Event: the test that holds the gate runs in another process
    while hold and os.path.exists(hold):  # noqa: ASYNC110, ASYNC240 (a stat of a local file)
        await asyncio.sleep(0.05)
    if GATE is not None:
        await GATE.wait()


async def save_effect(ctx: Context, summary: str) -> None:
    """The second step of the sample workflows: a write that commits with the step's record."""

    async def save() -> str:
        async with ctx.transaction() as conn:
            await conn.execute(
                "INSERT INTO public.effects (run_id, summary, step_key) VALUES ($1, $2, $3)",
                ctx.run_id,
                summary,
                ctx.step_key(),
            )
        return "saved"

    await ctx.step("save", save)


@workflow(max_attempts=3, backoff_base=0.01)
async def two_steps(ctx: Context) -> None:
    """An LLM-like call, then a database write that commits with the step's record."""
    new = ctx.event.new or {}
    result = await ctx.step("llm", fake_llm, ctx.run_id, str(new.get("text")))
    await _wait_for_gate()

    await save_effect(ctx, result["summary"])


@workflow(max_attempts=3, backoff_base=0.01)
async def fails_once_between_steps(ctx: Context) -> None:
    result = await ctx.step("llm", fake_llm, ctx.run_id, "x")
    if ctx.attempt == 1:
        raise RuntimeError("connection reset by the LLM provider (first attempt only)")

    await save_effect(ctx, result["summary"])


async def noop(ctx: Context) -> None:
    """Nothing: a schedule's runs in tests that count other workflows' runs."""


async def pause_step(ctx: Context) -> None:
    """One step that sleeps LISTENER_TEST_PAUSE_S seconds (0.2 by default)."""
    await ctx.step("pause", asyncio.sleep, float(os.environ.get("LISTENER_TEST_PAUSE_S", "0.2")))


@workflow(max_attempts=2, backoff_base=0.01)
async def poison(ctx: Context) -> None:
    raise ValueError(f"cannot handle row {ctx.event.new}")


async def not_json(ctx: Context) -> None:
    await ctx.step("opaque", lambda: object())


HELD: asyncio.Event | None = None  # set by holds_transaction once inside its step's transaction


async def holds_transaction(ctx: Context) -> None:
    """A step that keeps its transaction (and with it its run's row) open until the test opens GATE: a
    slow call made inside ctx.transaction()."""

    async def slow() -> str:
        async with ctx.transaction() as conn:
            await conn.execute("SELECT 1")
            if HELD is not None:
                HELD.set()
            await _wait_for_gate()
        return "held"

    await ctx.step("slow", slow)


async def beats_then_steps(ctx: Context) -> None:
    """Runs through a few lease heartbeats (short leases in the test), then records a step."""
    await asyncio.sleep(1.2)
    await ctx.step("after", _text, "x")


def _text(value: str) -> str:
    return value


async def _both(first: Awaitable[object], second: Awaitable[object]) -> None:
    """Await both at once, then raise the first one's exception, if any."""
    for outcome in await asyncio.gather(first, second, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


async def unstorable_beside_good(ctx: Context) -> None:
    """Two steps at once (so the worker records them in one batch): one returns a lone surrogate, which
    jsonb refuses; the other is fine and is recorded."""
    await _both(ctx.step("good", _text, "fine"), ctx.step("bad", _text, "\ud800"))


def _deep(levels: int) -> list[object]:
    value: list[object] = []
    for _ in range(levels):
        value = [value]
    return value


async def too_deep_result(ctx: Context) -> None:
    """A step result nested deeper than JSON can be encoded (Python's recursion limit)."""
    await ctx.step("deep", _deep, 5000)


async def nul_in_result(ctx: Context) -> None:
    await ctx.step("nul", _text, "a\x00b")


async def same_step_twice_at_once(ctx: Context) -> None:
    await _both(ctx.step("twin", asyncio.sleep, 0.05), ctx.step("twin", asyncio.sleep, 0.05))


async def rolls_back(ctx: Context) -> None:
    """A step whose transaction writes, then fails: neither the write nor the step record stays."""

    async def write_then_fail() -> None:
        async with ctx.transaction() as conn:
            await conn.execute(
                "INSERT INTO public.effects (run_id, summary, step_key) VALUES ($1, 'never', 'x')", ctx.run_id
            )
        raise RuntimeError("failed after writing")

    await ctx.step("write", write_then_fail)


@workflow(timeout=0.2, max_attempts=1)
async def too_slow(ctx: Context) -> None:
    await asyncio.sleep(30)


async def slow(ctx: Context) -> None:
    await asyncio.sleep(60)


BROKEN = {"save": True}  # a test flips this to "fix the bug" before retrying


@workflow(max_attempts=1)
async def dies_after_llm(ctx: Context) -> None:
    result = await ctx.step("llm", fake_llm, ctx.run_id, "retry me")
    if BROKEN["save"]:
        raise RuntimeError("bug in the save step")

    await save_effect(ctx, result["summary"])


async def tracked(ctx: Context) -> None:
    """Records when it ran (for flow-control tests): a span per run, outside any step."""
    assert ctx.pool is not None
    key = (ctx.event.new or {}).get("key")
    if ctx.event.key is not None:
        assert ctx.event.key.startswith("r:")  # the run's flow-control key reaches the workflow
    await ctx.pool.execute(
        "INSERT INTO public.spans (run_id, key, started) VALUES ($1, $2, clock_timestamp())", ctx.run_id, key
    )
    await asyncio.sleep(float(os.environ.get("LISTENER_TEST_SPAN_S", "0.2")))
    await ctx.pool.execute("UPDATE public.spans SET ended = clock_timestamp() WHERE run_id = $1", ctx.run_id)


FLAKY_CALLS: dict[str, int] = {}


async def flaky_llm(run_id: str) -> str:
    """Fails twice, then answers (a provider's transient errors)."""
    FLAKY_CALLS[run_id] = FLAKY_CALLS.get(run_id, 0) + 1
    if FLAKY_CALLS[run_id] < 3:
        raise ConnectionError("503 from the LLM provider")
    return "ok"


@workflow(max_attempts=1)
async def step_retries(ctx: Context) -> None:
    """A step retried in place: the run's single attempt survives two transient failures."""
    assert await ctx.step("llm", flaky_llm, ctx.run_id, retries=2, backoff_base=0.01) == "ok"


@workflow(max_attempts=1)
async def step_timeout(ctx: Context) -> None:
    await ctx.step("hang", asyncio.sleep, 30, timeout=0.2)


# Workflows that fail in ways a worker must survive and record (issue 9, point 8).


@workflow(max_attempts=2, backoff_base=0.01)
async def nul_in_error(ctx: Context) -> None:
    """An error text PostgreSQL cannot store as is: a NUL byte, a lone surrogate, and far too long."""
    raise ValueError("bad \x00 byte, bad \udcff char, " + "x" * 200_000)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ of this exception fails")


@workflow(max_attempts=2, backoff_base=0.01)
async def unprintable_error(ctx: Context) -> None:
    raise Unprintable()


@workflow(max_attempts=2, backoff_base=0.01)
async def raises_cancelled(ctx: Context) -> None:
    """User code raising CancelledError (e.g. from a task it cancelled): not the worker's shutdown."""
    raise asyncio.CancelledError()


@workflow(max_attempts=2, backoff_base=0.01)
async def exits(ctx: Context) -> None:
    sys.exit(3)


# a threading.Event: the plain functions below wait on it in a worker thread
PLAIN_GATE = threading.Event()


@workflow(max_attempts=1)
def blocking(ctx: Context) -> str:
    """A plain (not async) workflow that blocks, as a synchronous SDK call would."""
    _record_call("blocking", ctx.run_id)
    if not PLAIN_GATE.wait(15):
        raise RuntimeError("the gate was never opened: the event loop was blocked")
    return "released"


def _blocking_call(run_id: str) -> str:
    _record_call("blocking", run_id)
    if not PLAIN_GATE.wait(15):
        raise RuntimeError("the gate was never opened: the event loop was blocked")
    return "released"


@workflow(max_attempts=1)
async def blocking_step(ctx: Context) -> None:
    """An async workflow whose step is a plain function that blocks."""
    await ctx.step("call", _blocking_call, ctx.run_id)


@workflow(max_attempts=1)
async def hangs(ctx: Context) -> None:
    """No timeout of its own: the worker's default run timeout ends it."""
    await asyncio.sleep(3600)


@workflow(max_attempts=1)
def hangs_plain(ctx: Context) -> None:
    PLAIN_GATE.wait(60)


@workflow(max_attempts=1, timeout=60)
async def patient(ctx: Context) -> None:
    """Its own timeout is longer than the worker's default: it wins."""
    await asyncio.sleep(0.5)


@workflow(max_attempts=2)
async def kills_its_worker(ctx: Context) -> None:
    """The worker process dies in the middle of the run, every time (an OOM kill, a segfault)."""
    _record_call("kill", ctx.run_id)
    os.kill(os.getpid(), signal.SIGKILL)
