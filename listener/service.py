"""`listener run`: ingest plus in-process workers, with signal handling.

Every background task is named; when one dies the whole service stops loudly (a task group), never
half-alive.  SIGTERM or SIGINT stops gracefully: ingest commits what it has read and reports the final
flush position, workers finish running workflows; a second SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

import asyncpg

from listener import setup, store
from listener import workflow as wf
from listener.config import Config, load_config
from listener.errors import ListenerError
from listener.ingest import Ingest, ReloadDeferred, first_of, transient
from listener.lsn import format_lsn
from listener.setup import connect as psycopg_connect
from listener.store import StateStore
from listener.worker import Worker

logger = logging.getLogger(__name__)

RELOAD_ATTEMPTS = 5  # a reload meeting a (re)starting session or a lost connection is tried this often
RELOAD_WAIT_S = 30.0  # ... each time waiting this long at most for the session to stream
RELOAD_RETRY_S = 0.5


def validate_workflows(config: Config) -> None:
    """Import every rule's workflow now: a typo fails at start, naming the rule, not at the first event."""
    for rule in config.rules:
        wf.resolve(rule.workflow, rule=rule.name)


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
    stop: asyncio.Event | None = None,
    on_event_start: Callable[[wf.Event], None] | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run ingest (and workers) until ``stop`` is set or a signal arrives."""
    validate_workflows(config)
    await asyncio.to_thread(setup.init, config, source_dsn, state_dsn)
    stop = stop or asyncio.Event()
    remove_handlers = install_signal_handlers(stop)
    store = await StateStore.connect(state_dsn, schema=config.state_schema, slot=config.slot)
    ingest = Ingest.from_config(config, source_dsn=source_dsn, store=store)
    requests: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, requests.put_nowait, "SIGHUP")
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_until_done(ingest.run(stop), stop), name="ingest")
            tg.create_task(_reloader(ingest, config, state_dsn, store, requests, stop), name="reloader")
            if workers:
                worker = make_worker(config, state_dsn, on_start=on_event_start)
                tg.create_task(_until_done(worker.run(stop), stop), name="worker")
            if ready is not None:
                tg.create_task(_signal_ready(ingest, ready), name="ready")
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        remove_handlers()
        await store.close()


def control_channels(schema: str) -> tuple[str, str]:
    """The NOTIFY channels of `listener reload` (request) and of the service's answer: not those of rewinds
    and backfills, which never reload."""
    return store.control_channel(schema, "reload"), f"{schema}_reload_reply"


async def _reloader(
    ingest: Ingest,
    config: Config,
    state_dsn: str,
    store: StateStore,
    requests: asyncio.Queue[str],
    stop: asyncio.Event,
) -> None:
    """Reload the rules on SIGHUP or `listener reload` (a NOTIFY on the control channel, answered on the
    reply channel): re-read the config file; an invalid one is refused and the old rules keep running."""
    request, reply = control_channels(config.state_schema)
    conn = await store.pool.acquire()

    def on_request(*args: object) -> None:  # (connection, pid, channel, payload)
        requests.put_nowait(str(args[3]) or "reload")

    await conn.add_listener(request, on_request)
    try:
        while not stop.is_set():
            getter = asyncio.ensure_future(requests.get())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not getter.done():
                getter.cancel()
                return
            origin = getter.result()
            answer = await _reload_once(ingest, config.source_path, state_dsn, stop)
            logger.warning("reload (%s): %s", origin, answer)
            if origin != "SIGHUP":
                try:
                    await conn.execute("SELECT pg_notify($1, $2)", reply, f"{origin} {answer}"[:7900])
                except Exception as exc:  # the answer is lost; the service goes on
                    logger.warning("cannot answer the reload request (%s)", exc)
    finally:
        # Unlisten before the connection goes back: asyncpg warns about a released connection that still
        # has a listener (InterfaceWarning, on every exit); a broken connection is dropped by the pool.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.remove_listener(request, on_request)
        await store.pool.release(conn)


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
            lsn = await ingest.reload(new, state_dsn=state_dsn)
        except ReloadDeferred as exc:
            problem = exc.message
        except ListenerError as exc:
            return "refused: " + str(exc).replace("\n", " ")
        except Exception as exc:
            if not transient(exc):
                logger.exception("reload failed")
                return f"refused: {type(exc).__name__}: {exc}".replace("\n", " ")
            problem = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        else:
            return f"ok {format_lsn(lsn)} {len(new.rules)} rule(s)"
        logger.info("reload: %s; trying again", problem)
        await asyncio.sleep(RELOAD_RETRY_S)
    return f"refused: {problem}; the old rules keep running (try again)"


async def run_workers(
    config: Config, state_dsn: str, *, concurrency: int | None = None, stop: asyncio.Event | None = None
) -> None:
    """Workers only, until ``stop`` is set or a signal arrives (`listener worker`)."""
    validate_workflows(config)
    with psycopg_connect(state_dsn) as conn:
        store.migrate(conn, config.state_schema)
    stop = stop or asyncio.Event()
    remove_handlers = install_signal_handlers(stop)
    try:
        await make_worker(config, state_dsn, concurrency=concurrency).run(stop)
    finally:
        remove_handlers()


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
        gating=any(rule.gated for rule in config.rules),
    )


async def _until_done(coro: object, stop: asyncio.Event) -> None:
    """Run a service task; when it ends (error or not) the whole service stops."""
    try:
        await coro  # type: ignore[misc]
    finally:
        stop.set()


async def _signal_ready(ingest: Ingest, ready: asyncio.Event) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await ingest.streaming.wait()
        ready.set()
