"""Workflows and no-op jobs for ``bench/runtime_bench.py`` (not shipped, not a test).

Importable as ``bench_workflows`` with ``bench/`` on ``PYTHONPATH`` (the bench sets it for the processes it
starts).  Holds:

* the listener workflows: ``noop``, ``record_latency`` (notes when it started) and ``two_steps`` (a
  memoized no-op step, then a step whose insert commits with its record);
* the same no-op job for PgQueuer (``pgqueuer_factory``, for ``pgq run``) and Procrastinate
  (``procrastinate_app``, for ``procrastinate --app``).  Both libraries are benchmark-only: they are not
  project dependencies, so they are imported lazily and typed loosely here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import os
import time
from collections.abc import AsyncIterator
from typing import IO, Any

import asyncpg

from listener.pg.conninfo import asyncpg_params
from listener.runtime.workflow import Context

DSN_ENV = "LISTENER_BENCH_DSN"  # the database of the PgQueuer / Procrastinate worker processes
LATENCY_FILE_ENV = "LISTENER_BENCH_LATENCY_FILE"  # where record_latency appends its lines
NOOP_JOB = "bench_noop"  # entrypoint / task name of the competitors' no-op job
EFFECTS_DDL = "CREATE TABLE IF NOT EXISTS public.bench_effects (run_id text PRIMARY KEY, n int NOT NULL)"

# -------------------------------------------------------------------------------------------------------
# listener


async def noop(ctx: Context) -> None:
    """Does nothing: what is left is the runtime's own cost per run."""


_latency_file: IO[str] | None = None


def _note_start(row_id: object, commit_epoch: float, started: float) -> None:
    global _latency_file
    if _latency_file is None:
        _latency_file = open(os.environ[LATENCY_FILE_ENV], "a", buffering=1)  # noqa: SIM115 (kept open)
    _latency_file.write(f"{row_id} {commit_epoch:.6f} {started:.6f}\n")


async def record_latency(ctx: Context) -> None:
    """Notes the wall clock at its start next to the source commit's timestamp (same machine clock)."""
    started = time.time()
    commit = ctx.event.commit_time
    new = ctx.event.new or {}
    _note_start(new.get("id"), commit.timestamp() if commit is not None else float("nan"), started)


def _first() -> dict[str, int]:
    return {"n": 1}


async def two_steps(ctx: Context) -> None:
    """Two memoized steps: a no-op returning a small dict, then an insert committed with its record."""
    first = await ctx.step("first", _first)

    async def save() -> None:
        async with ctx.transaction() as conn:
            await conn.execute(
                "INSERT INTO public.bench_effects (run_id, n) VALUES ($1, $2)", ctx.run_id, first["n"]
            )

    await ctx.step("save", save)


# -------------------------------------------------------------------------------------------------------
# PgQueuer: `python bench/bench_workflows.py pgqueuer` (what `pgq run bench_workflows:pgqueuer_factory`
# does; pgqueuer 1.6.0's `pgq run` fails at start with typer 0.29 while setting up its log level)


async def _pgqueuer_noop(job: Any) -> None:
    return None


@contextlib.asynccontextmanager
async def pgqueuer_factory() -> AsyncIterator[Any]:
    """A QueueManager on one asyncpg connection (PgQueuer's documented setup) with the no-op entrypoint."""
    pgqueuer = importlib.import_module("pgqueuer")
    conn = await asyncpg.connect(**asyncpg_params(os.environ[DSN_ENV]))
    try:
        manager = pgqueuer.QueueManager(pgqueuer.Queries(pgqueuer.AsyncpgDriver(conn)))
        manager.entrypoint(NOOP_JOB)(_pgqueuer_noop)
        yield manager
    finally:
        await conn.close()


def run_pgqueuer(batch_size: int, loop: str) -> None:
    """``pgq run`` without its CLI: the same supervisor; the same event loop (uvloop: pgqueuer depends on
    it and ``pgq run`` uses it) unless ``loop`` is "asyncio"."""
    pgqueuer = importlib.import_module("pgqueuer")
    cli = importlib.import_module("pgqueuer.adapters.cli.cli")
    main = pgqueuer.run("bench_workflows:pgqueuer_factory", batch_size=batch_size)
    with contextlib.suppress(KeyboardInterrupt):
        if loop == "asyncio":
            asyncio.run(main)
        else:
            cli.asyncio_run(main)


# -------------------------------------------------------------------------------------------------------
# Procrastinate: `python -m procrastinate --app bench_workflows.procrastinate_app worker`


async def _procrastinate_noop(id: int) -> None:
    return None


@functools.cache
def make_procrastinate_app(dsn: str) -> Any:
    procrastinate = importlib.import_module("procrastinate")
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    app.task(name=NOOP_JOB)(_procrastinate_noop)
    return app


def __getattr__(name: str) -> Any:
    # `procrastinate --app bench_workflows.procrastinate_app` reads this attribute: the app is made on
    # first use, for the database in LISTENER_BENCH_DSN, so that importing this module needs neither.
    if name == "procrastinate_app":
        return make_procrastinate_app(os.environ[DSN_ENV])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_listener_on_asyncio(argv: list[str]) -> None:
    """The `listener` command on asyncio's default loop instead of uvloop (listener's own: see
    listener.supervise.new_event_loop), to measure what the loop is worth."""
    from listener import supervise
    from listener.cli import main as cli

    supervise.new_event_loop = asyncio.new_event_loop
    cli.main(argv, prog_name="listener")


if __name__ == "__main__":
    import argparse
    import sys

    if sys.argv[1:2] == ["listener-asyncio"]:  # `listener-asyncio ARGS...`: ARGS go to the listener command
        run_listener_on_asyncio(sys.argv[2:])
        sys.exit(0)
    parser = argparse.ArgumentParser(description="worker processes for bench/runtime_bench.py")
    sub = parser.add_subparsers(dest="system", required=True)
    pgq = sub.add_parser("pgqueuer", help="a PgQueuer worker for the no-op job")
    pgq.add_argument("--batch-size", type=int, default=10, help="as `pgq run --batch-size`")
    pgq.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    sub.add_parser("listener-asyncio", help="`listener ARGS...` on asyncio's default loop")
    args = parser.parse_args()
    run_pgqueuer(args.batch_size, args.loop)
