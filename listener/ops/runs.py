"""Inspect and steer runs: ``listener runs``, ``listener runs show``, ``listener retry``, ``listener cancel``.

Reads and writes the state schema directly (psycopg, synchronous): a command is one short transaction.

* Listing and showing never lock anything.
* ``retry`` never touches the run it retries: it inserts a new *generation* of the event's run
  (``key#N``), so history stays as it was and "one run per idempotency key" is only broken on purpose.
  Retries of one event are serialised by an advisory lock, so two at once cannot both pick generation N.
* ``cancel`` takes the run's row lock, the same lock a worker's claim and fenced writes take; a cancelled
  running run's worker then finds ``status <> 'running'`` and every later write of that attempt (step
  records, completion, failure, heartbeat) is refused, exactly as for a lost lease.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.rows import dict_row

from listener.defaults import RUN_LOCK_WAIT_S, RUNS_LIST_LIMIT
from listener.errors import NoSuchRun, PrerequisiteError, RunStateError, from_driver
from listener.pg import conninfo
from listener.queue import migrations, queries, store

STATUSES = ("pending", "running", "done", "dead", "cancelled")

Conn = psycopg.Connection[tuple[Any, ...]]


# ---------------------------------------------------------------------------------------------------------
# What the commands return: plain data, printed as a table for people or as JSON for scripts.


@dataclass(frozen=True, slots=True)
class RunRow:
    """A run as listed by ``listener runs`` (and the first fields of ``runs show --json``)."""

    id: str
    event_key: str
    generation: int
    rule: str | None
    workflow: str
    status: str
    attempt: int
    failures: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None  # first start to finish; to now while unfinished; None if never started
    last_error: str | None


@dataclass(frozen=True, slots=True)
class EventInfo:
    idempotency_key: str
    source: str
    rule: str
    workflow: str
    op: str | None
    table_name: str | None
    lsn: str | None
    commit_lsn: str | None
    xid: int | None
    commit_time: datetime | None
    created_at: datetime
    payload: Any  # {"new": ..., "old": ..., "unchanged_toast": [...]}


@dataclass(frozen=True, slots=True)
class StepInfo:
    name: str
    attempt: int  # the attempt that recorded it
    started_at: datetime
    finished_at: datetime
    duration_s: float
    result: Any


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    attempt: int
    worker: str
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    outcome: str | None  # done | failed | dead | released | lease expired | cancelled; None while running
    error: str | None


@dataclass(frozen=True, slots=True)
class Generation:
    id: str
    generation: int
    status: str


@dataclass(frozen=True, slots=True)
class RunDetail:
    """Everything ``listener runs show`` prints."""

    run: RunRow
    run_after: datetime
    lease_owner: str | None
    lease_expires: datetime | None
    traceback: str | None
    event: EventInfo | None
    steps: list[StepInfo]
    attempts: list[AttemptInfo]
    generations: list[Generation]  # every run of the event, this one included

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self.run),
            "run_after": self.run_after,
            "lease_owner": self.lease_owner,
            "lease_expires": self.lease_expires,
            "traceback": self.traceback,
            "event": asdict(self.event) if self.event is not None else None,
            "steps": [asdict(s) for s in self.steps],
            "attempts": [asdict(a) for a in self.attempts],
            "generations": [asdict(g) for g in self.generations],
        }


@dataclass(frozen=True, slots=True)
class Retried:
    id: str  # the new run
    generation: int
    retried: str  # the run named on the command line
    was: str  # its status


@dataclass(frozen=True, slots=True)
class Cancelled:
    id: str
    was: str  # pending | running
    attempt: int


# ---------------------------------------------------------------------------------------------------------
# SQL (sql/queries/runs.sql).  Names are unqualified: the connection's search_path is the state schema.

_LIST = queries.get("list_runs")
_SHOW_RUN = queries.get("show_run")
_SHOW_EVENT = queries.get("show_event")
_SHOW_STEPS = queries.get("show_steps")
_SHOW_ATTEMPTS = queries.get("show_attempts")
_GENERATIONS = queries.get("generations")
_RETRY_TARGET = queries.get("retry_target")
_RETRY_LOCK = queries.get("retry_lock")
_RETRY_RUNS = queries.get("retry_runs")
_NEXT_GENERATION = queries.get("next_generation")
_WAKE = queries.get("wake")
# A new generation copies what its run was made with from the event and rule (event_key, workflow, and the
# flow-control settings), whatever columns those are; the columns of a run's own progress start afresh.
_RUN_STATE_COLUMNS = frozenset(
    {"id", "seq", "generation", "status", "attempt", "failures", "run_after", "lease_owner", "lease_expires"}
    | {"last_error", "traceback", "created_at", "started_at", "finished_at"}
)
_RUN_COLUMNS_NOW = queries.get("run_columns")
_RESUME = queries.get("resume_run")
_RETRY_INSERT = queries.query("insert_generation")
_CANCEL_TARGET = queries.get("cancel_target")
_CANCEL = queries.get("cancel_run")
_CANCEL_ATTEMPT = queries.get("cancel_attempt")


@contextmanager
def connect(dsn: str, schema: str) -> Iterator[Conn]:
    """An autocommit connection to the state database with ``schema`` on the search path."""
    with conninfo.connection(dsn, what="the state database") as conn:
        if migrations.schema_version(conn, schema) is None:
            raise PrerequisiteError(
                f"the state schema {schema!r} does not exist in the state database: nothing has run yet",
                hint="`listener init` (or `listener run`) creates it; check --state-dsn and `state_schema:`",
            )
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        yield conn


def list_runs(
    conn: Conn,
    *,
    statuses: Sequence[str] = (),
    workflow: str | None = None,
    rule: str | None = None,
    limit: int = RUNS_LIST_LIMIT,
) -> list[RunRow]:
    """Runs, newest first, filtered by status (any of), workflow and rule."""
    params = {"statuses": list(statuses) or None, "workflow": workflow, "rule": rule, "limit": limit}
    rows = conn.cursor(row_factory=dict_row).execute(_LIST, params).fetchall()
    return [RunRow(**row) for row in rows]


def show_run(conn: Conn, run_id: str) -> RunDetail:
    """The run, its event, steps, attempts and generations; NoSuchRun when there is none."""
    cur = conn.cursor(row_factory=dict_row)
    with conn.transaction():
        # one snapshot for all the parts
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = cur.execute(_SHOW_RUN, [run_id]).fetchone()
        if row is None:
            raise NoSuchRun(run_id)
        extra = {k: row.pop(k) for k in ("run_after", "lease_owner", "lease_expires", "traceback")}
        run = RunRow(**row)
        event_row = cur.execute(_SHOW_EVENT, [run.event_key]).fetchone()
        steps = [StepInfo(**r) for r in cur.execute(_SHOW_STEPS, [run_id]).fetchall()]
        attempts = [AttemptInfo(**r) for r in cur.execute(_SHOW_ATTEMPTS, [run_id]).fetchall()]
        generations = [Generation(**r) for r in cur.execute(_GENERATIONS, {"key": run.event_key}).fetchall()]
    return RunDetail(
        run=run,
        event=EventInfo(**event_row) if event_row is not None else None,
        steps=steps,
        attempts=attempts,
        generations=generations,
        **extra,
    )


def retry(conn: Conn, run_id: str, *, schema: str, rerun: bool = False) -> Retried:
    """Run a dead or cancelled run again, and wake workers.

    Without ``rerun``: the same run goes back to pending with its failures reset: a new attempt that keeps
    the steps already recorded (a retry never repeats a finished LLM call).  With ``rerun``: a new
    generation of the event (id ``KEY#N``) that starts afresh, also for a done run.
    Refused while any run of the same event is pending or running (it will run, or is running), and for an
    event that already has a done run unless ``rerun``: one run per idempotency key, unless on purpose."""
    cur = conn.cursor(row_factory=dict_row)
    with conn.transaction(), _lock_wait(conn, run_id):
        target = cur.execute(_RETRY_TARGET, [run_id]).fetchone()
        if target is None:
            raise NoSuchRun(run_id)
        key = target["event_key"]
        cur.execute(_RETRY_LOCK, [key])
        runs = cur.execute(_RETRY_RUNS, {"key": key}).fetchall()
        this = next((r for r in runs if r["id"] == run_id), None)
        if this is None:  # pruned (`runs: keep:`) while this waited for its lock
            raise NoSuchRun(run_id)
        _check_retry(this, runs, rerun=rerun)
        if not rerun:
            cur.execute(_RESUME, [run_id])
            cur.execute(_WAKE, {"channel": store.notify_channel(schema)})
            return Retried(id=run_id, generation=this["generation"], retried=run_id, was=this["status"])
        # above the event's runs (locked above) and the generations unfinished rewinds of its rule hold
        params = {"event_key": key, "rule": None, "from": None, "up_to": None, "finished_too": False}
        generation = int(conn.execute(_NEXT_GENERATION, params).fetchone()[0])  # type: ignore[index]
        new_id = f"{key}#{generation}"
        copied = [
            sql.Identifier(c)
            for (c,) in conn.execute(_RUN_COLUMNS_NOW).fetchall()
            if c not in _RUN_STATE_COLUMNS
        ]
        insert = _RETRY_INSERT.compose(columns=sql.SQL(", ").join(copied))
        try:
            cur.execute(insert, [new_id, generation, run_id])
        except pgerrors.UniqueViolation as exc:  # not made by `listener retry`: its ids follow generations
            raise RunStateError(
                f"cannot retry run {run_id!r}: a run with id {new_id!r} already exists",
                run_id=run_id,
                status=this["status"],
                hint=f"`listener runs show {new_id}`",
            ) from exc
        # Delivered at commit: idle workers claim the new run now instead of at their next poll.
        cur.execute(_WAKE, {"channel": store.notify_channel(schema)})
    return Retried(id=new_id, generation=generation, retried=run_id, was=this["status"])


def _check_retry(this: dict[str, Any], runs: list[dict[str, Any]], *, rerun: bool) -> None:
    run_id, status = this["id"], this["status"]
    if status == "pending":
        raise RunStateError(
            f"run {run_id!r} is pending: a worker will run it (it has had {this['attempt']} attempt(s)); "
            "there is nothing to retry",
            run_id=run_id,
            status=status,
            hint=f"to stop it instead: listener cancel {run_id}",
        )
    if status == "running":
        raise RunStateError(
            f"run {run_id!r} is running (attempt {this['attempt']} on {this['lease_owner']}); "
            "there is nothing to retry",
            run_id=run_id,
            status=status,
            hint=f"wait for it to finish, or `listener cancel {run_id}` first",
        )
    for other in runs:
        if other["status"] in ("pending", "running"):
            raise RunStateError(
                f"run {other['id']!r} of the same event is already {other['status']}: "
                f"retrying run {run_id!r} would run the event twice",
                run_id=run_id,
                status=status,
                hint=f"`listener runs show {other['id']}`; retry once it is dead or cancelled",
            )
    if rerun:
        return
    done = [r for r in runs if r["status"] == "done"]
    if done:
        which = "it is done" if status == "done" else f"run {done[-1]['id']!r} of the same event is done"
        raise RunStateError(
            f"will not retry run {run_id!r}: {which}, and an event runs once per idempotency key",
            run_id=run_id,
            status=status,
            hint=f"to run it again on purpose, as a new generation: listener retry --rerun {run_id}",
        )


def cancel(conn: Conn, run_id: str) -> Cancelled:
    """Cancel a pending or running run; a running run's worker is fenced out of every later write."""
    cur = conn.cursor(row_factory=dict_row)
    with conn.transaction(), _lock_wait(conn, run_id):
        row = cur.execute(_CANCEL_TARGET, [run_id]).fetchone()
        if row is None:
            raise NoSuchRun(run_id)
        status = row["status"]
        if status == "done":
            raise RunStateError(
                f"run {run_id!r} is done: there is nothing to cancel",
                run_id=run_id,
                status=status,
                hint=f"to run it again on purpose: listener retry --rerun {run_id}",
            )
        if status == "dead":
            raise RunStateError(
                f"run {run_id!r} is dead (after {row['failures']} failed attempt(s)): it will not run again, "
                "there is nothing to cancel",
                run_id=run_id,
                status=status,
                hint=f"`listener runs show {run_id}` shows its error",
            )
        if status == "cancelled":
            raise RunStateError(f"run {run_id!r} is already cancelled", run_id=run_id, status=status)
        cur.execute(_CANCEL, [run_id])
        if status == "running":
            cur.execute(_CANCEL_ATTEMPT, [run_id, row["attempt"]])
    return Cancelled(id=run_id, was=status, attempt=row["attempt"])


@contextmanager
def _lock_wait(conn: Conn, run_id: str) -> Iterator[None]:
    """Bound the wait for the run's row lock, inside the current transaction; a deadlock is an error to
    try again, not a bug.

    A worker holds that lock for an instant when it claims or records, but for as long as a step's
    ``ctx.transaction()`` is open (FOR SHARE, until the step commits)."""
    conn.execute(f"SET LOCAL lock_timeout = '{RUN_LOCK_WAIT_S}s'")
    try:
        yield
    except pgerrors.LockNotAvailable as exc:
        raise from_driver(
            exc,
            f"run {run_id!r} stayed locked for {RUN_LOCK_WAIT_S}s (a step of its workflow is committing)",
            hint="try again in a moment",
            detail=False,
        ) from exc
    except pgerrors.DeadlockDetected as exc:  # the pruner (`runs: keep:`) locked the event's runs too
        raise from_driver(
            exc,
            f"run {run_id!r}: another transaction (the finished runs' pruner, a retry) took the same runs "
            "at the same moment, and the server cancelled this one",
            hint="try again",
            detail=False,
        ) from exc
