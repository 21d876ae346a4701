"""What one state-database transaction of the ingest writes: an ``EventBatch`` of events (in columns), the
compact chunks and journal rows beside them (``RawChunk``), backfill chunks at their high watermark
(``BackfillChunk``), and the retention and rewind state that goes with its checkpoint (``Retention``,
``RewindPlan``).  Plain data: ``listener.queue.store.StateStore.write_batch`` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from listener.pg.lsn import format_lsn
from listener.rules.events import RunPolicy, event_key


@dataclass(frozen=True, slots=True)
class Retention:
    """The retention window (``retain:``): the slot's confirmed position trails the checkpoint by
    ``duration_s`` of commit time, and by no more than ``size_bytes`` of WAL (either may be None)."""

    duration_s: float | None = None
    size_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class RewindPlan:
    """An unfinished row of ``rewinds``: re-read the transactions committed in [from_lsn, up_to)."""

    id: int
    from_lsn: int
    up_to: int
    position: int | None  # end LSN of the last re-read transaction already durable, if any
    rerun_rule: str | None
    generation: int | None
    rules: tuple[str, ...]  # the rules of the configuration that asked for it

    @property
    def start_lsn(self) -> int:
        """Where streaming starts (again): after what is already durable."""
        return self.position if self.position is not None else self.from_lsn


@dataclass(slots=True)
class EventBatch:
    """Events for one state-database transaction, in columns, plus the checkpoint that goes with them.

    What is the same for many events (rule, workflow, operation, table and the transaction's commit LSN,
    xid and time) is stored once per *group*; each event names its group.  The idempotency key
    ``rule/commit LSN/ordinal`` is assembled by the server.  This keeps the per-event cost of sending a
    batch low: it is the hot path of a million-row transaction.
    """

    group: list[int] = field(default_factory=list)  # 1-based index into the group columns
    lsn: list[int] = field(default_factory=list)  # WAL position of the change
    ordinal: list[int] = field(default_factory=list)  # of the change among its table's, in the transaction
    payload: list[str] = field(
        default_factory=list
    )  # JSON text: {"new": .., "old": .., "unchanged_toast": ..}
    key: list[str | None] = field(default_factory=list)  # flow-control key of gated runs
    # per group: rule, workflow, op, table, commit LSN (text; for NOTIFY what stands in for it in the key),
    # xid, commit time, gated, key limit, ordered, priority, event source (cdc, message, notify)
    groups: list[
        tuple[
            str,
            str,
            str | None,
            str | None,
            str,
            int | None,
            datetime | None,
            bool,
            int | None,
            bool,
            int,
            str,
        ]
    ] = field(default_factory=list)
    group_ids: dict[tuple[str, str | None, str | None, str], int] = field(default_factory=dict)
    checkpoint: int | None = None  # end LSN of the last complete transaction in this batch
    chunks: list[RawChunk] = field(default_factory=list)  # bulk changes stored compactly
    # The change journal (`journal:`): the raw changes of the batch's transactions, per table (their
    # ``rules`` unused); see sql/0006_journal.sql.
    journal: list[RawChunk] = field(default_factory=list)
    checkpoint_time: datetime | None = None  # commit time of that transaction (None: an idle checkpoint)
    # Retention: set by the writer when a history row is due with this checkpoint; write_batch then
    # records it and sets ``confirm`` to the position the slot may confirm (None: keep the current one).
    retention: Retention | None = None
    confirm: int | None = None
    # Rewind: the rewind whose re-read transactions this batch may hold, how far they go, and whether the
    # stream passed the end of its range (then it is finished with this batch).
    rewind: RewindPlan | None = None
    rewind_position: int | None = None
    rewind_done: bool = False
    # The hand-off (listener.queue.handoff), set by write_batch when it was given an offer: the runs it
    # committed as claimed by the offering worker (claim-shaped rows), and whether it also made pending ones.
    handed: list[Any] = field(default_factory=list)
    left_pending: bool = False
    # Webhooks with `keep:` (listener.http.webhooks): their requests, rows of webhook_requests
    requests: list[tuple[Any, ...]] = field(default_factory=list)
    # Schedules (listener.ingest.schedules): the last tick done (fired, skipped or missed) by name
    ticks: dict[str, datetime] = field(default_factory=dict)
    # Queue sources (listener.ingest.queues): the broker position reached, by (queue, part), and the
    # messages parked (rows of queue_parked: queue, part, position, topic, sent at, reason, key, headers
    # JSON, body), both committed with the batch's events
    positions: dict[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)
    parked: list[tuple[Any, ...]] = field(default_factory=list)
    # Backfill chunks that reached their high watermark in this batch (see listener/ingest/backfill.py)
    backfill: list[BackfillChunk] = field(default_factory=list)
    # About how much memory the batch's payloads, chunks and journal rows hold (their lengths): ingest
    # bounds its buffers by this, not by counts (a few huge rows weigh more than thousands of small ones).
    nbytes: int = 0

    def __len__(self) -> int:
        return len(self.payload)

    def event_key(self, index: int) -> str:
        """The idempotency key of event ``index`` as the server builds it (sql/queries/events.sql,
        insert_events): ``rule/commit/ordinal``, the commit LSN's text (what stands in for it for NOTIFY)
        as its group holds it (:func:`listener.rules.events.event_key`)."""
        group = self.groups[self.group[index] - 1]
        return event_key(group[0], group[4], self.ordinal[index])

    def handed_run(self, index: int) -> dict[str, Any]:
        """Event ``index``'s run as a claim returns it (sql/queries/runs.sql), for the worker it was handed
        to (listener.queue.handoff): attempt 1, no failure, no step yet.  Built from the batch, as the
        server stores it: a NOTIFY's event has no LSN."""
        rule, workflow, op, table, commit, xid, at, *_, source = self.groups[self.group[index] - 1]
        key = event_key(rule, commit, self.ordinal[index])
        in_wal = source in ("cdc", "message")
        return {
            "id": key,
            "event_key": key,
            "attempt": 1,
            "failures": 0,
            "key": self.key[index],
            "rule": rule,
            "workflow": workflow,
            "op": op,
            "table_name": table,
            "lsn": format_lsn(self.lsn[index]) if in_wal else None,
            "commit_lsn": commit if in_wal else None,
            "xid": xid,
            "commit_time": at,
            "payload": self.payload[index],
            "steps": "{}",
        }

    def drop_events(self) -> None:
        """Drop the events, in place (``sink: postgres: false``: they went to Kafka only); the position,
        chunks and the rest stay, and so does ``nbytes``, which the writer's queue counts."""
        for column in (self.group, self.lsn, self.ordinal, self.payload, self.key, self.groups):
            column.clear()
        self.group_ids.clear()

    def add(self, group: int, lsn: int, ordinal: int, payload: str, key: str | None = None) -> None:
        """One event: its group (see ``group_id``), the change's LSN and ordinal, payload and run key."""
        self.nbytes += len(payload)
        self.group.append(group)
        self.lsn.append(lsn)
        self.ordinal.append(ordinal)
        self.payload.append(payload)
        self.key.append(key)

    def group_id(
        self,
        rule: RunPolicy,
        op: str | None,
        table: str | None,
        commit: str,
        xid: int | None,
        at: datetime | None,
    ) -> int:
        """The group of (rule, op, table) in the transaction committed at ``commit``, made on first use."""
        key = (rule.name, op, table, commit)
        gid = self.group_ids.get(key)
        if gid is None:
            self.groups.append(
                (
                    rule.name,
                    rule.workflow,
                    op,
                    table,
                    commit,
                    xid,
                    at,
                    rule.gated,
                    rule.key_limit,
                    rule.ordered,
                    rule.priority,
                    _EVENT_SOURCE[rule.source],
                )
            )
            gid = self.group_ids[key] = len(self.groups)
        return gid


@dataclass(slots=True)
class RawChunk:
    """Consecutive changes of one table in one transaction, kept as the server sent them (a row of
    ``event_chunks``; see sql/0002_event_chunks.sql).  ``data`` holds, per change, its 8-byte LSN, the
    4-byte length of its pgoutput message and the message."""

    commit_lsn: int
    relation_oid: int
    first_ordinal: int
    xid: int
    commit_time: datetime
    table_name: str
    protocol: int
    relation: bytes  # the Relation message
    rules: str  # JSON: {"insert": [[rule, workflow], ...], ...}
    data: bytearray = field(default_factory=bytearray)
    changes: int = 0


@dataclass(slots=True)
class BackfillChunk:
    """One chunk of a backfill at its high watermark: the rows that survived its window, and the progress
    it makes (committed together: see sql/0005_backfill.sql).  The rows are either raw COPY text lines
    (``data``, for the expander) or, for a rule that needs the row at ingest, ready ``events``."""

    backfill_id: int
    seq: int
    rule: str
    workflow: str
    priority: int
    gated: bool
    key_limit: int | None
    ordered: bool
    table_name: str
    columns: str  # JSON: [[name, type OID], ...]
    key_positions: list[int]
    lsn: int  # the high watermark
    read_at: datetime
    last_key: list[str] | None  # None: the table was empty
    rows_read: int
    rows_dropped: int
    final: bool  # the last chunk: the backfill is done when it commits
    data: bytes = b""  # the surviving rows as COPY text lines
    rows: int = 0  # how many lines ``data`` holds
    events: list[tuple[str, str, str | None]] | None = None  # (idempotency key, payload, run key)


# rule source -> events.source; only the first two's events have an LSN (the others' key's middle is free
# text)
_EVENT_SOURCE = {
    "table": "cdc",
    "message": "message",
    "channel": "notify",
    "webhook": "webhook",
    "queue": "queue",
    "schedule": "schedule",
}
