"""What the ingest's tasks share: its settings, rules, counters and the events they signal each other by.

:class:`IngestState` is built once per ``listener run`` (``Ingest.from_config``) and outlives the sessions
(``listener.ingest.session``): the reader, the writer, the NOTIFY listener, the rewind watcher and a reload
read and update it, each from its own module.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import psycopg

from listener.defaults import HISTORY_INTERVAL_S, IDLE_CHECKPOINT_INTERVAL_S, LAG_STALE_S, REWIND_POLL_S
from listener.ingest.backfill import Backfills
from listener.ingest.expand import Expander
from listener.ingest.journal import JournalPolicy
from listener.ingest.leadership import Campaign, Lease
from listener.ingest.run_retention import RunRetention
from listener.ingest.source import Source
from listener.pg.replication import ReplicationSession
from listener.pg.types import TypeRegistry
from listener.queue.batches import EventBatch, Retention, RewindPlan
from listener.queue.handoff import Handoff
from listener.queue.store import StateStore
from listener.rules.compile import RuleSet, compile_rules
from listener.rules.config import Config

if TYPE_CHECKING:  # imported when a config has a Kafka sink: aiokafka is loaded only then
    from listener.ingest.kafka_sink import KafkaSink


@dataclass(slots=True)
class IngestStats:
    changes: int = 0
    events_inserted: int = 0
    transactions: int = 0
    batches: int = 0
    reconnects: int = 0
    checkpoint: int | None = None
    rewound: int = 0  # transactions re-read by rewinds
    rewinds: int = 0  # rewinds finished
    notifies_dropped: int = 0  # NOTIFYs that arrived while NOTIFY_BUFFER_BYTES were waiting
    heartbeats: int = 0  # heartbeat messages written (listener.ingest.heartbeat)
    # the latest lag measured: a transaction's commit to its events durable, or this slot's heartbeat
    # written to it read back; ``lag_at`` when (time.monotonic())
    lag_s: float | None = None
    lag_at: float = -math.inf

    def measured(self, lag_s: float) -> None:
        self.lag_s, self.lag_at = lag_s, time.monotonic()

    def lag(self) -> float | None:
        """The latest lag, or 0 when it is older than LAG_STALE_S (nothing read since: the stream idles,
        caught up), or None before the first one."""
        if self.lag_s is None:
            return None
        return self.lag_s if time.monotonic() - self.lag_at < LAG_STALE_S else 0.0


class IngestState:
    """The settings and shared state of one ingest of ``slot`` into ``store`` by ``rules``."""

    def __init__(
        self,
        *,
        source_dsn: str,
        store: StateStore,
        rules: RuleSet | None,
        slot: str,
        publication: str,
        batch_events: int = 5000,
        batch_delay: float = 0.005,
        status_interval: float = 10.0,
        heartbeat_s: float = 0.0,
        compact_after: int = 0,
        compact_chunk_changes: int = 20000,
        expand_ahead: int = 20000,
        retention: Retention | None = None,
        journal: JournalPolicy | None = None,
        run_retention: RunRetention | None = None,
        on_batch: Callable[[EventBatch, int], None] | None = None,
        config: Config | None = None,
    ) -> None:
        self.source_dsn = source_dsn
        self.config = config  # with rules=None: compiled against the catalog when a session starts
        self.store = store
        self.rules = rules or RuleSet(())
        self.must_compile = rules is None
        self.pending_rules: dict[str, tuple[Config | None, RuleSet]] = {}
        self.reloads: list[int] = []  # LSNs at which new rules took effect
        self.slot = slot
        self.publication = publication
        self.batch_events = batch_events
        self.batch_delay = batch_delay
        self.status_interval = status_interval
        self.heartbeat_s = heartbeat_s  # listener.ingest.heartbeat (0: none)
        self.compact_after = compact_after
        self.compact_chunk_changes = compact_chunk_changes
        self.expand_ahead = expand_ahead
        self.idle_checkpoint_interval = IDLE_CHECKPOINT_INTERVAL_S  # following the server's position
        self.empty_checkpoint_interval = IDLE_CHECKPOINT_INTERVAL_S  # after transactions with no event
        self.retention = retention
        self.journal = journal  # the change journal (listener.ingest.journal): None when off
        self.run_retention = run_retention  # `runs: keep:` (listener.ingest.run_retention): None when off
        self.history_interval = HISTORY_INTERVAL_S
        self.rewind_poll_interval = REWIND_POLL_S
        self.rewind: RewindPlan | None = None  # the rewind the current session re-reads, until finished
        self.on_batch = on_batch
        # The local worker that takes new runs without a claim (listener.queue.handoff); None: every run is
        # claimed.  Set by the service that runs both.
        self.handoff: Handoff | None = None
        # `sink: kafka:` (listener.ingest.kafka_sink): the slot's batches go to Kafka too, each in a Kafka
        # transaction with its checkpoint; None: Postgres only.  ``to_postgres``: and to the Postgres queue.
        self.sink: KafkaSink | None = None
        self.to_postgres = True
        self.stats = IngestStats()
        self.types = TypeRegistry()
        self.expander = Expander(store, self.types, self.resolve_types, ahead=expand_ahead)
        self.backfills = Backfills(self)  # snapshot backfills: a task per session, hooks in the reader
        self.durable_lsn = 0
        self.streaming = asyncio.Event()  # set once a session is streaming
        self.listening = asyncio.Event()  # set while LISTEN is issued on every rule channel
        # Sources beside the slot's and NOTIFY (see listener.ingest.source): each session runs each one's
        # ``run`` with its writer's queue, supervised; a source outlives sessions, so ``run`` may start again.
        self.sources: list[Source] = []
        self.session: ReplicationSession | None = None
        # This replica's candidacy for the slot (listener.ingest.leadership), and its lease while it leads.
        self.campaign: Campaign | None = None
        self.lease: Lease | None = None
        self.announce: Callable[[str], None] | None = None  # see Campaign.announce
        # Run when this replica takes the slot over from another: the service reads the config file again
        # (listener.service.takeover_rules), so a standby streams the rules as they are now.
        self.takeover: Callable[[], Awaitable[None]] | None = None
        self.catalog: psycopg.AsyncConnection[Any] | None = None
        self.catalog_lock = (
            asyncio.Lock()
        )  # a reload uses the session's catalog connection: not closed meanwhile
        self.restart = asyncio.Event()  # end the session and start a new one (a rewind was recorded)
        self.rewinds_changed = asyncio.Event()  # wakes the rewind watcher
        self.history_at = -math.inf

    @property
    def standing_by(self) -> bool:
        """Whether this replica stands by for another that leads the slot (listener.ingest.leadership)."""
        return self.campaign is not None and self.campaign.role == "standby"

    def leading(self) -> bool | None:
        """Whether this replica leads the slot: True, False (a standby), None (neither yet: starting)."""
        if self.lease is not None:
            return True
        return False if self.standing_by else None

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        source_dsn: str,
        store: StateStore,
        on_batch: Callable[[EventBatch, int], None] | None = None,
    ) -> Self:
        """An Ingest with the slot, publication, rules and batching of ``config``."""
        kafka = config.sink.kafka
        ingest = cls(
            source_dsn=source_dsn,
            store=store,
            rules=None,
            config=config,
            slot=config.slot,
            publication=config.publication,
            batch_events=config.ingest.batch_events,
            batch_delay=config.ingest.batch_delay_ms / 1000,
            status_interval=config.ingest.status_interval_s,
            heartbeat_s=config.ingest.heartbeat_s,
            # a Kafka sink publishes the events of a batch: none may wait compactly to be expanded later
            compact_after=config.ingest.compact_after if kafka is None else 0,
            compact_chunk_changes=config.ingest.compact_chunk_changes,
            expand_ahead=config.ingest.expand_ahead,
            retention=Retention(config.retain.duration_s, config.retain.size_bytes)
            if config.retain.enabled
            else None,
            journal=JournalPolicy(config.journal.keep_s) if config.journal.keep_s is not None else None,
            run_retention=RunRetention.from_config(config),
            on_batch=on_batch,
        )
        if kafka is not None:
            from listener.ingest.kafka_sink import KafkaSink

            ingest.sink = KafkaSink(kafka, config.slot)
        ingest.to_postgres = config.sink.postgres
        return ingest

    async def compile_rules(self) -> None:
        """Compile the config's rules against the catalog, once (the first session)."""
        if self.must_compile:
            assert self.config is not None and self.catalog is not None
            self.rules = await compile_rules(self.config, self.catalog)
            self.must_compile = False

    async def resolve_types(self, oids: Sequence[int]) -> None:
        assert self.catalog is not None
        await self.types.resolve(self.catalog, oids)
