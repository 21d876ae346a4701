"""Helpers for integration and chaos tests: run ingest against the test database, read the queue."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml
from click.testing import CliRunner, Result

from listener import install as setup
from listener.cli.main import main
from listener.ingest import Ingest
from listener.ingest.source import Source
from listener.queue.store import StateStore
from listener.rules.config import Config, load_config, parse_config

WAIT_S = 60.0
# A transaction that made no event gets its checkpoint written at most this late in tests (ingest's
# default is seconds): wait_caught_up's marker makes no event, and the tests should not wait for it.
IDLE_CHECKPOINT_S = 0.1


SLOT = "listener_test"  # the tests' slot and publication, unless a test names others


def config_yaml(rules: Sequence[Mapping[str, Any]], **settings: Any) -> str:
    """A config file's text from rule dicts and top-level settings, as a user would write it."""
    doc = {"slot": SLOT, "publication": SLOT, **settings, "rules": list(rules)}
    return yaml.safe_dump(doc, sort_keys=False)


def make_config(rules: Sequence[Mapping[str, Any]] | str, **settings: Any) -> Config:
    """A Config from rule dicts (or YAML text), as a user would write it."""
    return parse_config(rules if isinstance(rules, str) else config_yaml(rules, **settings))


def write_config(path: Path, rules: Sequence[Mapping[str, Any]], **settings: Any) -> Config:
    """Write a config file (see :func:`config_yaml`) and load it, so errors name ``path``."""
    path.write_text(config_yaml(rules, **settings), encoding="utf-8")
    return load_config(path)


def cli(dsn: str, config: Config | Path, *args: str) -> Result:
    """``listener --dsn DSN -c CONFIG ARGS...`` in this process (click's runner), 200 columns wide."""
    path = config.source_path if isinstance(config, Config) else str(config)
    assert path is not None, "the config was not loaded from a file"
    return CliRunner().invoke(main, ["--dsn", dsn, "-c", path, *args], env={"COLUMNS": "200"})


async def acli(dsn: str, config: Config | Path, *args: str) -> Result:
    """:func:`cli` in a thread: it must not block the event loop an ingest or a service runs in."""
    return await asyncio.to_thread(cli, dsn, config, *args)


@dataclass(frozen=True)
class BatchRule:
    """What ``EventBatch.group_id`` reads of a rule, for tests that build batches by hand."""

    name: str = "rows"
    workflow: str = "m:f"
    gated: bool = False
    key_limit: int | None = None
    ordered: bool = False
    priority: int = 0
    source: str = "table"


@dataclass
class Running:
    ingest: Ingest
    store: StateStore
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def reload(self, config: Config) -> int:
        """``Ingest.reload`` as the service calls it: `listener init`'s publications for the new rules."""
        dsn = self.ingest.source_dsn

        def prepare(new: Config, keep: Config | None) -> None:
            setup.init(new, dsn, dsn, keep=keep)

        return await self.ingest.reload(config, prepare=prepare)


@asynccontextmanager
async def running_ingest(
    dsn: str,
    config: Config,
    *,
    init: bool = True,
    sources: Sequence[Source] = (),
    attach: Sequence[Callable[[Ingest], None]] = (),
) -> AsyncIterator[Running]:
    """Ingest running in this event loop until the block ends (then stopped cleanly), with ``sources``
    beside the slot's (see listener.ingest.source), and those that ``attach`` themselves to it."""
    if init:
        await asyncio.to_thread(setup.init, config, dsn, dsn)
    store = await StateStore.connect(dsn, schema=config.state_schema, slot=config.slot)
    ingest = Ingest.from_config(config, source_dsn=dsn, store=store)
    ingest.empty_checkpoint_interval = IDLE_CHECKPOINT_S
    ingest.sources.extend(sources)
    for join in attach:
        join(ingest)
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop), name="test-ingest")
    try:
        await _wait_for(lambda: ingest.streaming.is_set() or task.done(), "ingest to start streaming")
        if task.done():
            task.result()
        yield Running(ingest, store, stop, task)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, WAIT_S)
        finally:
            await store.close()


async def _wait_for(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def current_wal_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8").fetchone()
        assert row is not None
        return int(row[0])


def emit_marker(dsn: str) -> int:
    """Commit a transaction holding only a logical decoding message; return the message's LSN.

    Its commit ends after that LSN, so a durable checkpoint beyond it means every transaction committed
    before the marker has been ingested."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (pg_logical_emit_message(true, 'listener-test-sync', '') - '0/0')::int8"
        ).fetchone()
        assert row is not None
        return int(row[0])


async def wait_caught_up(run: Running, dsn: str) -> None:
    """Wait until ingest has durably handled every transaction committed so far."""
    target = emit_marker(dsn)
    await _wait_for(lambda: run.ingest.durable_lsn > target or run.task.done(), "ingest to catch up")
    if run.task.done():
        run.task.result()


def events(dsn: str, schema: str = "listener") -> list[dict[str, Any]]:
    """All queued events in insertion order, payload parsed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {schema}")
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute(
            "SELECT idempotency_key, rule, workflow, op, table_name, lsn::text, commit_lsn::text, xid,"
            " commit_time, payload FROM events ORDER BY seq"
        ).fetchall()


@contextmanager
def reachable_tmpdir(prefix: str) -> Iterator[Path]:
    """A temporary directory the embedded server's OS user may reach (mode 0755: listener never opens up
    directories itself), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


ROOT = Path(__file__).resolve().parents[1]  # the repository
_HTTP_LINE = re.compile(r"HTTP server listening on (http://127\.0\.0\.1:\d+) ")


@contextmanager
def http_service(
    args: Sequence[str], env: Mapping[str, str], log: Path, wait_s: float = 60.0
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m listener ARGS`` (a `listener run` with ``http:`` on port 0) in a subprocess logging to
    ``log``: yields it and the URL its HTTP server announced; killed at the end if still running."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "listener", *args], cwd=ROOT, env=dict(env), stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + wait_s
        while not (found := _HTTP_LINE.search(log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield process, found.group(1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
