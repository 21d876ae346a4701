"""`listener rewind`: re-read the retained stream from an earlier position and evaluate every rule again.

The command only *records* a rewind (a row of ``rewinds``, then a NOTIFY on the control channel); the ingest
of `listener run` carries it out, at once when it is running, or when it starts.  That way the slot keeps
one reader, and a rewind survives crashes: its progress commits with its events.

What the command checks first, each refusal saying what is wrong and how to fix it:

* a retention window is configured (otherwise the slot confirms the checkpoint and nothing is rewindable);
* the target parses (``--to-lsn X/Y``, ``--to-time`` ISO 8601 or a duration ago such as ``2h``);
* the target lies within the window: not below the oldest retained position (the slot's
  ``confirmed_flush_lsn``: the server never starts a logical slot before it), and below the checkpoint;
* ``--rerun RULE`` names a rule of the configuration.

``--dry-run`` re-reads the range the same way on a temporary copy of the slot and counts, per rule, the
events it would produce and how many of them already exist, writing nothing.
"""

from __future__ import annotations

import asyncio
import difflib
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.rows import dict_row

from listener.defaults import REWIND_WAIT_POLL_S
from listener.errors import ListenerError, OutsideWindow, PrerequisiteError, utc_text
from listener.ops import runs as runs_mod
from listener.pg.lsn import format_lsn, parse_lsn
from listener.queue import batches, queries, store
from listener.rules.compile import RuleSet
from listener.rules.config import Config, parse_duration

Conn = runs_mod.Conn


# ---------------------------------------------------------------------------------------------------------
# Parsing the target.


def parse_time(text: str, *, now: datetime | None = None, option: str = "--to-time") -> datetime:
    """``--to-time``: ISO 8601 (``2025-03-01T12:00:00+00:00``; without an offset, this machine's time
    zone), or a duration ago (``2h``, ``90m``, ``1d``, ``2h ago``)."""
    raw = text.strip()
    ago = raw.removesuffix("ago").strip()
    hint = (
        "write ISO 8601, e.g. 2025-03-01T12:00:00+00:00 (no offset: this machine's time zone), "
        "or a duration ago, e.g. 2h, 90m or 1d"
    )
    out_of_range = ListenerError(
        f"{option} {text!r} is out of range: times go from year 1 to 9999", hint=hint
    )
    try:
        return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(ago))
    except ValueError:
        pass
    except OverflowError:  # further back than year 1
        raise out_of_range from None
    try:
        value = datetime.fromisoformat(raw.replace(" UTC", "+00:00"))
    except ValueError:
        raise ListenerError(f"invalid time {text!r} for {option}", hint=hint) from None
    try:
        return value if value.tzinfo is not None else value.astimezone()
    except (OverflowError, ValueError):  # year 1 in a time zone east of UTC
        raise out_of_range from None


def parse_target_lsn(text: str) -> int:
    try:
        return parse_lsn(text)
    except ListenerError as exc:
        raise ListenerError(f"{exc.message} for --to-lsn", hint=exc.hint) from None


# ---------------------------------------------------------------------------------------------------------
# The window, as the server and the history see it.


@dataclass(frozen=True, slots=True)
class SlotState:
    """The replication slot, as pg_replication_slots shows it."""

    name: str
    active_pid: int | None
    confirmed_flush: int | None
    restart_lsn: int | None
    wal_status: str | None
    current_lsn: int | None
    retained_bytes: int | None  # pg_current_wal_lsn() - restart_lsn: WAL the server keeps for this slot


def slot_state(conn: Conn, slot: str) -> SlotState | None:
    row = conn.execute(
        """
        SELECT active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status,
               CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
               CASE WHEN pg_is_in_recovery() THEN NULL
                    ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 END
        FROM pg_replication_slots WHERE slot_name = %s
        """,
        [slot],
    ).fetchone()
    if row is None:
        return None
    pid, confirmed, restart, wal_status, current, retained = row
    return SlotState(
        name=slot,
        active_pid=pid,
        confirmed_flush=parse_lsn(confirmed) if confirmed else None,
        restart_lsn=parse_lsn(restart) if restart else None,
        wal_status=wal_status,
        current_lsn=parse_lsn(current) if current else None,
        retained_bytes=int(retained) if retained is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Window:
    """What `listener rewind` can reach: from ``oldest_lsn`` (committed at ``oldest_time``, when the
    history knows) up to the checkpoint."""

    oldest_lsn: int
    oldest_time: datetime | None
    checkpoint: int


def read_checkpoint(state: Conn, slot: str) -> tuple[int, datetime] | None:
    row = state.execute(queries.get("checkpoint_written"), [slot]).fetchone()
    return (parse_lsn(row[0]), row[1]) if row is not None else None


def window(state: Conn, slot: SlotState, checkpoint: int) -> Window | None:
    """The rewindable range: from the oldest history position the slot still keeps (its confirmed
    position, normally a history row itself) to the checkpoint; None when nothing lies behind it."""
    if slot.confirmed_flush is None or slot.confirmed_flush >= checkpoint:
        return None
    row = state.execute(
        queries.get("oldest_history"), [slot.name, format_lsn(slot.confirmed_flush)]
    ).fetchone()
    if row is None:
        return Window(slot.confirmed_flush, None, checkpoint)
    oldest = parse_lsn(row[0])
    if oldest >= checkpoint:
        return None
    return Window(oldest, row[1], checkpoint)


def lsn_at(state: Conn, slot: str, at: datetime, window: Window) -> tuple[int, datetime] | None:
    """The newest history position within the window whose transactions all committed before ``at``:
    starting there re-reads every transaction committed at or after ``at`` (and a few seconds more)."""
    row = state.execute(queries.get("history_before"), [slot, at, format_lsn(window.oldest_lsn)]).fetchone()
    return (parse_lsn(row[0]), row[1]) if row is not None else None


# ---------------------------------------------------------------------------------------------------------
# Planning and recording a rewind.


@dataclass(frozen=True, slots=True)
class Target:
    from_lsn: int
    from_time: datetime | None  # commit time at from_lsn, when the history knows
    up_to: int
    rerun_rule: str | None
    slot_active_pid: int | None
    warnings: tuple[str, ...] = ()


def plan(
    config: Config,
    source: Conn,
    state: Conn,
    *,
    to_lsn: str | None,
    to_time: str | None,
    rerun: str | None,
    now: datetime | None = None,
) -> Target:
    """Check a rewind request against the configuration, the slot and the history; refuse clearly."""
    if (to_lsn is None) == (to_time is None):
        raise ListenerError(
            "give where to rewind to: exactly one of --to-lsn or --to-time",
            hint="e.g. listener rewind --to-time 2h  (or --to-lsn 0/16B3748); "
            "`listener status` shows the rewindable range",
        )
    names = [rule.name for rule in config.rules]
    if rerun is not None and rerun not in names:
        close = difflib.get_close_matches(rerun, names, n=1)
        where = config.source_path or "the configuration"
        raise ListenerError(
            f"--rerun {rerun}: no rule named {rerun!r} in {where}",
            hint=(f"did you mean {close[0]!r}? " if close else "")
            + ("rules: " + ", ".join(names) if names else "the configuration has no rules"),
        )
    if not config.retain.enabled:
        where = config.source_path or "the configuration"
        raise ListenerError(
            f"nothing is rewindable: {where} sets no retention window (`retain:`), so the slot keeps no WAL "
            "behind the checkpoint",
            hint="add e.g.\n    retain:\n      duration: 24h\n  and restart `listener run`; from then on the "
            "slot keeps the last 24h of WAL (README 'Rewind' gives the disk cost)",
        )
    target_lsn = parse_target_lsn(to_lsn) if to_lsn is not None else None
    target_time = parse_time(to_time, now=now) if to_time is not None else None
    slot = slot_state(source, config.slot)
    if slot is None:
        raise PrerequisiteError(
            f"replication slot {config.slot!r} does not exist", hint="run `listener init` (or `listener run`)"
        )
    cp = read_checkpoint(state, config.slot)
    if cp is None:
        raise ListenerError(
            f"nothing has been ingested from slot {config.slot!r} yet: there is nothing to rewind",
            hint="start `listener run` first",
        )
    checkpoint = cp[0]
    win = window(state, slot, checkpoint)
    asked = f"--to-lsn {to_lsn}" if to_lsn is not None else f"--to-time {to_time!r}"
    outside_hint = (
        "rewind to that position or later; to keep more, raise `retain.duration` / `retain.size` "
        "(the window fills from then on)"
    )
    if win is None:
        confirmed = slot.confirmed_flush if slot.confirmed_flush is not None else checkpoint
        raise OutsideWindow(
            asked,
            oldest_lsn=confirmed,
            oldest_time=None,
            hint="the window is empty: the slot has confirmed everything up to the checkpoint "
            f"{format_lsn(checkpoint)}. It fills while `listener run` runs with `retain:`",
        )
    if target_time is not None:
        found = lsn_at(state, config.slot, target_time, win)
        if found is None:
            raise OutsideWindow(
                f"{asked} ({utc_text(target_time)})",
                oldest_lsn=win.oldest_lsn,
                oldest_time=win.oldest_time,
                hint=outside_hint,
            )
        from_lsn, from_time = found
    else:
        assert target_lsn is not None
        if target_lsn < win.oldest_lsn:
            raise OutsideWindow(
                asked, oldest_lsn=win.oldest_lsn, oldest_time=win.oldest_time, hint=outside_hint
            )
        from_lsn, from_time = target_lsn, None
    if from_lsn >= checkpoint:
        raise ListenerError(
            f"nothing to re-read: {asked} is at or after the checkpoint {format_lsn(checkpoint)}, the newest "
            "position ingested",
            hint="rewind to an earlier position; `listener status` shows the rewindable range",
        )
    return Target(
        from_lsn=from_lsn,
        from_time=from_time,
        up_to=checkpoint,
        rerun_rule=rerun,
        slot_active_pid=slot.active_pid,
        warnings=tuple(publication_gaps(source, config)),
    )


def publication_gaps(source: Conn, config: Config) -> list[str]:
    """Rules a rewind cannot serve from the stream: the server decodes with the publication as it was
    when each change was written, so a table or operation not published then is not in the WAL stream."""
    row = source.execute(
        "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = %s",
        [config.publication],
    ).fetchone()
    published_ops = dict(zip(("insert", "update", "delete", "truncate"), row, strict=True)) if row else {}
    tables = {
        (s, t)
        for s, t in source.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", [config.publication]
        ).fetchall()
    }
    gaps = []
    for rule in RuleSet(config.rules).rules:
        missing = sorted(op for op in rule.operations if not published_ops.get(op))
        if (rule.schema, rule.table) not in tables:
            gaps.append(
                f"rule {rule.name}: {rule.qualified_table} is not in publication {config.publication}"
            )
        elif missing:
            gaps.append(
                f"rule {rule.name}: publication {config.publication} does not publish {', '.join(missing)}"
            )
    return gaps


@dataclass(frozen=True, slots=True)
class Recorded:
    id: int
    generation: int | None


_REWIND_LOCK = queries.get("rewind_lock")
# The generation of a --rerun: above every run of the rule's events in the range, and above every earlier
# rerun of the rule, so that its run ids KEY#generation are new (sql/queries/rewind.sql, next_generation:
# `listener replay --rerun` and `listener retry --rerun` pick theirs with the same statement).
_NEXT_GENERATION = queries.get("next_generation")
_INSERT_REWIND = queries.get("insert_rewind")


def record(config: Config, source: Conn, state: Conn, target: Target) -> Recorded:
    """Record the rewind and wake a running ingest.  Refused (and ended) if the slot confirmed past its
    start meanwhile: from then on, an unfinished rewind holds the confirmed position at its start."""
    params = {
        "rule": target.rerun_rule,
        "from": format_lsn(target.from_lsn),
        "up_to": format_lsn(target.up_to),
        "event_key": None,
        "finished_too": True,
    }
    with state.transaction():
        state.execute(_REWIND_LOCK, [config.slot])
        generation = None
        if target.rerun_rule is not None:
            row = state.execute(_NEXT_GENERATION, params).fetchone()
            assert row is not None
            generation = int(row[0])
        row = state.execute(
            _INSERT_REWIND,
            [
                config.slot,
                params["from"],
                params["up_to"],
                target.rerun_rule,
                generation,
                [rule.name for rule in config.rules],
            ],
        ).fetchone()
        assert row is not None
        rewind_id = int(row[0])
        state.execute(queries.get("wake"), {"channel": store.control_channel(config.state_schema, "rewind")})
    slot = slot_state(source, config.slot)
    if slot is not None and slot.confirmed_flush is not None and slot.confirmed_flush > target.from_lsn:
        error = f"the slot confirmed {format_lsn(slot.confirmed_flush)} before the rewind was recorded"
        state.execute(queries.get("fail_rewind"), {"error": error, "id": rewind_id})
        raise OutsideWindow(
            format_lsn(target.from_lsn),
            oldest_lsn=slot.confirmed_flush,
            oldest_time=None,
            hint="the window moved on meanwhile: rewind to a later position",
        )
    return Recorded(rewind_id, generation)


@dataclass(frozen=True, slots=True)
class RewindRow:
    """A row of ``rewinds``, for `rewind --wait` and `listener status`."""

    id: int
    from_lsn: str
    up_to: str
    position: str | None
    rerun_rule: str | None
    generation: int | None
    events_inserted: int
    runs_rerun: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


def rewinds(state: Conn, slot: str, *, finished: int = 5) -> list[RewindRow]:
    """The unfinished rewinds of ``slot`` and the last ``finished`` finished ones, oldest first."""
    rows = (
        state.cursor(row_factory=dict_row)
        .execute(queries.get("rewinds"), {"slot": slot, "n": finished})
        .fetchall()
    )
    return [RewindRow(**row) for row in rows]


def wait_finished(state: Conn, rewind_id: int, *, timeout: float | None = None) -> RewindRow:
    """Poll until the rewind is finished (or failed)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        row = state.cursor(row_factory=dict_row).execute(queries.get("rewind"), [rewind_id]).fetchone()
        assert row is not None
        if row["finished_at"] is not None:
            return RewindRow(**row)
        if deadline is not None and time.monotonic() > deadline:
            raise ListenerError(
                f"rewind {rewind_id} has not finished after {timeout:.0f}s",
                hint="is `listener run` running? `listener status` shows the rewind's progress",
            )
        time.sleep(REWIND_WAIT_POLL_S)


# ---------------------------------------------------------------------------------------------------------
# Dry run.


@dataclass
class RuleCount:
    events: int = 0  # changes in the range the rule matches: one event each
    present: int = 0  # of those, events already in the queue

    @property
    def new(self) -> int:
        return self.events - self.present


@dataclass
class DryRun:
    from_lsn: int
    up_to: int
    rerun_rule: str | None
    transactions: int = 0
    rules: dict[str, RuleCount] = field(default_factory=dict)

    def runs(self, rule: str) -> int:
        """New runs the rewind would make for ``rule``: one per new event, or, for the rerun rule, one per
        matching change."""
        count = self.rules[rule]
        return count.events if rule == self.rerun_rule else count.new

    def to_json(self) -> dict[str, Any]:
        return {
            "from_lsn": format_lsn(self.from_lsn),
            "up_to": format_lsn(self.up_to),
            "rerun_rule": self.rerun_rule,
            "transactions": self.transactions,
            "rules": {
                name: {**asdict(count), "new": count.new, "runs": self.runs(name)}
                for name, count in self.rules.items()
            },
        }


_EXISTING = queries.get("existing_events")


async def tally(state: store.StateStore, batch: batches.EventBatch, counts: dict[str, RuleCount]) -> None:
    """Count a batch's events per rule, and those whose keys are already in the queue (dry runs)."""
    keys = [batch.event_key(index) for index in range(len(batch))]  # as stored
    rules = [batch.groups[gid - 1][0] for gid in batch.group]
    for rule, n in Counter(rules).items():
        counts[rule].events += n
    if keys:
        for rule, n in await state.pool.fetch(_EXISTING, keys, rules):
            counts[rule].present += n


async def dry_run(config: Config, source_dsn: str, state_dsn: str, target: Target) -> DryRun:
    """Re-read the target's range on a temporary copy of the slot; count, per rule, the events it holds
    and those already present.  Writes nothing; the slot and a running ingest are not touched."""
    from listener.ingest import Ingest
    from listener.queue.batches import EventBatch, RewindPlan
    from listener.queue.store import StateStore

    state = await StateStore.connect(state_dsn, schema=config.state_schema, slot=config.slot, max_size=1)
    result = DryRun(target.from_lsn, target.up_to, target.rerun_rule)
    result.rules = {rule.name: RuleCount() for rule in config.rules}
    try:
        ingest = Ingest.from_config(config, source_dsn=source_dsn, store=state)

        async def count(batch: EventBatch) -> None:
            await tally(state, batch, result.rules)

        plan_ = RewindPlan(0, target.from_lsn, target.up_to, None, target.rerun_rule, None, ())
        await ingest.count_rewind(plan_, count)
        result.transactions = ingest.stats.rewound
    finally:
        await state.close()
    return result


def run_dry(config: Config, source_dsn: str, state_dsn: str, target: Target) -> DryRun:
    return asyncio.run(dry_run(config, source_dsn, state_dsn, target))


# ---------------------------------------------------------------------------------------------------------
# Output.


def describe(target: Target, recorded: Recorded | None = None) -> str:
    head = f"rewind {recorded.id}" if recorded is not None else "rewind"
    since = f" (committed {utc_text(target.from_time)})" if target.from_time is not None else ""
    text = f"{head}: re-reading from {format_lsn(target.from_lsn)}{since} up to {format_lsn(target.up_to)}"
    if target.rerun_rule is not None:
        generation = f" as generation {recorded.generation}" if recorded and recorded.generation else ""
        text += f", rerunning rule {target.rerun_rule}{generation}"
    return text
