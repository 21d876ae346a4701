"""Workers: claim runs from the queue and execute their workflows durably.

* Claims take pending runs with ``FOR UPDATE SKIP LOCKED``, in batches, so any number of worker processes
  on any number of machines share one state database.
* A claimed run holds a lease (``lease_expires``) renewed by a heartbeat.  A run whose worker died is
  put back to pending when its lease expires and claimed again, with ``attempt`` incremented: the
  attempt is the fencing token every write of a worker names, so a worker that lost its lease can never
  overwrite a newer attempt (invariant 5).  The lost attempt counts as a failed one.
* A failed attempt is retried with exponential backoff and jitter; after the workflow's last attempt the
  run is ``dead``, keeping the error and traceback.  Whatever a workflow raises (even ``SystemExit`` or
  its own ``CancelledError``) is a failed attempt, never a stop of the worker; every run has a timeout.
* Workers wake on NOTIFY from ingest and fall back to a slow poll: a lost notification costs latency,
  never a run (invariant 7).
* Stopping (SIGTERM) stops claiming, lets running workflows finish within a grace period, then releases
  the leases of the unfinished ones so another worker continues at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import asyncpg

from listener import metrics
from listener.defaults import (
    CLAIM_BATCH,
    ERROR_CHARS,
    GATED_SCAN,
    GRACE_S,
    HELD_POLL_S,
    LEASE_S,
    POLL_INTERVAL_S,
    RUN_TIMEOUT_S,
    STEP_CONNECTIONS,
    TRACEBACK_CHARS,
)
from listener.errors import ConfigError, Fenced, StepError, is_transient
from listener.logs import fields
from listener.pg.conninfo import SESSION_SETTINGS, asyncpg_params
from listener.queue import queries
from listener.queue.handoff import Offer
from listener.queue.store import keep_session, notify_channel
from listener.rules.config import WorkflowLimit
from listener.runtime import flow
from listener.runtime import workflow as wf
from listener.runtime.batching import Batched
from listener.supervise import ConnectionWatch, spawn, supervised, task_group, wait_first

logger = logging.getLogger(__name__)


# The statements (sql/queries/runs.sql).
_CLAIM = queries.get("claim")
_CLAIM_LOCK = queries.get("claim_lock")
_GATED_WAITING = queries.get("gated_waiting")
_GATED_CANDIDATES = queries.get("gated_candidates")
_GATED_RUNNING = queries.get("gated_running")
_KEY_HEADS = queries.get("key_heads")
_RATE_USED = queries.get("rate_used")

_DONE = queries.get("complete_runs")
_SAVE_STEPS = queries.get("save_steps")
_FAILED = queries.get("fail_run")
_RELEASE = queries.get("release_runs")
_HEARTBEAT = queries.get("heartbeat")
_RECLAIM = queries.get("reclaim")
_DEAD_AT_CLAIM = queries.get("dead_at_claim")


# The sessions of the worker's own statements.
WORKER_SETTINGS = {
    # Custom plans: asyncpg prepares every statement, and PostgreSQL may switch a prepared statement to a
    # generic plan, made once with the tables' sizes of that moment and kept.  A worker starts beside an
    # empty queue, so that plan reads whole tables -- runs, attempts, events -- which is cheap then and
    # costs milliseconds per claim and completion once they hold 100,000 rows.  Planning each execution
    # costs about 0.2 ms.
    "plan_cache_mode": "force_custom_plan",
    # Under load the statistics of `runs` lag behind: planned as if a handful of runs were pending, a
    # claim reads every pending run by bitmap and sorts them all (5 ms for 5 runs out of 3,000, measured
    # by bench/sustained_load.py), where the ordered scan of runs_claimable reads the first few.  Every
    # statement of the worker looks rows up by key or takes the first few in an index's order.
    "enable_bitmapscan": "off",
}


@dataclass(slots=True)
class WorkerStats:
    claimed: int = 0
    handed: int = 0  # of the claimed: handed over by the local ingest (listener.queue.handoff)
    done: int = 0
    failed: int = 0
    dead: int = 0
    fenced: int = 0
    released: int = 0


class Worker:
    """Runs claimed workflows, up to ``concurrency`` at a time."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str,
        concurrency: int = 16,
        poll_interval: float = POLL_INTERVAL_S,
        lease_seconds: float = LEASE_S,
        grace_seconds: float = GRACE_S,
        run_timeout: float = RUN_TIMEOUT_S,
        on_start: Callable[[wf.Event], None] | None = None,
        limits: Iterable[WorkflowLimit] = (),
        gating: bool = True,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.grace_seconds = grace_seconds
        self.run_timeout = run_timeout
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{id(self) & 0xFFFFFF:x}"
        self.on_start = on_start
        self.limits = {limit.workflow: limit for limit in limits}
        # whether gated runs can exist (the config has limits or gated rules): saves a query per claim
        self.gating = gating or bool(self.limits)
        # Completions and step records of many runs, each sent in one statement (group commit).
        self._completions: Batched[tuple[str, int], bool] = Batched()
        self._steps: Batched[wf.StepRecord, bool] = Batched()
        self.stats = WorkerStats()
        self._wake = asyncio.Event()
        self._running: dict[str, tuple[int, asyncio.Task[None]]] = {}  # run id -> (attempt, task)
        # The runs whose workflow code is running: ``concurrency`` bounds these.  A run whose workflow
        # returned waits for its completion's commit (batched, see _complete) outside them, its lease
        # still renewed: the next run need not wait for that commit.
        self._busy: set[str] = set()
        # The hand-off (listener.queue.handoff): slots offered to the ingest writer and not yet handed back;
        # offers are made only while the last claim found nothing more to take (``_caught_up``) and the
        # claims are running (``_launch`` set).
        self._offered = 0
        self._caught_up = False
        self._launch: Callable[[asyncpg.Record], None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run workflows until ``stop`` is set.  Its tasks (claims, LISTEN, lease heartbeat,
        completions) run supervised: a lost connection or a database restart is retried with backoff,
        any other failure stops the worker (invariant 9)."""
        params = asyncpg_params(self.dsn, {**SESSION_SETTINGS, **WORKER_SETTINGS, "search_path": self.schema})
        # The worker's own queries run on connections it never hands to user code, so they need no
        # reset between uses (asyncpg's default costs a round trip per release).  Workflow code gets
        # its steps' connections from a pool that does reset them, with the database's own settings.  Pools
        # reconnect on their own.
        pool = await asyncpg.create_pool(min_size=2, max_size=6, reset=keep_session, **params)
        user_params = asyncpg_params(self.dsn, {"search_path": self.schema})
        user_pool = await asyncpg.create_pool(
            min_size=1,
            max_size=max(2, min(self.concurrency, STEP_CONNECTIONS)),
            connection_class=wf.StepConnection,
            **user_params,
        )
        assert pool is not None and user_pool is not None
        try:
            async with task_group() as tg:
                spawn(tg, "worker-listen", functools.partial(self._listen, pool, stop), stop=stop)
                # these two also serve the runs that finish during the shutdown's grace period
                background = [
                    spawn(tg, "worker-heartbeat", functools.partial(self._heartbeat, pool)),
                    spawn(
                        tg,
                        "worker-completions",
                        functools.partial(self._completions.serve, functools.partial(_complete_runs, pool)),
                    ),
                    spawn(
                        tg,
                        "worker-steps",
                        functools.partial(self._steps.serve, functools.partial(_save_steps, pool)),
                    ),
                ]
                try:
                    async with task_group() as runs:  # one task per claimed run (see _start)
                        claims = functools.partial(self._claim_forever, pool, user_pool, stop, runs)
                        try:
                            await supervised("worker-claims", claims, stop=stop)
                        finally:
                            await self._shutdown(pool)
                finally:
                    for task in background:
                        task.cancel()
        finally:
            await pool.close()
            await user_pool.close()

    async def _claim_forever(
        self, pool: asyncpg.Pool, user_pool: asyncpg.Pool, stop: asyncio.Event, runs: asyncio.TaskGroup
    ) -> None:
        last_reclaim = -math.inf
        loop = asyncio.get_running_loop()

        def launch(row: asyncpg.Record) -> None:
            self.stats.claimed += 1
            task = runs.create_task(self._start(pool, user_pool, row), name=f"run {row['id']}")
            self._running[row["id"]] = (row["attempt"], task)
            self._busy.add(row["id"])
            task.add_done_callback(functools.partial(self._finished, row["id"]))

        self._launch = launch
        try:
            while not stop.is_set():
                # Cleared before the claim: a NOTIFY arriving while we claim must wake the next wait.
                self._wake.clear()
                if loop.time() - last_reclaim >= self.lease_seconds / 3:
                    await pool.execute(_RECLAIM)  # only matters once a lease expired: not every claim
                    last_reclaim = loop.time()
                free = min(self.concurrency - len(self._busy) - self._offered, CLAIM_BATCH)
                rows = (
                    await pool.fetch(_CLAIM, free, self.worker_id, self.lease_seconds, None)
                    if free > 0
                    else []
                )
                held = False
                if self.gating and free > len(rows) and await pool.fetchval(_GATED_WAITING):
                    gated, held = await self._claim_gated(pool, free - len(rows))
                    rows = [*rows, *gated]
                for row in rows:
                    launch(row)
                if free > 0 and len(rows) == free:
                    continue
                # Nothing more to claim: new runs may come by hand-off until a claim finds a backlog or
                # every slot busy (a slot that frees up then wakes the loop, see _free_slot).
                self._caught_up = free > len(rows) and not held
                timeout = min(self.poll_interval, HELD_POLL_S) if held else self.poll_interval
                await wait_first(self._wake, stop, timeout=timeout)
        finally:
            self._launch = None
            self._caught_up = False

    @property
    def taking_handoff(self) -> bool:
        """Whether the next batch of the local ingest may hand this worker runs (it has nothing to claim)."""
        return self._caught_up and self._launch is not None

    def offer(self) -> Offer | None:
        """Free slots for the local ingest's next batch (listener.queue.handoff): only while the last claim
        found nothing more to take, so handed runs never overtake a backlog (only a batch's own leftovers,
        see hand)."""
        free = self.concurrency - len(self._busy) - self._offered
        if not self.taking_handoff or free <= 0:
            return None
        self._offered += free
        return Offer(self.worker_id, self.lease_seconds, free)

    def hand(self, offer: Offer | None, rows: Sequence[asyncpg.Record], *, left_pending: bool) -> None:
        """Start the runs the ingest committed as claimed by this worker.  Should the claims have stopped
        meanwhile (shutdown), they are not started: their leases expire and they are claimed again."""
        if offer is not None:
            self._offered -= offer.slots
        if left_pending:
            # Claim the batch's leftovers now.  Later batches may still be handed meanwhile (they overtake
            # at most these leftovers); a claim that finds a backlog, or every slot busy, ends the hand-off.
            self._wake.set()
        launch = self._launch
        if launch is None:
            if rows:
                logger.warning(
                    "%d handed run(s) not started (stopping): they run again once their leases expire",
                    len(rows),
                )
            return
        for row in rows:
            self.stats.handed += 1
            launch(row)

    def withdraw(self, offer: Offer) -> None:
        """The ingest's batch was not committed: the offered slots are free again."""
        self._offered -= offer.slots
        self._wake.set()

    async def _listen(self, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        """LISTEN for ingest's wake-ups until ``stop``; raises when the connection is lost."""
        channel = notify_channel(self.schema)
        closed = asyncio.Event()
        conn = await pool.acquire()
        try:
            with ConnectionWatch(conn, closed, "worker's LISTEN") as lost:
                await conn.add_listener(channel, self._on_notify)
                self._wake.set()  # what was announced while nobody listened
                await wait_first(closed, stop)
                lost.check()
        finally:
            with contextlib.suppress(Exception):
                await conn.remove_listener(channel, self._on_notify)
            await pool.release(conn)

    async def _complete(self, run_id: str, attempt: int) -> bool:
        """Record the run done (fenced by its attempt); True once committed, False if refused.  A failure
        to record it leaves the run running: its lease expires and it runs again."""
        return await self._completions.submit((run_id, attempt))

    async def _claim_gated(self, pool: asyncpg.Pool, free: int) -> tuple[list[asyncpg.Record], bool]:
        """Claim runs under flow control: per-workflow concurrency and rate, per-key concurrency and
        order.  One worker at a time decides (a transaction-scoped advisory lock), so the limits hold
        across all processes.  Returns the claimed rows, and whether limits held some runs back."""
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_CLAIM_LOCK, f"listener.claim.{self.schema}")
            candidates = await conn.fetch(_GATED_CANDIDATES, GATED_SCAN)
            if not candidates:
                return [], False
            running = [(row["workflow"], row["key"]) for row in await conn.fetch(_GATED_RUNNING)]
            keys = flow.ordered_keys(candidates)
            heads = {k: seq for k, seq in await conn.fetch(_KEY_HEADS, keys)} if keys else {}
            rate_left: dict[str, int] = {}
            for name, workflow_limit in self.limits.items():
                if workflow_limit.rate_limit is not None:
                    count, period = workflow_limit.rate_limit
                    rate_left[name] = count - int(await conn.fetchval(_RATE_USED, name, period))
            chosen, held = flow.choose(
                candidates, running=running, heads=heads, rate_left=rate_left, limits=self.limits, free=free
            )
            if not chosen:
                return [], held
            return await conn.fetch(_CLAIM, 0, self.worker_id, self.lease_seconds, chosen), held

    def _on_notify(self, *args: object) -> None:
        # Only a wake-up: the claim it causes tells whether runs wait on disk (a notification of the local
        # ingest's own batch arrives after the hand() that already said so, and after the claim it caused).
        self._wake.set()

    def _finished(self, run_id: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(run_id, None)
        self._free_slot(run_id)

    def _free_slot(self, run_id: str) -> None:
        """The run's workflow code is over (its end may still be committing): its slot is free."""
        if run_id in self._busy:
            self._busy.discard(run_id)
            if not self._caught_up:  # claim more (caught up, new runs come by hand-off)
                self._wake.set()

    async def _heartbeat(self, pool: asyncpg.Pool) -> None:
        """Renew the leases of the running runs, until cancelled."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if self._running:
                await pool.execute(_HEARTBEAT, list(self._running), self.worker_id, self.lease_seconds)

    async def _shutdown(self, pool: asyncpg.Pool) -> None:
        """Stop claiming (done by the caller), give running workflows the grace period, release the rest."""
        if not self._running:
            return
        tasks = [task for _, task in self._running.values()]
        logger.warning(
            "stopping: waiting up to %.0fs for %d running workflow(s)", self.grace_seconds, len(tasks)
        )
        _, pending = await asyncio.wait(tasks, timeout=self.grace_seconds)
        if pending:
            unfinished = [rid for rid, (_, task) in self._running.items() if task in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await asyncio.shield(pool.execute(_RELEASE, unfinished, self.worker_id))
            self.stats.released += len(unfinished)
            logger.warning("released %d unfinished run(s) for other workers", len(unfinished))

    async def _start(self, pool: asyncpg.Pool, user_pool: asyncpg.Pool, row: asyncpg.Record) -> None:
        """A claimed run's task: its failure to record an end (a lost connection) is not the worker's --
        the run's lease expires and it runs again -- so it never stops the task group of the runs."""
        try:
            await self._execute(pool, user_pool, row)
        except Exception as exc:
            logger.warning(
                "run %s: its end was not recorded (%s); it runs again once its lease expires",
                row["id"],
                describe(exc),
                extra=fields(run_id=row["id"], attempt=row["attempt"], workflow=row["workflow"]),
            )

    async def _execute(self, pool: asyncpg.Pool, user_pool: asyncpg.Pool, row: asyncpg.Record) -> None:
        run_id, attempt, workflow = row["id"], row["attempt"], row["workflow"]
        started = time.monotonic()
        policy = wf.Policy()
        timeout: float | None = self.run_timeout
        failure: BaseException
        try:
            event = wf.Event.from_row(row)
            ctx = wf.Context(
                event,
                run_id=run_id,
                attempt=attempt,
                pool=user_pool,
                save_step=self._steps.submit,
                recorded=_json(row["steps"]),
            )
            fn = wf.resolve(event.workflow, rule=event.rule)
            policy = wf.policy_of(fn)
            timeout = self.run_timeout if policy.timeout is None else policy.timeout
            if row["failures"] >= policy.max_attempts:  # earlier attempts were lost with their worker
                await self._dead_at_claim(pool, run_id, attempt, row["failures"])
                metrics.record_attempt(workflow, "dead", time.monotonic() - started)
                return
            metrics.record_run_start(workflow, attempt, row["commit_time"])
            if self.on_start is not None:
                self.on_start(event)
            async with asyncio.timeout(timeout):
                await wf.call(fn, ctx)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the worker's own shutdown: the lease is released by _shutdown
            failure = exc  # raised by the workflow's code itself: a failed attempt like any other
        except Fenced as exc:
            self.stats.fenced += 1
            metrics.record_attempt(workflow, "fenced", time.monotonic() - started)
            logger.warning("%s", exc, extra=fields(run_id=run_id, attempt=attempt, workflow=workflow))
            return
        except BaseException as exc:  # whatever user code raises (even SystemExit) is data
            failure = exc
        else:
            self._free_slot(run_id)
            completed = await self._complete(run_id, attempt)
            metrics.record_attempt(workflow, "done" if completed else "fenced", time.monotonic() - started)
            if not completed:
                self.stats.fenced += 1
                logger.warning(
                    "run %s attempt %d finished after losing its lease: completion refused",
                    run_id,
                    attempt,
                    extra=fields(run_id=run_id, attempt=attempt, workflow=workflow),
                )
            else:
                self.stats.done += 1
            return
        self._free_slot(run_id)
        outcome = await self._fail(pool, run_id, attempt, row["failures"], failure, policy, timeout)
        if outcome is not None:
            metrics.record_attempt(workflow, outcome, time.monotonic() - started)

    async def _dead_at_claim(self, pool: asyncpg.Pool, run_id: str, attempt: int, failures: int) -> None:
        error = await pool.fetchval(_DEAD_AT_CLAIM, run_id, attempt)
        self.stats.dead += 1
        extra = fields(run_id=run_id, attempt=attempt)
        logger.error("run %s is dead after %d attempt(s): %s", run_id, failures, error, extra=extra)

    async def _fail(
        self,
        pool: asyncpg.Pool,
        run_id: str,
        attempt: int,
        failures: int,
        exc: BaseException,
        policy: wf.Policy,
        timeout: float | None,
    ) -> str | None:
        """Record a failed attempt; its outcome (failed, dead, fenced), or None when it was not recorded."""
        # A workflow that does not import, or a step whose result cannot be recorded, fails the same way
        # on every retry: dead at once.
        max_attempts = 0 if isinstance(exc, (ConfigError, StepError)) else policy.max_attempts
        if isinstance(exc, TimeoutError):
            error = f"TimeoutError: run exceeded its timeout of {timeout}s"
        else:
            error = describe(exc)
        try:
            detail = "".join(traceback.format_exception(exc))
        except Exception as format_exc:  # a traceback that cannot be rendered
            detail = f"(the traceback could not be rendered: {describe(format_exc)})"
        error, detail = storable(error, ERROR_CHARS), storable(detail, TRACEBACK_CHARS)
        try:
            status = await pool.fetchval(
                _FAILED, run_id, attempt, max_attempts, policy.backoff(failures + 1), error, detail
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as db_exc:
            # the lease will expire and count as this failed attempt
            logger.error(
                "run %s attempt %d failed (%s) and could not be recorded: %s",
                run_id,
                attempt,
                error,
                db_exc,
                extra=fields(run_id=run_id, attempt=attempt),
            )
            return None
        if status is None:
            self.stats.fenced += 1
            return "fenced"
        if status == "dead":
            self.stats.dead += 1
            extra = fields(run_id=run_id, attempt=attempt)
            logger.error("run %s is dead after %d attempt(s): %s", run_id, failures + 1, error, extra=extra)
            return "dead"
        self.stats.failed += 1
        extra = fields(run_id=run_id, attempt=attempt)
        logger.warning("run %s attempt %d failed (will retry): %s", run_id, attempt, error, extra=extra)
        return "failed"


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception from user code, even when its ``__str__`` raises."""
    try:
        text = str(exc)
    except BaseException as str_exc:  # user code again
        text = f"<str() of the exception raised {type(str_exc).__name__}>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def storable(text: str, limit: int) -> str:
    """Text PostgreSQL can store: no NUL, valid UTF-8 (lone surrogates escaped), at most ``limit``
    characters (the middle is cut: a traceback's start and its last lines both matter)."""
    text = text.replace("\x00", "").encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    room = limit - 40  # what the marker takes, at most
    head, tail = text[: room // 2], text[len(text) - (room - room // 2) :]
    return f"{head}\n[... {len(text) - room} characters cut ...]\n{tail}"


async def _complete_runs(pool: asyncpg.Pool, runs: Sequence[tuple[str, int]]) -> list[bool]:
    """Whether each run (id, attempt) is now done; a run missing from the answer was fenced out."""
    rows = await pool.fetch(_DONE, [run_id for run_id, _ in runs], [attempt for _, attempt in runs])
    completed = {row[0] for row in rows}
    return [run_id in completed for run_id, _ in runs]


async def _save_steps(pool: asyncpg.Pool, steps: Sequence[wf.StepRecord]) -> list[bool | BaseException]:
    """Record steps of many runs in one statement; whether each was recorded, or else fenced out.  A
    batch the server refuses (a result it cannot store) is sent again step by step, so that the refusal
    is the one step's, not its neighbours'."""
    try:
        return await _save_steps_once(pool, steps)
    except asyncpg.PostgresError as exc:
        if is_transient(exc):
            raise
        if len(steps) == 1:
            return [exc]
    outcomes: list[bool | BaseException] = []
    for step in steps:
        try:
            outcomes += await _save_steps_once(pool, [step])
        except asyncpg.PostgresError as exc:
            if is_transient(exc):
                raise
            outcomes.append(exc)
    return outcomes


async def _save_steps_once(pool: asyncpg.Pool, steps: Sequence[wf.StepRecord]) -> list[bool | BaseException]:
    rows = await pool.fetch(
        _SAVE_STEPS,
        [s.run_id for s in steps],
        [s.name for s in steps],
        [s.attempt for s in steps],
        [s.result for s in steps],
        [s.started for s in steps],
    )
    saved = {(row[0], row[1]) for row in rows}
    return [(s.run_id, s.name) in saved for s in steps]


def _json(text: str) -> dict[str, object]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value
