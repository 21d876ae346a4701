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
events it would produce and how many of them already exist, writing nothing (:mod:`.rewind_dry_run`).
The window the target must lie in is read by :mod:`.rewind_window`.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import dict_row

from listener.defaults import REWIND_WAIT_POLL_S
from listener.errors import ListenerError, OutsideWindow, PrerequisiteError, utc_text
from listener.ops.rewind_window import (
    Conn,
    lsn_at,
    parse_target_lsn,
    parse_time,
    read_checkpoint,
    window,
)
from listener.pg.lsn import format_lsn
from listener.pg.slots import slot_state
from listener.queue import queries, store
from listener.rules.compile import RuleSet
from listener.rules.config import Config


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
        if rule.source != "table":  # messages, NOTIFYs and webhooks need no publication
            continue
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


def describe(target: Target, recorded: Recorded | None = None) -> str:
    head = f"rewind {recorded.id}" if recorded is not None else "rewind"
    since = f" (committed {utc_text(target.from_time)})" if target.from_time is not None else ""
    text = f"{head}: re-reading from {format_lsn(target.from_lsn)}{since} up to {format_lsn(target.up_to)}"
    if target.rerun_rule is not None:
        generation = f" as generation {recorded.generation}" if recorded and recorded.generation else ""
        text += f", rerunning rule {target.rerun_rule}{generation}"
    return text
