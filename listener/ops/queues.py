"""`listener queues`, `queues parked` and `listener replay --queue`: where each queue source stands, the
messages it parked, and those read again with the current configuration.

A message a queue source cannot read (listener.ingest.queues) is parked in ``queue_parked`` with its raw
bytes and the reason, and the stream goes on.  The listing and showing are plain reads (psycopg).  A retry
rebuilds each parked message from its row (:func:`listener.ingest.queues.parked_message`), reads it with
the queue's current ``format:`` and rules exactly as the live source does
(:func:`listener.ingest.queues.read_message`) and, when it reads now, inserts its events under the keys it
would have had live (``rule/queue/part:position/0``) and marks it retried, in one transaction; one that
still fails stays parked with the new reason.  Existing keys insert nothing, so a second retry (or a
retry racing another) makes no second run.  It writes only events, runs and ``queue_parked``: `listener
run` may be running or not.
"""

from __future__ import annotations

import asyncio
import base64
import difflib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from listener.defaults import QUEUE_RETRY_MESSAGES
from listener.errors import ListenerError
from listener.ingest.brokers import position_label, shown_position
from listener.ingest.queues import add_events, key_text, parked_message, read_message
from listener.ops.rewind_dry_run import RuleCount, tally
from listener.queue import queries
from listener.queue.batches import EventBatch
from listener.queue.store import StateStore
from listener.rules.compile import CompiledRule, RuleSet
from listener.rules.config import Config
from listener.rules.config.models import QueueSettings

Conn = psycopg.Connection[Any]

# How each broker shows a position, for the errors about one given on the command line.
POSITION_FORMS = {
    "kafka": ("a Kafka offset", "1234"),
    "redis_stream": ("a Redis entry id, milliseconds-sequence", "1700000000000-0"),
    "jetstream": ("a JetStream stream sequence", "42"),
}


# ---------------------------------------------------------------------------------------------------------
# `listener queues`


@dataclass(frozen=True, slots=True)
class PartView:
    part: str  # "topic:partition" (Kafka), the stream (Redis, JetStream)
    position: str  # as the broker shows it
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class QueueView:
    """A queue as `listener queues` shows it: configured, or only known from the state tables."""

    name: str
    broker: str | None  # kafka | redis_stream | jetstream; None: no longer in the configuration
    parts: tuple[PartView, ...]
    parked: int  # not yet retried
    last_parked: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "broker": self.broker,
            "configured": self.broker is not None,
            "parts": [asdict(p) for p in self.parts],
            "parked": self.parked,
            "last_parked": self.last_parked,
        }


def overview(conn: Conn, config: Config) -> list[QueueView]:
    """The configured queues, then those the state tables still hold that the configuration no longer
    names, each with its parts' positions and its parked messages not yet retried."""
    parts: dict[str, list[PartView]] = {}
    for queue, part, position, updated_at in conn.execute(queries.get("list_queue_positions")):
        parts.setdefault(queue, []).append(PartView(part, shown_position(position), updated_at))
    parked = {row[0]: row[1:] for row in conn.execute(queries.get("count_parked"))}
    brokers = {q.name: q.broker for q in config.queues}
    names = [*brokers, *sorted((parts.keys() | parked.keys()) - brokers.keys())]
    return [
        QueueView(
            name,
            brokers.get(name),
            tuple(parts.get(name, ())),
            int(parked.get(name, (0, None))[0]),
            parked.get(name, (0, None))[1],
        )
        for name in names
    ]


def find_queue(config: Config, name: str, option: str = "--queue") -> QueueSettings:
    """The configured queue ``name``; else a ListenerError naming the others."""
    queues = {q.name: q for q in config.queues}
    if name in queues:
        return queues[name]
    close = difflib.get_close_matches(name, list(queues), n=1)
    raise ListenerError(
        f"{option} {name}: no queue named {name!r} in {config.source_path or 'the configuration'}",
        hint=(f"did you mean {close[0]!r}? " if close else "")
        + ("its queues: " + ", ".join(queues) if queues else "the configuration has no `queues:`"),
    )


# ---------------------------------------------------------------------------------------------------------
# `listener queues parked`, `queues parked --show`


@dataclass(frozen=True, slots=True)
class ParkedRow:
    """A parked message as `listener queues parked` lists it."""

    queue: str
    part: str
    position: str  # as the broker shows it
    topic: str
    sent_at: datetime | None
    parked_at: datetime
    bytes: int
    reason: str
    retried_at: datetime | None


@dataclass(frozen=True, slots=True)
class ParkedMessage:
    """One parked message, whole (`queues parked --show`)."""

    row: ParkedRow
    key: bytes | None
    headers: dict[str, Any]  # as the rules see them: text, or {"base64": ...}
    body: bytes

    @property
    def text(self) -> str | None:
        """The body as text, when it is UTF-8."""
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self.row),
            "key": key_text(self.key),
            "headers": self.headers,
            "body_text": self.text,
            "body_base64": base64.b64encode(self.body).decode("ascii"),
        }


def _row(r: dict[str, Any]) -> ParkedRow:
    return ParkedRow(
        r["queue"], r["part"], shown_position(r["position"]), r["topic"], r["sent_at"], r["parked_at"],
        r["bytes"], r["reason"], r["retried_at"],
    )  # fmt: skip


def list_parked(
    conn: Conn, config: Config, *, queue: str | None, everything: bool, limit: int
) -> list[ParkedRow]:
    """The parked messages (of ``queue``), oldest first; retried ones too with ``everything``."""
    if queue is not None:
        _known(conn, config, queue)
    cur = conn.cursor(row_factory=dict_row)
    args = {"queue": queue, "all": everything, "limit": limit}
    return [_row(r) for r in cur.execute(queries.get("list_parked"), args)]


def show_parked(conn: Conn, config: Config, *, queue: str, position: str, part: str | None) -> ParkedMessage:
    """The parked message of ``queue`` at ``position`` (in ``part``: needed only when several parts hold
    a message parked at that position)."""
    broker = _known(conn, config, queue)
    part, numbers = parse_position(position, part, broker, option="--show")
    hint = f"`listener queues parked --queue {queue} --all` lists its parked messages"
    r = _parked_at(conn, queue, part, numbers, given=f"--show {position}", hint=hint)
    key = bytes(r["msg_key"]) if r["msg_key"] is not None else None
    return ParkedMessage(_row(r), key, r["headers"], bytes(r["body"]))


def _parked_at(
    conn: Conn, queue: str, part: str | None, numbers: tuple[int, ...], *, given: str, hint: str
) -> dict[str, Any]:
    """The row of the message parked at ``numbers`` in ``queue`` (in ``part``, or the one part holding
    one there); else a ListenerError about the option ``given`` (``hint``: where to look)."""
    args = {"queue": queue, "part": part, "position": list(numbers)}
    rows = conn.cursor(row_factory=dict_row).execute(queries.get("show_parked"), args).fetchall()
    label = position_label(part, numbers) if part is not None else shown_position(numbers)
    if not rows:
        raise ListenerError(f"{given}: queue {queue!r} has no parked message at {label}", hint=hint)
    if len(rows) > 1:
        raise ListenerError(
            f"{given}: several parts of queue {queue!r} have a message parked at {label}: "
            + ", ".join(r["part"] for r in rows),
            hint=f"name the part: --part {rows[0]['part']}, or give the label "
            + position_label(rows[0]["part"], numbers),
        )
    return rows[0]


def _known(conn: Conn, config: Config, queue: str) -> str | None:
    """``queue``'s broker; None for a queue the configuration no longer names but that still has parked
    messages; else a ListenerError."""
    if any(q.name == queue for q in config.queues):
        return find_queue(config, queue).broker
    held = conn.execute("SELECT 1 FROM queue_parked WHERE queue = %s LIMIT 1", [queue]).fetchone()
    if held is None:
        find_queue(config, queue)  # raises, naming the configured ones
    return None


def parse_position(
    text: str, part: str | None, broker: str | None, *, option: str
) -> tuple[str | None, tuple[int, ...]]:
    """(part, position) of a position given as its broker shows it (``1234``, ``1700000000000-0``), or as
    a message label ``part:position`` (``orders:3:1234``, as the listing and the logs show)."""
    if part is None and ":" in text:
        part, _, text = text.rpartition(":")
    try:
        numbers = tuple(int(n) for n in text.split("-"))
    except ValueError:
        numbers = ()
    width = 2 if broker == "redis_stream" else 1 if broker is not None else len(numbers)
    if not numbers or len(numbers) != width or min(numbers) < 0:
        what, example = POSITION_FORMS.get(broker or "", ("a broker position", "1234 or 1700000000000-0"))
        raise ListenerError(
            f"{option} {text!r} is not a position: give {what}, as `listener queues parked` shows it",
            hint=f"e.g. {option} {example}, or the message's label PART:POSITION",
        )
    return part, numbers


# ---------------------------------------------------------------------------------------------------------
# `listener replay --queue`


@dataclass(frozen=True, slots=True)
class QueueReplayPlan:
    queue: str
    broker: str
    format: str
    part: str | None  # only the message at (part, position), when given
    position: tuple[int, ...] | None
    waiting: int  # parked messages not yet retried that it reads


def plan_queue_replay(
    config: Config, conn: Conn, *, queue: str, part: str | None = None, position: str | None = None
) -> QueueReplayPlan:
    """Check a retry request against the configuration and ``queue_parked``; refuse clearly."""
    settings = find_queue(config, queue)
    if part is not None and position is None:
        raise ListenerError(
            f"--part {part} needs --position: it names one parked message",
            hint=f"e.g. listener replay --queue {queue} --part {part} --position "
            + POSITION_FORMS[settings.broker][1],
        )
    numbers = None
    if position is not None:
        part, numbers = parse_position(position, part, settings.broker, option="--position")
        hint = f"`listener queues parked --queue {queue}` lists those waiting for a retry"
        part = _parked_at(conn, queue, part, numbers, given=f"--position {position}", hint=hint)["part"]
    args = {"queue": queue, "part": part, "position": list(numbers) if numbers is not None else None}
    row = conn.execute(queries.get("count_parked_to_retry"), args).fetchone()
    return QueueReplayPlan(
        queue, settings.broker, settings.format, part, numbers, int(row[0]) if row is not None else 0
    )


@dataclass
class QueueReplayResult:
    plan: QueueReplayPlan
    dry_run: bool
    messages: int = 0  # parked messages read again
    retried: int = 0  # of those, read this time: marked retried (a dry run: would be)
    unmatched: int = 0  # of those, matched by no rule (retried, no event)
    inserted: int = 0  # events inserted, one run each (0 in a dry run)
    rules: dict[str, RuleCount] = field(default_factory=dict)
    still: list[tuple[str, str]] = field(default_factory=list)  # (label, reason): still parked

    @property
    def new(self) -> int:
        """New events (and runs): inserted, or in a dry run those whose keys do not exist yet."""
        return sum(c.new for c in self.rules.values()) if self.dry_run else self.inserted

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.plan.queue,
            "part": self.plan.part,
            "position": shown_position(self.plan.position) if self.plan.position is not None else None,
            "dry_run": self.dry_run,
            "messages": self.messages,
            "retried": self.retried,
            "unmatched": self.unmatched,
            "events_inserted": self.inserted,
            "new_runs": self.new,
            "still_parked": [{"message": label, "reason": reason} for label, reason in self.still],
            "rules": {name: {**asdict(count), "new": count.new} for name, count in self.rules.items()},
        }


async def replay_queue(
    config: Config,
    state_dsn: str,
    plan: QueueReplayPlan,
    *,
    collation: str = "C",
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> QueueReplayResult:
    """Read the plan's parked messages again with the queue's current ``format:`` and rules (``collation``:
    the source database's, as the live source compiles them) and insert the events of those that read now,
    marking them retried in the same transaction; those that still fail keep their row, with the reason
    of now.  ``dry_run``: count only.  ``progress``: (messages read, messages to read)."""
    result = QueueReplayResult(plan, dry_run)
    wanted = [r for r in config.rules if r.queue == plan.queue]
    ruleset = RuleSet(wanted, config.limits, tables={}, collation=collation, locate=config.field_place)
    rules = ruleset.queues.get(plan.queue, ())
    result.rules = {rule.name: RuleCount() for rule in rules}
    query = queries.query("parked_to_retry")
    position = list(plan.position) if plan.position is not None else None
    after: tuple[str, list[int]] = ("", [])
    state = await StateStore.connect(state_dsn, schema=config.state_schema, slot=config.slot, max_size=1)
    try:
        if progress is not None:
            progress(0, plan.waiting)
        while True:
            args = query.args(
                queue=plan.queue, part=plan.part, position=position, after_part=after[0],
                after_position=after[1], limit=QUEUE_RETRY_MESSAGES,
            )  # fmt: skip
            rows = await state.pool.fetch(query.asyncpg, *args)
            if not rows:
                break
            batch, outcomes = _read_again(result, rows, rules, now or datetime.now(UTC))
            await tally(state, batch, result.rules)
            if not dry_run:
                result.inserted += await state.retry_parked(plan.queue, batch, outcomes)
            after = (rows[-1]["part"], list(rows[-1]["position"]))
            if progress is not None:
                progress(result.messages, max(plan.waiting, result.messages))
    finally:
        await state.close()
    return result


def _read_again(
    result: QueueReplayResult, rows: Sequence[Any], rules: Sequence[CompiledRule], now: datetime
) -> tuple[EventBatch, list[tuple[str, tuple[int, ...], str | None]]]:
    """The events of ``rows``' messages that read now, and each message's outcome (part, position, None
    or the reason it still fails with)."""
    plan = result.plan
    batch = EventBatch()
    outcomes: list[tuple[str, tuple[int, ...], str | None]] = []
    for row in rows:
        message = parked_message(row)
        read = read_message(plan.queue, plan.format, message, rules, now)
        result.messages += 1
        outcomes.append((message.part, message.position, read.parked))
        if read.parked is not None:
            result.still.append((message.label, read.parked))
            continue
        result.retried += 1
        if not read.events:
            result.unmatched += 1
        add_events(batch, plan.queue, message, read)
    return batch, outcomes


def run_queue_replay(
    config: Config,
    state_dsn: str,
    plan: QueueReplayPlan,
    *,
    collation: str = "C",
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> QueueReplayResult:
    return asyncio.run(
        replay_queue(config, state_dsn, plan, collation=collation, dry_run=dry_run, progress=progress)
    )
