"""`listener run`: ingest plus in-process workers, with signal handling.

Every background task is named; when one dies the whole service stops loudly (a task group), never
half-alive.  SIGTERM or SIGINT stops gracefully: ingest commits what it has read and reports the final
flush position, workers finish running workflows; a second SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import math
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import psycopg

from listener import logs, metrics
from listener.defaults import (
    READY_CHECK_TIMEOUT_S,
    RELOAD_ANSWER_POLL_S,
    RELOAD_ATTEMPTS,
    RELOAD_INTERVAL_S,
    RELOAD_POLL_S,
    RELOAD_RETRY_S,
    RELOAD_WAIT_S,
    WEBHOOK_WRITERS,
)
from listener.errors import ConfigError, ListenerError, ReloadDeferred, is_transient
from listener.pg import conninfo
from listener.pg.lsn import format_lsn
from listener.queue import migrations, queries
from listener.queue.store import StateStore, control_channel
from listener.rules.config import Config, load_config
from listener.runtime import processes as children
from listener.runtime import workflow as wf
from listener.runtime.worker import Worker
from listener.supervise import first_of

if TYPE_CHECKING:  # imported where used: `listener worker` needs neither ingest nor the installer
    from listener import install
    from listener.ingest import Ingest

logger = logging.getLogger(__name__)
startup = logging.getLogger(logs.STARTUP_LOGGER)

StateConn = psycopg.Connection[tuple[Any, ...]]


def ask_reload(conn: StateConn, schema: str, slot: str, *, timeout: float) -> tuple[bool, str] | None:
    """`listener reload`: record a request (a row of ``reload_requests``: it takes a privilege on the
    state schema), wake the service, and read its answer from the row: (ok, answer), or None when none
    came within ``timeout`` seconds."""
    try:
        with conn.transaction():
            row = conn.execute(queries.get("insert_reload_request"), [slot]).fetchone()
            assert row is not None
            conn.execute(queries.get("wake"), {"channel": control_channel(schema, "reload")})
    except psycopg.errors.UndefinedTable:
        raise ListenerError(
            f"the state schema {schema!r} has no reload_requests table: the running service is older",
            hint="restart `listener run` (it brings the state schema up to date), then reload",
        ) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(RELOAD_ANSWER_POLL_S)
        answer = conn.execute(queries.get("reload_answer"), [row[0]]).fetchone()
        if answer is not None and answer[0] is not None:
            return bool(answer[0]), str(answer[1])
    return None


def workflow_errors(config: Config) -> dict[str, ConfigError]:
    """Import every rule's and schedule's workflow (from the config's import directories); the failures by
    rule name (``schedule/NAME`` for a schedule)."""
    wf.use_import_dirs(config.import_dirs())
    errors: dict[str, ConfigError] = {}
    for rule in config.rules:
        try:
            wf.resolve(rule.workflow, rule=rule.name, place=config.field_place(rule.name, "workflow"))
        except ConfigError as exc:
            errors[rule.name] = exc
    for index, schedule in enumerate(config.schedules):
        name = f"schedule/{schedule.name}"
        try:
            wf.resolve(schedule.workflow, rule=name, place=config.setting_place("schedules", str(index)))
        except ConfigError as exc:
            errors[name] = exc
    return errors


def workflow_checks(config: Config) -> list[install.CheckResult]:
    """`listener check`: one failed check per rule (or schedule) whose workflow does not import, or one
    line saying they all do."""
    from listener import install

    errors = workflow_errors(config)
    if not errors:
        dirs = ", ".join(str(d) for d in config.import_dirs())
        what = f"{len(config.rules)} rule(s)"
        if config.schedules:
            what += f" and {len(config.schedules)} schedule(s)"
        return [install.CheckResult("workflows", True, f"{what} import (from {dirs})")]
    return [
        install.CheckResult(f"workflow of rule {rule}", False, exc.message, exc.hint)
        for rule, exc in errors.items()
    ]


def validate_workflows(config: Config) -> None:
    """Import every rule's workflow now: a typo fails at start, naming the rule, not at the first event."""
    for error in workflow_errors(config).values():
        raise error


def freeze_startup_heap() -> None:
    """Leave what starting made (modules, compiled rules, pools: most of the heap) out of the garbage
    collector's full passes from now on (``gc.freeze``), so that they scan only what the service makes
    as it runs.  A full pass over the whole startup heap held the event loop for tens of milliseconds:
    the p99 of the webhook benchmark at 64 connections went from 43-46 ms to 17-20 ms without them."""
    gc.collect()
    gc.freeze()


def install_signal_handlers(stop: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    presses = 0

    def on_signal(signum: int) -> None:
        nonlocal presses
        presses += 1
        if presses > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logger.warning("%s received: stopping (Ctrl-C again to exit at once)", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    def remove() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return remove


async def run(
    config: Config,
    source_dsn: str,
    state_dsn: str,
    *,
    workers: bool = True,
    processes: int = 0,
    verbose: int = 0,
    log_format: str = "text",
    stop: asyncio.Event | None = None,
    on_event_start: Callable[[wf.Event], None] | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run ingest (and workers: in this process, and in ``processes`` `listener worker` children started
    with ``verbose`` -v flags) until ``stop`` is set or a signal arrives."""
    from listener import install
    from listener.ingest import Ingest

    validate_workflows(config)
    source_path = config.source_path if workers and processes else None  # the children's config file
    if workers and processes and source_path is None:
        raise ConfigError(
            "worker processes need the service's config file, and this config was not read from one",
            hint="pass the config file (-c), or run with worker processes 0",
        )

    webhooks = None
    if config.webhooks:  # their secrets are read now: a missing one fails before anything is installed
        from listener.http.webhooks import WebhookSource

        webhooks = WebhookSource(config)
    http_socket = None
    if config.http is not None:  # bound first: a port in use fails before anything is installed
        from listener.http import server as http_server

        http_socket = http_server.bind(config)
    try:
        await asyncio.to_thread(install.init, config, source_dsn, state_dsn)
        stop = stop or asyncio.Event()
        writers = 2 + (WEBHOOK_WRITERS if webhooks is not None else 0)  # the webhooks write their own
        store = await StateStore.connect(
            state_dsn, schema=config.state_schema, slot=config.slot, writers=writers
        )
        ingest = Ingest.from_config(config, source_dsn=source_dsn, store=store)
        address = http_server.url(http_socket) if http_socket is not None else None
        if not workers:
            running = "no workers (`listener worker` runs them)"
        else:
            running = (
                f"workers in this process and {processes} worker process(es)" if processes else "workers"
            )
        ingest.announce = functools.partial(_announce, config, source_dsn, state_dsn, address, running)
        ingest.takeover = functools.partial(takeover_rules, ingest, source_dsn, state_dsn)
        if webhooks is not None:
            webhooks.attach(ingest)
        if config.schedules:
            from listener.ingest.schedules import ScheduleSource
            from listener.rules.schedules import schedules_of

            ScheduleSource(schedules_of(config)).attach(ingest)
        if config.queues:
            from listener.ingest.queues import QueueSource

            for queue in config.queues:
                QueueSource(queue).attach(ingest)
        freeze_startup_heap()
        remove_handlers = install_signal_handlers(stop)
        sighup = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, sighup.set)
        try:
            async with (
                _first_listener_error(),
                contextlib.AsyncExitStack() as closing,
                asyncio.TaskGroup() as tg,
            ):
                tg.create_task(_until_done(ingest.run(stop), stop), name="ingest")
                tg.create_task(_reloader(ingest, config, state_dsn, store, sighup, stop), name="reloader")
                if workers:
                    worker = make_worker(config, state_dsn, on_start=on_event_start)
                    ingest.handoff = worker  # new runs go to the local worker without a claim when it is free
                    tg.create_task(_until_done(worker.run(stop), stop), name="worker")
                    if source_path is not None:
                        spawned = children.run_children(
                            processes,
                            command=children.child_command(verbose, log_format),
                            env=children.child_environment(source_path, source_dsn, state_dsn),
                            grace_s=config.worker.grace_s,
                            stop=stop,
                        )
                        tg.create_task(_until_done(spawned, stop), name="worker-processes")
                if http_socket is not None:
                    from listener.http.app import make_app

                    assert config.http is not None
                    scrape = metrics.Scrape(
                        slot=config.slot,
                        source_dsn=source_dsn,
                        pool=store.pool,
                        leader=ingest.leading,
                        lag=ingest.stats.lag,
                    )
                    closing.callback(scrape.close)
                    app = make_app(
                        functools.partial(_not_ready, ingest, store, config.http.ready_max_lag_s),
                        webhooks.handle if webhooks else None,
                        functools.partial(_metrics, scrape),
                    )
                    serving = http_server.serve(app, config, stop, http_socket)
                    tg.create_task(_until_done(serving, stop), name="http")
                if ready is not None:
                    tg.create_task(_signal_ready(ingest, ready), name="ready")
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            remove_handlers()
            await store.close()
    finally:
        if http_socket is not None:
            http_socket.close()


@contextlib.asynccontextmanager
async def _first_listener_error() -> AsyncIterator[None]:
    """A task group raises an ExceptionGroup; one ListenerError among its errors (a user can fix it: one
    line and the fix, not a traceback) is raised as itself."""
    try:
        yield
    except BaseExceptionGroup as group:
        matched, _ = group.split(ListenerError)
        found: BaseException | None = matched
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        if found is not None:
            raise found from group
        raise


async def _reloader(
    ingest: Ingest,
    config: Config,
    state_dsn: str,
    store: StateStore,
    sighup: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Reload the rules on SIGHUP or for `listener reload`: re-read the config file; an invalid one is
    refused and the old rules keep running.

    A request is a row of ``reload_requests`` (asking takes a privilege on the state schema), answered in
    the row.  A NOTIFY on ``<schema>_reload`` only wakes this task, which also polls: a NOTIFY without an
    unanswered row does nothing.  At most one reload per ``RELOAD_INTERVAL_S``: the requests waiting
    meanwhile share the next reload and its answer.  A lost connection is retried, never fatal."""
    channel = control_channel(config.state_schema, "reload")
    wake = asyncio.Event()
    conn: Any = None
    last = -math.inf

    def on_request(*_: object) -> None:
        wake.set()

    try:
        while not stop.is_set():
            wake.clear()
            pending: list[int] = []
            try:
                if conn is None:
                    conn = await store.pool.acquire()
                    await conn.add_listener(channel, on_request)
                if (
                    ingest.lease is not None
                ):  # the leader answers the requests; a standby has no rules running
                    pending = await store.pending_reloads()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                logger.warning("cannot look for reload requests (%s); trying again", exc)
                await _release(store, conn, channel, on_request)
                conn = None
            if sighup.is_set() and ingest.standing_by:
                sighup.clear()
                logger.warning(
                    "SIGHUP received by a standby: its rules are not running; `listener reload` reloads the "
                    "leader's, and this replica reads its config file again when it takes over"
                )
                continue
            if pending or sighup.is_set():
                if (pause := last + RELOAD_INTERVAL_S - time.monotonic()) > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), pause)
                    continue  # requests that arrived meanwhile join this reload
                last = time.monotonic()
                hup = sighup.is_set()
                sighup.clear()
                answer = await _reload_once(ingest, config.source_path, state_dsn, stop)
                logger.log(
                    logging.INFO if answer.startswith("ok ") else logging.WARNING,
                    "reload (%s): %s",
                    _origin(hup, pending),
                    answer,
                    extra=logs.fields(slot=config.slot),
                )
                if pending:
                    try:
                        await store.answer_reloads(pending, ok=answer.startswith("ok "), answer=answer)
                    except Exception as exc:
                        if not is_transient(exc):
                            raise
                        logger.warning("cannot answer reload request(s) %s (%s)", pending, exc)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first_of(wake.wait(), sighup.wait(), stop.wait()), RELOAD_POLL_S)
    finally:
        await asyncio.shield(_release(store, conn, channel, on_request))


async def _release(store: StateStore, conn: Any, channel: str, callback: Callable[..., None]) -> None:
    """Unlisten, then give the connection back: asyncpg warns about a released connection that still has
    a listener (InterfaceWarning, on every exit); a broken connection is dropped by the pool."""
    if conn is None:
        return
    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        await conn.remove_listener(channel, callback)
    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        await store.pool.release(conn)


def _origin(hup: bool, requests: list[int]) -> str:
    parts = ["SIGHUP"] if hup else []
    if requests:
        ids = ", ".join(map(str, requests[:5])) + (", ..." if len(requests) > 5 else "")
        parts.append(f"request {ids}" if len(requests) == 1 else f"requests {ids}")
    return "; ".join(parts)


async def _reload_once(ingest: Ingest, path: str | None, state_dsn: str, stop: asyncio.Event) -> str:
    """One reload; the answer as one line: ``ok <LSN>`` or ``refused <why>``.  Never raises: a session
    that is (re)starting, e.g. for a rewind, is waited for, and a lost connection is tried again."""
    if path is None:
        return "refused: the service was not started from a config file"
    try:
        new = load_config(path)
        validate_workflows(new)
    except ListenerError as exc:
        return "refused: " + str(exc).replace("\n", " ")
    problem = ""
    for _ in range(RELOAD_ATTEMPTS):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first_of(ingest.streaming.wait(), stop.wait()), RELOAD_WAIT_S)
        if stop.is_set():
            return "refused: the service is stopping"
        try:
            lsn = await ingest.reload(new, prepare=functools.partial(_prepare, ingest.source_dsn, state_dsn))
        except ReloadDeferred as exc:
            problem = exc.message
        except ListenerError as exc:
            return "refused: " + str(exc).replace("\n", " ")
        except Exception as exc:
            if not is_transient(exc):
                logger.exception("reload failed")
                return f"refused: {type(exc).__name__}: {exc}".replace("\n", " ")
            problem = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        else:
            return f"ok {format_lsn(lsn)} {len(new.rules)} rule(s)"
        logger.info("reload: %s; trying again", problem)
        await asyncio.sleep(RELOAD_RETRY_S)
    return f"refused: {problem}; the old rules keep running (try again)"


async def run_workers(
    config: Config,
    state_dsn: str,
    *,
    concurrency: int | None = None,
    stop: asyncio.Event | None = None,
    stop_with_parent: bool = False,
    listen: str | None = None,
) -> None:
    """Workers only, until ``stop`` is set or a signal arrives (`listener worker`); with
    ``stop_with_parent`` also when standard input closes (a child of `listener run`); with ``listen``
    (``--http``) an HTTP server of this worker's own health and metrics."""
    validate_workflows(config)
    http_socket = None
    if listen is not None:  # bound first: a port in use fails before anything starts
        from listener.http import server as http_server
        from listener.rules.config.models import HttpSettings

        config = config.model_copy(update={"http": HttpSettings(listen=listen)})
        http_socket = http_server.bind(config, option="--http")
    try:
        stop = stop or asyncio.Event()
        await _run_workers(config, state_dsn, concurrency, stop, stop_with_parent, http_socket)
    finally:
        if http_socket is not None:
            http_socket.close()


async def _run_workers(
    config: Config,
    state_dsn: str,
    concurrency: int | None,
    stop: asyncio.Event,
    stop_with_parent: bool,
    http_socket: socket.socket | None,
) -> None:
    with conninfo.connection(state_dsn) as conn:
        migrations.migrate(conn, config.state_schema)
    worker = make_worker(config, state_dsn, concurrency=concurrency)
    freeze_startup_heap()
    remove_handlers = install_signal_handlers(stop)
    loop = asyncio.get_running_loop()
    if stop_with_parent:
        children.stop_when_stdin_closes(functools.partial(loop.call_soon_threadsafe, stop.set))
    # SIGHUP (a closed terminal, or a `kill -HUP` meant for `listener run`) would end the process with its
    # runs left `running` until their leases expire: a worker has nothing to reload; it says so, goes on.
    loop.add_signal_handler(
        signal.SIGHUP,
        logger.warning,
        "SIGHUP received: ignored, `listener worker` has nothing to reload (restart it to load new "
        "workflow code; SIGTERM stops it gracefully)",
    )
    try:
        if http_socket is None:
            await worker.run(stop)
        else:
            async with _first_listener_error(), asyncio.TaskGroup() as tg:
                tg.create_task(_until_done(worker.run(stop), stop), name="worker")
                serving = _serve_worker(config, state_dsn, stop, http_socket)
                tg.create_task(_until_done(serving, stop), name="http")
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        remove_handlers()


async def _serve_worker(config: Config, state_dsn: str, stop: asyncio.Event, sock: socket.socket) -> None:
    """`listener worker --http`: /healthz; /readyz while the state database takes writes; /metrics with
    this worker's runs and steps, and the queue read from the state database (no slot: it reads none)."""
    from listener.http import server as http_server
    from listener.http.app import make_app

    settings = {**conninfo.SESSION_SETTINGS, "search_path": config.state_schema}
    params = conninfo.asyncpg_params(state_dsn, settings)
    pool = await asyncpg.create_pool(min_size=0, max_size=1, **params)
    assert pool is not None
    scrape = metrics.Scrape(slot=config.slot, source_dsn=None, pool=pool)

    async def not_ready() -> str | None:
        return await _state_not_writable(pool)

    try:
        app = make_app(not_ready, None, functools.partial(_metrics, scrape))
        await http_server.serve(app, config, stop, sock)
    finally:
        await pool.close()


def make_worker(
    config: Config,
    state_dsn: str,
    *,
    concurrency: int | None = None,
    on_start: Callable[[wf.Event], None] | None = None,
) -> Worker:
    return Worker(
        state_dsn,
        schema=config.state_schema,
        concurrency=concurrency or config.worker.concurrency,
        poll_interval=config.worker.poll_interval_s,
        lease_seconds=config.worker.lease_s,
        grace_seconds=config.worker.grace_s,
        run_timeout=config.worker.run_timeout_s,
        on_start=on_start,
        limits=config.limits,
        gating=any(rule.gated for rule in config.rules) or any(s.gated for s in config.schedules),
    )


async def takeover_rules(ingest: Ingest, source_dsn: str, state_dsn: str) -> None:
    """Before a standby's first session as the slot's leader: the rules of its config file as it is now
    (the leader it replaces may have reloaded them), with their publications (`listener init`).  A file
    that does not load, or changes what a reload cannot, leaves the rules it started with, and says so."""
    from listener import install
    from listener.ingest.reload import check_reloadable

    path = ingest.config.source_path if ingest.config is not None else None
    if path is None:
        return
    try:
        new = load_config(path)
        check_reloadable(ingest.config, new)
        validate_workflows(new)
        await asyncio.to_thread(install.init, new, source_dsn, state_dsn)
    except ListenerError as exc:
        logger.warning(
            "taking over with the rules this replica started with: %s", str(exc).replace("\n", " ")
        )
        return
    ingest.config, ingest.must_compile = new, True
    logger.info("taking over with the rules of %s: %d rule(s)", path, len(new.rules))


def _announce(
    config: Config, source_dsn: str, state_dsn: str, http: str | None, workers: str, role: str
) -> None:
    """The startup line of `listener run`, once it knows whether it leads the slot: what it watches, from
    where, which slot, leader or standby, the HTTP address (shown without -v too)."""
    watched = watch_summary(config)
    where = conninfo.where(source_dsn)
    state = "the same database" if state_dsn == source_dsn else conninfo.where(state_dsn)
    startup.info(
        "listener run: %s; watching %s on %s (state: %s, schema %s); %s; %s",
        role,
        watched,
        where,
        state,
        config.state_schema,
        workers,
        f"HTTP on {http}" if http else "no HTTP server",
        extra=logs.fields(slot=config.slot),
    )


def watch_summary(config: Config) -> str:
    """What the rules and schedules watch, in a few words: ``3 rule(s): tables a, b; webhook w``."""
    kinds: dict[str, set[str]] = {}
    for rule in config.rules:
        for kind, name in (("table", rule.table), ("message prefix", rule.message), ("channel", rule.channel),
                           ("webhook", rule.webhook), ("queue", rule.queue)):  # fmt: skip
            if name:
                kinds.setdefault(kind, set()).add(str(name))
    for schedule in config.schedules:
        kinds.setdefault("schedule", set()).add(schedule.name)
    parts = [
        f"{kind}{'s' if len(names) > 1 else ''} {', '.join(sorted(names))}" for kind, names in kinds.items()
    ]
    return f"{len(config.rules)} rule(s)" + (": " + "; ".join(parts) if parts else "")


async def _until_done(coro: object, stop: asyncio.Event) -> None:
    """Run a service task; when it ends (error or not) the whole service stops."""
    try:
        await coro  # type: ignore[misc]
    finally:
        stop.set()


def _not_streaming(ingest: Ingest) -> str | None:
    """Why the service does not do ingest's part, or None: it streams the slot, or stands by for another
    replica that does (its state connection working) and has no webhooks to serve."""
    if ingest.streaming.is_set():
        return None
    if ingest.standing_by:
        if ingest.config is not None and ingest.config.webhooks:
            return "a standby: the leader serves the webhooks (this replica answers them 503)"
        return None
    return "ingest is not streaming from the replication slot (starting, or reconnecting)"


async def _not_ready(ingest: Ingest, store: StateStore, max_lag_s: float | None) -> str | None:
    """Why the service is not ready (``GET /readyz``), or None: it does its part (:func:`_not_streaming`),
    the state database takes writes, and ingest's measured lag is at most ``max_lag_s``."""
    reason = _not_streaming(ingest) or await _state_not_writable(store.pool)
    if reason is not None:
        return reason
    lag = ingest.stats.lag()
    if max_lag_s is not None and lag is not None and lag > max_lag_s:
        return f"ingest lags {lag:.0f}s behind the source (more than http: ready_max_lag_s: {max_lag_s:g})"
    return None


async def _state_not_writable(pool: asyncpg.Pool) -> str | None:
    """Why the state database takes no writes now (silent, in recovery, read-only), or None."""
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
            read_only = await pool.fetchval(_READ_ONLY)
    except Exception as exc:
        what = f"{type(exc).__name__}: {exc}"
        return f"the state database does not answer within {READY_CHECK_TIMEOUT_S:g}s ({what})"
    if read_only:
        return "the state database takes no writes (a standby, or transaction_read_only is on)"
    return None


_READ_ONLY = "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::boolean"


async def _metrics(scrape: metrics.Scrape, accept: str | None) -> tuple[bytes, str]:
    await scrape.refresh()
    return metrics.exposition(scrape, accept)


async def _signal_ready(ingest: Ingest, ready: asyncio.Event) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await ingest.streaming.wait()
        ready.set()


def _prepare(source_dsn: str, state_dsn: str, config: Config, keep: Config | None) -> None:
    """`listener init` for a reload: publications for ``config`` (with ``keep``: for the old rules too)."""
    from listener import install

    install.init(config, source_dsn, state_dsn, keep=keep)
