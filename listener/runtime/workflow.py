"""The workflow API: the context a workflow function receives, durable steps, and policies.

A workflow is a Python function referenced as ``module.path:function``; it takes one argument, the
:class:`Context`, and may be ``async`` or plain::

    from listener.runtime.workflow import Context, workflow

    @workflow(max_attempts=5, timeout=600)
    async def summarize(ctx: Context) -> None:
        text = await ctx.step("summarize", call_llm, ctx.event.new["body"])   # runs once, ever
        async def save() -> None:
            async with ctx.transaction() as conn:                              # commits with the step
                await conn.execute("UPDATE tickets SET summary = $1 WHERE id = $2", text, ctx.event.new["id"])
        await ctx.step("save", save)

A step's JSON-serialisable result is committed before the step counts as done; when the run is retried or
resumed on another worker, the recorded result is returned and the function is not called again.  Writes
made through :meth:`Context.transaction` inside a step commit in the same transaction as the step's record:
exactly-once effects for database writes.  For external calls, pass :meth:`Context.step_key` as the
provider's idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import inspect
import json
import queue
import random
import re
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg

from listener import metrics
from listener.defaults import BACKOFF_BASE_S, BACKOFF_MAX_S, MAX_ATTEMPTS, THREAD_IDLE_S
from listener.errors import ConfigError, Fenced, StepError
from listener.pg.values import json_too_deep
from listener.queue import queries

Workflow = Callable[["Context"], Awaitable[Any] | Any]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Policy:
    """Retries and timeouts of a workflow (``@workflow(...)``) or a step (``ctx.step(..., retries=)``)."""

    max_attempts: int = MAX_ATTEMPTS
    backoff_base: float = BACKOFF_BASE_S
    backoff_max: float = BACKOFF_MAX_S
    timeout: float | None = None

    def backoff(self, failures: int) -> float:
        """Exponential backoff with full jitter, after ``failures`` failed attempts."""
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** max(0, failures - 1)))


def workflow(
    *,
    max_attempts: int = MAX_ATTEMPTS,
    timeout: float | None = None,
    backoff_base: float = BACKOFF_BASE_S,
    backoff_max: float = BACKOFF_MAX_S,
) -> Callable[[F], F]:
    """Set a workflow's retry policy and run timeout (seconds)."""

    def mark(fn: F) -> F:
        fn.__listener_policy__ = Policy(max_attempts, backoff_base, backoff_max, timeout)  # type: ignore[attr-defined]
        return fn

    return mark


def policy_of(fn: Workflow) -> Policy:
    found = getattr(fn, "__listener_policy__", None)
    return found if isinstance(found, Policy) else Policy()


@dataclass(frozen=True, slots=True)
class Event:
    """One workflow event, as stored in the queue."""

    idempotency_key: str
    rule: str
    workflow: str
    op: str | None
    table: str | None
    lsn: str | None
    commit_lsn: str | None
    xid: int | None
    commit_time: datetime | None
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    unchanged_toast: tuple[str, ...]
    key: str | None = None  # the flow-control key of a gated run ("rule:value"), else None
    # what `payload:` picked (table rules), or a message's / NOTIFY's content parsed as JSON
    data: Any = None
    # values carried as their PostgreSQL text instead of JSON (json nested deeper than Python's json
    # module can read, a number beyond float range): column names, payload names, or "data"
    as_text: tuple[str, ...] = ()
    # a webhook's request: webhook, delivery_id, method, path, query, headers (credentials left out);
    # its body is ``data``
    request: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Any) -> Event:
        text = row["payload"]
        # ingest carries deep values as text; a deeper payload written some other way is never parsed
        payload = {"data": text, "as_text": ["payload"]} if json_too_deep(text) else json.loads(text)
        return cls(
            idempotency_key=row["event_key"],
            rule=row["rule"],
            workflow=row["workflow"],
            op=row["op"],
            table=row["table_name"],
            lsn=row["lsn"],
            commit_lsn=row["commit_lsn"],
            xid=row["xid"],
            commit_time=row["commit_time"],
            new=payload.get("new"),
            old=payload.get("old"),
            unchanged_toast=tuple(payload.get("unchanged_toast", ())),
            key=row.get("key"),
            data=payload.get("data"),
            as_text=tuple(payload.get("as_text", ())),
            request=payload.get("request"),
        )


@dataclass(slots=True)
class _StepScope:
    name: str
    conn: StateConnection | None = None
    tx: Any = None


if TYPE_CHECKING:  # asyncpg's runtime class takes no subscript; only the type checker sees a generic
    from asyncpg.pool import PoolConnectionProxy

    StateConnection: TypeAlias = PoolConnectionProxy[asyncpg.Record]


class StepConnection(asyncpg.Connection):
    """The connections of ``ctx.transaction()``: reset like any pooled asyncpg connection (advisory locks,
    cursors, LISTENs and settings the workflow's code left behind), but after a step's commit the reset
    travels in the COMMIT's own message, and the release sends nothing: one round trip fewer per step.

    It relies on asyncpg's Transaction committing with ``execute("COMMIT;")``; should that ever change,
    the commit and the reset are sent apart again, as asyncpg does."""

    _COMMIT = "COMMIT;"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reset_at_commit = False  # set for the next COMMIT only
        self._was_reset = False  # the COMMIT carried the reset: the release sends none

    def reset_at_commit(self) -> None:
        """Send the session's reset with the transaction's COMMIT, which comes next."""
        self._reset_at_commit = True

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        if self._reset_at_commit and query == self._COMMIT and not args:
            self._reset_at_commit = False
            # an error in the COMMIT skips the rest of the message: then the release resets as usual
            await super().execute(f"{query}\n{super().get_reset_query()}", timeout=timeout)
            self._was_reset = True
            return "COMMIT"
        self._reset_at_commit = False
        return await super().execute(query, *args, timeout=timeout)

    def get_reset_query(self) -> str:
        if self._was_reset:
            self._was_reset = False
            return ""
        return super().get_reset_query()


def reset_at_commit(conn: StateConnection) -> None:
    """Have a StepConnection send its reset with the COMMIT that comes next (other connections: no-op)."""
    method = getattr(conn, "reset_at_commit", None)  # the pool's proxy passes it to its connection
    if method is not None:
        method()


_current_step: contextvars.ContextVar[_StepScope | None] = contextvars.ContextVar(
    "listener_step", default=None
)

_SAVE_STEP = queries.get("save_step")
# A NUL character (json.dumps writes it \u0000 after an even number of backslashes), which jsonb refuses.
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


@dataclass(frozen=True, slots=True)
class StepRecord:
    """A step's result to record, outside any transaction of the workflow's (see Context.save_step)."""

    run_id: str
    name: str
    attempt: int
    result: str  # JSON
    started: datetime


#: Records a step, fenced by its attempt: True once committed, False if the attempt was fenced out.
SaveStep = Callable[[StepRecord], Awaitable[bool]]


@dataclass
class Context:
    """Passed to every workflow function: its event, its run, and durable steps."""

    event: Event
    run_id: str = ""
    attempt: int = 0
    pool: asyncpg.Pool | None = None  # the connections of ctx.transaction()
    save_step: SaveStep | None = None  # records a step without a ctx.transaction() (the worker batches them)
    recorded: dict[str, Any] = field(default_factory=dict)  # step name -> recorded result
    calls: list[str] = field(default_factory=list)  # steps run (not replayed) in this attempt
    running: set[str] = field(default_factory=set, repr=False)  # steps started and not yet recorded

    def step_key(self, name: str | None = None) -> str:
        """A stable idempotency key for a step (the current one by default): the same on every retry, for
        an LLM or payment provider's Idempotency-Key header."""
        if name is None:
            scope = _current_step.get()
            if scope is None:
                raise StepError("step_key() without a name outside a step", hint="pass the step's name")
            name = scope.name
        return f"{self.run_id}:{name}"

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        retries: int = 0,
        timeout: float | None = None,
        backoff_base: float = BACKOFF_BASE_S,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` once for this run: its result is recorded, and returned again on a
        retry or resume without calling ``fn``.  ``retries`` retries the step in place (with backoff)
        before the failure fails the run attempt; ``timeout`` bounds each try, in seconds."""
        if name in self.recorded:
            return self.recorded[name]
        if _current_step.get() is not None:
            raise StepError(f"step {name!r} inside step {_current_step.get().name!r}: steps do not nest")  # type: ignore[union-attr]
        if name in self.running:
            raise StepError(
                f"step {name!r} started while a step of that name is running in the same run",
                hint="give steps that run at the same time (asyncio.gather) different names",
            )
        policy = Policy(max_attempts=retries + 1, backoff_base=backoff_base, timeout=timeout)
        tries = 0
        while True:
            tries += 1
            try:
                return await self._run_step(name, fn, args, kwargs, policy.timeout)
            except (Fenced, StepError, asyncio.CancelledError):
                raise
            except Exception:
                if tries >= policy.max_attempts:
                    raise
                await asyncio.sleep(policy.backoff(tries))

    async def _run_step(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        assert self.pool is not None and self.save_step is not None, "a Context of a worker runs steps"
        scope = _StepScope(name)
        token = _current_step.set(scope)
        started = datetime.now().astimezone()
        clock = time.monotonic()
        self.running.add(name)
        try:
            try:
                async with asyncio.timeout(timeout):
                    result = await call(fn, *args, **kwargs)
                encoded = self._encode(name, result)
                await self._save(scope, encoded, started)
                metrics.record_step(self.event.workflow, time.monotonic() - clock)
            except BaseException:
                if scope.tx is not None:
                    with contextlib.suppress(Exception):
                        await scope.tx.rollback()
                raise
        finally:
            self.running.discard(name)
            if scope.conn is not None:
                await self.pool.release(scope.conn)
            _current_step.reset(token)
        self.recorded[name] = json.loads(encoded)
        self.calls.append(name)
        return self.recorded[name]

    def _encode(self, name: str, result: Any) -> str:
        """A step's result as the JSON its record holds; a StepError if jsonb cannot hold it."""
        try:
            encoded = json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StepError(
                f"step {name!r} of workflow {self.event.workflow} returned a value that is not "
                f"JSON-serialisable: {exc}",
                hint="return plain data (dict, list, str, int, float, bool, None) from the step",
            ) from exc
        except RecursionError as exc:  # nested deeper than Python's recursion limit (about 1,000 levels)
            raise StepError(
                f"step {name!r} of workflow {self.event.workflow} returned a value nested too deeply to "
                f"encode as JSON: {exc}",
                hint="return a flatter result (fewer than about 900 levels of nested lists and dicts), or "
                "store the deep document yourself inside ctx.transaction() and return its id",
            ) from exc
        if "\\u0000" in encoded and _NUL.search(encoded):
            raise StepError(
                f"step {name!r} of workflow {self.event.workflow} returned a string holding the "
                "character NUL (\\u0000), which PostgreSQL's jsonb cannot store",
                hint="remove NUL characters from the step's result (text.replace('\\x00', ''))",
            )
        return encoded

    async def _save(self, scope: _StepScope, encoded: str, started: datetime) -> None:
        """Record the step: alone (batched with other runs' steps by the worker), or last in the
        transaction of its ctx.transaction(), fenced there (see the save_step query)."""
        assert self.save_step is not None
        try:
            if scope.conn is None:
                record = StepRecord(self.run_id, scope.name, self.attempt, encoded, started)
                if not await self.save_step(record):
                    raise self._fenced(f"step {scope.name!r} dropped")
            else:
                status = await scope.conn.execute(
                    _SAVE_STEP, self.run_id, scope.name, self.attempt, encoded, started
                )
                if status != "INSERT 0 1":
                    raise self._fenced(f"step {scope.name!r} and its transaction rolled back")
                reset_at_commit(scope.conn)
                await scope.tx.commit()
        except asyncpg.PostgresError as exc:
            if (exc.sqlstate or "")[:2] not in ("22", "54"):  # not a value it cannot store: not the step's
                raise
            raise StepError(
                f"step {scope.name!r} of workflow {self.event.workflow} returned a value PostgreSQL "
                f"cannot store as jsonb: {exc}",
                hint="return plain data that PostgreSQL's jsonb accepts from the step",
            ) from exc

    def _fenced(self, what: str) -> Fenced:
        return Fenced(f"run {self.run_id} attempt {self.attempt} no longer holds its lease; {what}")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[StateConnection]:
        """A connection to the state database inside the current step's transaction: what is written
        through it commits together with the step's record, or not at all.  The run is fenced when the
        step is recorded, at the end: a run whose lease was lost meanwhile (another worker took it over)
        rolls back, and its run's row is not held while the step's code runs, so its lease is renewed."""
        scope = _current_step.get()
        if scope is None:
            raise StepError(
                "ctx.transaction() outside a step",
                hint="call it inside a function run by `await ctx.step(name, fn)`, so its writes commit "
                "with the step's record",
            )
        if scope.conn is None:
            assert self.pool is not None
            conn = await self.pool.acquire()
            scope.conn, scope.tx = conn, conn.transaction()
            await scope.tx.start()
        yield scope.conn


_cache: dict[str, Workflow] = {}


def use_import_dirs(dirs: Sequence[Path]) -> None:
    """Put ``dirs`` first on ``sys.path``, in order: the user's workflows win over installed packages."""
    for directory in reversed(dirs):
        entry = str(directory)
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
    importlib.invalidate_caches()


def _raising_line(exc: BaseException) -> str | None:
    """``file:line`` of the innermost frame of ``exc`` outside the import machinery."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def resolve(
    reference: str, *, rule: str | None = None, place: tuple[str | None, int | None] = (None, None)
) -> Workflow:
    """Import ``module.path:function``; a clear ConfigError when it does not resolve (``place``: where the
    reference is written, file and line).  The module's own failure (missing, a syntax error, an exception
    at import) is named with its file and line."""
    cached = _cache.get(reference)
    if cached is not None:
        return cached
    file, line = place

    def refused(what: str, hint: str) -> ConfigError:
        return ConfigError(f"workflow {reference!r}: {what}", file=file, line=line, rule=rule, hint=hint)

    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"workflow reference {reference!r} is not of the form module.path:function",
            file=file,
            line=line,
            rule=rule,
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise refused(
                f"importing module {module_name!r} failed at {_raising_line(exc)}: {exc}",
                "install the missing module, or correct the import",
            ) from exc
        raise refused(
            f"cannot import module {module_name!r}: no module named {exc.name!r}",
            f"put {module_name.replace('.', '/')}.py beside the config file (its directory is importable), or"
            " name the directory that holds it in `workflows_path:`",
        ) from exc
    except SyntaxError as exc:
        raise refused(
            f"{exc.filename}:{exc.lineno}: syntax error in module {module_name!r}: {exc.msg}",
            "correct the module's syntax",
        ) from exc
    except Exception as exc:
        raise refused(
            f"importing module {module_name!r} raised {type(exc).__name__} at {_raising_line(exc)}: {exc}",
            "fix the module: importing it must not fail",
        ) from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise refused(
            f"module {module_name!r} has no function {attr!r}",
            f"define `async def {attr}(ctx)` in {module_name}",
        )
    _cache[reference] = fn
    return fn  # type: ignore[no-any-return]


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a workflow or a step's function: an ``async`` one on the event loop, a plain one in a thread of
    its own, so a blocking call (a synchronous SDK, ``time.sleep``) stalls neither the other runs nor the
    heartbeat that keeps their leases."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    result = await in_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):  # a plain function that returned a coroutine (a wrapper, a lambda)
        return await result
    return result


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a daemon thread of its own (with this context's variables), awaited.

    Not ``asyncio.to_thread``: a timed-out or shut-down run cannot stop its thread, and that thread would
    then hold one of the default executor's few slots for as long as it runs, and block the process's exit.
    A daemon thread of its own does neither (see _Threads)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()
    name = f"listener {getattr(fn, '__qualname__', fn)!s:.60}"

    def settle(result: Any, exc: BaseException | None) -> None:
        if done.done():  # abandoned: the run timed out or was cancelled meanwhile
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(result)

    def job() -> None:
        threading.current_thread().name = name
        try:
            result, exc = context.run(fn, *args, **kwargs), None
        except BaseException as raised:  # whatever it raises is the run's failure, in the loop's thread
            result, exc = None, raised
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, exc)

    _THREADS.run(job)
    return await done


class _Threads:
    """Daemon threads for plain functions, each running one function at a time, and kept a while when
    done to run the next one: starting a thread costs more than a short step.  A function that never
    returns holds only its own thread; a new one starts whenever no thread is idle, so there is no bound
    that hung functions could exhaust, and none of them keeps the process from exiting."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread's: it takes the job
                self._jobs.put(job)
                return
        threading.Thread(target=self._serve, args=(job,), name="listener", daemon=True).start()

    def _serve(self, job: Callable[[], None]) -> None:
        while True:
            job()  # never raises (see in_thread)
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:
                    try:  # a job put after the wait timed out: this thread was counted idle for it
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return


_THREADS = _Threads(idle_s=THREAD_IDLE_S)
