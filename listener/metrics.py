"""Prometheus metrics (prometheus-client), served at ``GET /metrics`` by the service's HTTP server.

Two kinds, by where the number lives:

* **Counted as it happens** (counters and histograms, :class:`Recorded`): events written by ingest, batches,
  commit -> durable lag, runs started and finished, steps, webhook requests, schedule ticks.  They are
  recorded in the process that does the work.  `listener run` and its `listener worker` children record
  into one private directory (prometheus-client's multiprocess mode, :func:`share_with_children`): the
  service's ``/metrics`` sums its children's runs and steps with its own.  Without it (a service run in
  the tests' process) they stay in this process's memory.
* **Read when scraped** (gauges, :class:`Scrape`): the slot's retained WAL and lags from the source
  (``pg_replication_slots``), the queue's unfinished runs by workflow and state and the oldest one's age
  from the state database, whether this replica leads the slot.  Read once per scrape (at most once a
  second), each read bounded by ``METRICS_QUERY_TIMEOUT_S``: a database that does not answer shows as
  ``listener_database_up 0``, never as a hung scrape.

Names and labels follow Prometheus' conventions: the ``listener_`` prefix, base units (seconds, bytes),
``_total`` on counters.  README "Metrics" lists them; ``dashboards/listener.json`` graphs them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from listener.defaults import METRICS_MIN_INTERVAL_S, METRICS_QUERY_TIMEOUT_S
from listener.pg import conninfo
from listener.pg.lsn import parse_lsn
from listener.pg.slots import SlotState, slot_state
from listener.queue import queries

if TYPE_CHECKING:
    import asyncpg

    from listener.queue.batches import EventBatch  # stage 4, as this module: only its type

logger = logging.getLogger(__name__)

#: The environment variable prometheus-client's multiprocess mode reads (its files' directory).
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Buckets, in seconds: commit -> durable (ingest keeps up within milliseconds, a backlog takes minutes),
# commit -> start of a run (a queue may wait hours), and runs and steps (an LLM call takes seconds).
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


M = TypeVar("M", Counter, Histogram)


class Recorded:
    """The counters and histograms.  Made on first use (:func:`recorded`), after :func:`share_with_children`
    chose where their values live."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.events = Counter(
            "listener_events",
            "Events written to the queue, by source (cdc, message, notify, webhook, queue, schedule), rule",
            ["source", "rule"],
            registry=registry,
        )
        self.batches = Counter(
            "listener_ingest_batches",
            "State-database transactions of events and their checkpoint, by writer (stream, webhooks)",
            ["writer"],
            registry=registry,
        )
        self.commit_lag = Histogram(
            "listener_ingest_commit_to_durable_seconds",
            "Per batch: its oldest source transaction's commit (the source's clock) to the batch durable",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.reconnects = Counter(
            "listener_ingest_reconnects",
            "Replication sessions started again after a lost connection",
            registry=registry,
        )
        self.heartbeats = Counter(
            "listener_ingest_heartbeats",
            "Heartbeat messages written to the source's WAL while the slot was idle",
            registry=registry,
        )
        self.start_delay = Histogram(
            "listener_run_start_delay_seconds",
            "From the triggering event's commit (or arrival) to its run's first attempt starting",
            ["workflow"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "listener_run_duration_seconds",
            "One attempt of a run, by workflow and outcome (done, failed, dead, fenced); _count: attempts",
            ["workflow", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.dead = Counter(
            "listener_runs_dead",
            "Runs that ran out of attempts (or cannot run) and wait for an operator",
            ["workflow"],
            registry=registry,
        )
        self.steps = Histogram(
            "listener_step_duration_seconds",
            "A memoized step's call, until its result is recorded, by workflow",
            ["workflow"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.webhooks = Counter(
            "listener_webhook_requests",
            "Webhook requests answered, by webhook and HTTP status code",
            ["webhook", "code"],
            registry=registry,
        )
        self.ticks = Counter(
            "listener_schedule_ticks",
            "Schedule ticks, by schedule and outcome (fired, skipped, missed)",
            ["schedule", "outcome"],
            registry=registry,
        )


@dataclass(slots=True)
class _Mode:
    directory: str | None = None  # multiprocess mode's directory
    registry: CollectorRegistry | None = None  # in-memory mode's
    recorded: Recorded | None = None
    children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict)  # see _child


_mode = _Mode()


def share_with_children(*, child: bool = False) -> str | None:
    """Record into a directory shared by a service and its worker processes; ``/metrics`` sums them all.

    `listener run` makes a private one (removed at its exit), and sets :data:`MULTIPROCESS_ENV` so that
    the `listener worker` children it starts inherit it; a child (``child``) records into its parent's.
    Called before any metric is recorded; returns the directory (None: a child whose parent has none)."""
    if _mode.directory is None:
        inherited = os.environ.get(MULTIPROCESS_ENV)
        if child and not (inherited and os.path.isdir(inherited)):
            in_memory()  # the parent serves no /metrics
            return None
        if child:
            _mode.directory = inherited
        else:
            _mode.directory = tempfile.mkdtemp(prefix="listener-metrics-")
            atexit.register(shutil.rmtree, _mode.directory, True)
            os.environ[MULTIPROCESS_ENV] = _mode.directory
        # prometheus-client picks its value class when imported: the metrics made from now on are shared
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        _mode.recorded, _mode.registry = None, None
        _mode.children.clear()
    return _mode.directory


def in_memory() -> None:
    """Record in this process's memory (nothing else reads its counts), whatever the environment says."""
    if _mode.directory is None:
        os.environ.pop(MULTIPROCESS_ENV, None)
        values.ValueClass = values.MutexValue
        _mode.recorded, _mode.registry = None, None
        _mode.children.clear()


def recorded() -> Recorded:
    """The counters and histograms (made on first use)."""
    if _mode.recorded is None:
        if _mode.directory is None and _mode.registry is None:
            _mode.registry = CollectorRegistry(auto_describe=True)
        _mode.recorded = Recorded(None if _mode.directory is not None else _mode.registry)
    return _mode.recorded


# ---------------------------------------------------------------------------------------------------------
# Recording: called where the work is done (cheap: one call per batch, run, step or request).


def record_batch(batch: EventBatch, *, writer: str) -> None:
    """A batch made durable: its events by source and rule, and its oldest transaction's commit -> durable
    lag (one observation per batch, not per transaction: a batch of many small commits costs one)."""
    m = recorded()
    _child(m.batches, writer).inc()
    if not batch.group:
        return
    now = datetime.now(UTC)
    by_rule: dict[tuple[str, str], int] = {}
    for index, count in Tally(batch.group).items():
        group = batch.groups[index - 1]
        by_rule[group[11], group[0]] = by_rule.get((group[11], group[0]), 0) + count
    for labels, count in by_rule.items():
        _child(m.events, *labels).inc(count)
    oldest = min((g[6] for g in batch.groups if g[6] is not None and g[11] == "cdc"), default=None)
    if oldest is not None:
        m.commit_lag.observe(max(0.0, (now - oldest).total_seconds()))


def record_run_start(workflow: str, attempt: int, commit_time: datetime | None) -> None:
    """A run's attempt starts: the first one's delay from its event's commit."""
    if attempt == 1 and commit_time is not None:
        delay = (datetime.now(UTC) - commit_time).total_seconds()
        _child(recorded().start_delay, workflow).observe(max(0.0, delay))


def record_attempt(workflow: str, outcome: str, seconds: float) -> None:
    """An attempt ended: ``outcome`` done, failed, dead or fenced."""
    m = recorded()
    _child(m.duration, workflow, outcome).observe(seconds)
    if outcome == "dead":
        m.dead.labels(workflow).inc()


def record_step(workflow: str, seconds: float) -> None:
    _child(recorded().steps, workflow).observe(seconds)


def _child(metric: M, *labels: str) -> M:
    """``metric.labels(*labels)``, kept: looking the child up costs as much as observing (once per run)."""
    key = (id(metric), labels)
    child = _mode.children.get(key)
    if child is None:
        child = _mode.children[key] = metric.labels(*labels)
    return child


def record_webhook(webhook: str, code: int) -> None:
    recorded().webhooks.labels(webhook, str(code)).inc()


def record_tick(schedule: str, outcome: str, count: int = 1) -> None:
    if count:
        recorded().ticks.labels(schedule, outcome).inc(count)


# ---------------------------------------------------------------------------------------------------------
# Read when scraped


@dataclass(slots=True)
class Reading:
    """What one scrape read from the databases (the gauges' values)."""

    leader: bool | None = None
    ingest_lag_s: float | None = None
    slot: SlotState | None = None  # None: no such slot
    checkpoint_lsn: int | None = None
    # (workflow, state) -> (runs, oldest created_at)
    queue: dict[tuple[str, str], tuple[int, datetime | None]] = field(default_factory=dict)
    up: dict[str, bool] = field(default_factory=dict)  # database -> answered
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Scrape(Collector):
    """The gauges read at scrape time: call :meth:`refresh` (async), then render the registry."""

    def __init__(
        self,
        *,
        slot: str,
        source_dsn: str | None,  # None: no slot to read (a `listener worker`)
        pool: asyncpg.Pool,
        leader: Callable[[], bool | None] | None = None,  # this replica leads the slot (None: not known yet)
        lag: Callable[[], float | None] | None = None,  # ingest's latest measured lag
    ) -> None:
        self.slot = slot
        self.source_dsn = source_dsn
        self.pool = pool
        self.leader = leader
        self.lag = lag
        self.reading = Reading()
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()
        self._source: Any = None  # a psycopg connection to the source, opened on first use

    async def refresh(self) -> None:
        """Read the databases (unless read within METRICS_MIN_INTERVAL_S: scrapers share a reading)."""
        async with self._lock:
            if time.monotonic() - self._read_at < METRICS_MIN_INTERVAL_S:
                return
            reading = Reading(
                leader=self.leader() if self.leader is not None else None,
                ingest_lag_s=self.lag() if self.lag is not None else None,
            )
            if self.source_dsn is None:
                await self._read_state(reading)
            else:
                await asyncio.gather(self._read_state(reading), self._read_source(reading))
            self.reading, self._read_at = reading, time.monotonic()

    async def _read_state(self, reading: Reading) -> None:
        try:
            async with asyncio.timeout(METRICS_QUERY_TIMEOUT_S), self.pool.acquire() as conn:
                rows = await conn.fetch(queries.get("queue_gauges"))
                checkpoint = await conn.fetchval(queries.get("read_checkpoint"), self.slot)
        except Exception as exc:  # the metrics say the database is down; the service goes on
            logger.debug("metrics: cannot read the state database: %s", exc)
            reading.up["state"] = False
            return
        reading.up["state"] = True
        reading.queue = {(r[0], r[1]): (r[2], r[3]) for r in rows}
        reading.checkpoint_lsn = parse_lsn(checkpoint) if checkpoint is not None else None

    async def _read_source(self, reading: Reading) -> None:
        try:
            read = asyncio.to_thread(self._slot_state)
            reading.slot = await asyncio.wait_for(read, METRICS_QUERY_TIMEOUT_S)
        except Exception as exc:
            logger.debug("metrics: cannot read the source's slot: %s", exc)
            reading.up["source"] = False
            self._drop_source()
            return
        reading.up["source"] = True

    def _slot_state(self) -> SlotState | None:
        if self._source is None:
            assert self.source_dsn is not None
            self._source = conninfo.connect(
                self.source_dsn, what="the source database", connect_timeout=int(METRICS_QUERY_TIMEOUT_S)
            )
        return slot_state(self._source, self.slot)

    def _drop_source(self) -> None:
        conn, self._source = self._source, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        self._drop_source()

    def collect(self) -> Iterator[Metric]:
        r = self.reading
        up = GaugeMetricFamily(
            "listener_database_up",
            "Whether the database answered the last scrape's reads (source, state)",
            labels=["database"],
        )
        for database, ok in sorted(r.up.items()):
            up.add_metric([database], float(ok))
        yield up
        if r.leader is not None:
            yield _gauge(
                "listener_leader", "1 when this replica streams the slot, 0 when it stands by", r.leader
            )
        if r.ingest_lag_s is not None:
            yield _gauge(
                "listener_ingest_lag_seconds",
                "Ingest's latest lag: a transaction's commit (or a heartbeat) to its being read back",
                r.ingest_lag_s,
            )
        if r.up.get("source"):  # the slot was read
            yield from _slot_metrics(r)
        if r.up.get("state"):
            yield from _queue_metrics(r)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=float(value))


def _slot_metrics(r: Reading) -> Iterator[Metric]:
    slot = r.slot
    yield _gauge("listener_slot_exists", "1 when the replication slot exists on the source", slot is not None)
    if slot is None:
        return
    yield _gauge(
        "listener_slot_active", "1 when a process (any replica) streams the slot", slot.active_pid is not None
    )
    current = slot.current_lsn

    def behind(lsn: int | None) -> int | None:
        return current - lsn if current is not None and lsn is not None else None

    gauges: list[tuple[str, str, int | None]] = [
        ("listener_slot_retained_wal_bytes", "WAL the slot keeps on the source (from its restart_lsn)",
         slot.retained_bytes),
        ("listener_slot_confirmed_lag_bytes", "WAL written since the slot's confirmed_flush_lsn",
         behind(slot.confirmed_flush)),
        ("listener_checkpoint_lag_bytes", "WAL written since the checkpoint durable in the state database",
         behind(r.checkpoint_lsn)),
        ("listener_slot_safe_wal_bytes", "WAL writable before max_slot_wal_keep_size invalidates the slot",
         slot.safe_wal_bytes),
        ("listener_slot_wal_keep_bytes", "max_slot_wal_keep_size in bytes (absent: unlimited)",
         slot.keep_wal_bytes),
    ]  # fmt: skip
    for name, text, value in gauges:
        if value is not None:
            yield _gauge(name, text, max(0, value))
    if slot.safe_wal_bytes is not None and slot.keep_wal_bytes is not None:
        yield _gauge(
            "listener_slot_near_invalidation",
            "1 when the slot is within a fifth of max_slot_wal_keep_size of being invalidated",
            slot.near_invalidation,
        )
    yield _gauge(
        "listener_slot_lost", "1 when the server has invalidated the slot", slot.wal_status == "lost"
    )


def _queue_metrics(r: Reading) -> Iterator[Metric]:
    runs = GaugeMetricFamily(
        "listener_queue_runs",
        "Unfinished runs by workflow and state (pending: claimable now, waiting: retrying later, running)",
        labels=["workflow", "state"],
    )
    oldest = GaugeMetricFamily(
        "listener_queue_oldest_pending_age_seconds",
        "Age of the oldest pending (or waiting) run, by workflow",
        labels=["workflow"],
    )
    ages: dict[str, float] = {}
    for (workflow, state), (count, created) in sorted(r.queue.items()):
        runs.add_metric([workflow, state], count)
        if state != "running" and created is not None:
            age = max(0.0, (r.at - created).total_seconds())
            ages[workflow] = max(ages.get(workflow, 0.0), age)
    for workflow, age in sorted(ages.items()):
        oldest.add_metric([workflow], age)
    yield runs
    yield oldest


def exposition(scrape: Scrape | None, accept: str | None) -> tuple[bytes, str]:
    """The body and content type of ``/metrics`` (OpenMetrics when the scraper asks for it)."""
    registry = CollectorRegistry(auto_describe=False)
    if _mode.directory is not None:
        multiprocess.MultiProcessCollector(registry, path=_mode.directory)  # type: ignore[no-untyped-call]
    else:
        recorded()
        assert _mode.registry is not None
        registry.register(_Forward(_mode.registry))
    ProcessCollector(registry=registry)
    if scrape is not None:
        registry.register(scrape)
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class _Forward(Collector):
    """Another registry's metrics, in this one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()
