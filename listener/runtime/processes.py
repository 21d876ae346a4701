"""The worker processes of `listener run`: `listener worker` children beside the service's own process.

One process runs ingest and its own workers on one event loop (the local workers take the runs ingest
makes without a claim, listener.queue.handoff); under a sustained load that loop is CPU-bound, and the
runs it cannot take wait on disk.  A child is a plain `listener worker`: it claims those runs from the
state database, leased and fenced like any worker on any machine (README "Sustained load").

* A child gets the parent's config file and its resolved DSNs in its environment (never on its command
  line, where ``ps`` shows them), and the parent's ``-v`` flags.
* Its standard input is a pipe from the parent: when the pipe closes -- the parent stops, or dies even by
  ``kill -9`` -- the child stops as on SIGTERM (its running workflows finish within ``worker.grace_s``,
  then it releases their leases).  No child outlives its service.
* A child that exits while the service runs stops the service loudly, naming it (never half-alive,
  invariant 9); a supervisor (systemd ``Restart=on-failure``) then restarts the whole service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from listener.defaults import CHILD_EXIT_MARGIN_S, CHILD_SIGNALLED_S, CHILD_START_TIMEOUT_S
from listener.errors import ProcessDied
from listener.supervise import first_of

logger = logging.getLogger(__name__)


def auto_count() -> int:
    """``worker.processes`` when the config leaves it out: one child on a machine with two cores or more
    (ingest and workflows then run on two cores), none on one core.  Never more by default: each child
    opens up to about twenty connections (README "Worker processes")."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if cores >= 2 else 0


def child_command(verbose: int, log_format: str = "text") -> list[str]:
    """The command line of a child: no DSN, no config path (those go in its environment)."""
    logging_options = [*(["-v"] * verbose), "--log-format", log_format]
    return [sys.executable, "-m", "listener", *logging_options, "worker", "--stop-with-parent"]


def child_environment(config_path: str, source_dsn: str, state_dsn: str) -> dict[str, str]:
    return {
        **os.environ,
        "LISTENER_CONFIG": str(Path(config_path).resolve()),
        "LISTENER_DSN": source_dsn,
        "LISTENER_STATE_DSN": state_dsn,
    }


async def run_children(
    count: int,
    *,
    command: Sequence[str],
    env: dict[str, str],
    grace_s: float,
    stop: asyncio.Event,
) -> None:
    """Run ``count`` children until ``stop`` is set, then stop them and wait for them (their grace period,
    and a margin) before returning.  A child that exits before ``stop`` raises ProcessDied."""
    async with asyncio.TaskGroup() as tg:
        for index in range(1, count + 1):
            tg.create_task(_child(index, command, env, grace_s, stop), name=f"worker-process-{index}")


async def _child(
    index: int, command: Sequence[str], env: dict[str, str], grace_s: float, stop: asyncio.Event
) -> None:
    # its own session: a Ctrl-C or hangup of the terminal reaches the service, which stops it by its stdin
    proc = await asyncio.wait_for(
        asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, env=env, start_new_session=True
        ),
        CHILD_START_TIMEOUT_S,
    )
    logger.info("worker process %d started (pid %d)", index, proc.pid)
    try:
        await first_of(proc.wait(), stop.wait())
        if proc.returncode == 0:  # stopped on a signal: one sent to the whole service (systemd's) too?
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHILD_SIGNALLED_S)
        if proc.returncode is not None and not stop.is_set():
            raise ProcessDied(
                f"worker process {index} (pid {proc.pid}) {exit_status(proc.returncode)} while the service "
                "ran; the service stops (its own workers' runs finish first)",
                hint="its log is above; restart `listener run` (under systemd, Restart=on-failure does it), "
                "or set `worker.processes: 0` to run workflows in the service's own process only",
            )
    finally:
        await _stop_child(index, proc, grace_s)


async def _stop_child(index: int, proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """Close the child's stdin (it stops as on SIGTERM) and wait for it; kill it after its grace period
    and a margin.  A child that already ended was reported where that was found."""
    if proc.returncode is not None:
        return
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        code = await asyncio.wait_for(proc.wait(), grace_s + CHILD_EXIT_MARGIN_S)
    except TimeoutError:
        logger.error(
            "worker process %d (pid %d) did not stop within %.0f s of its grace period: killed; its runs "
            "are taken over when their leases expire",
            index,
            proc.pid,
            CHILD_EXIT_MARGIN_S,
        )
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return
    if code != 0:
        logger.warning("worker process %d (pid %d) %s while stopping", index, proc.pid, exit_status(code))


def exit_status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def stop_when_stdin_closes(on_close: Callable[[], object]) -> None:
    """In a child: call ``on_close`` (thread-safe: it must schedule its work on the loop) once standard
    input reaches its end, that is when the parent closes the pipe or dies."""

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        on_close()

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()
