"""What the commands print: the tables and lines of ``runs``, ``status``, ``rewind``, ``replay``,
``backfill``, ``queues`` and ``demo`` for people, their progress bars, and the JSON lines of ``tail``.  The
commands' data comes from ``listener.ops``; JSON for scripts is :func:`listener.cli.render.dumps` of the
same data.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from listener.cli.render import cell, dumps, printable, progress_bar
from listener.defaults import ERROR_CELL_CHARS, PARKED_PREVIEW_BYTES, RESULT_CELL_CHARS, WIDE_COLUMNS
from listener.ingest.brokers import position_label
from listener.ops import replay as journal
from listener.ops.backfill_requests import BackfillRow
from listener.ops.demo import DemoRun
from listener.ops.queues import ParkedMessage, ParkedRow, QueueReplayResult, QueueView
from listener.ops.replay import ReplayResult
from listener.ops.rewind import RewindRow
from listener.ops.rewind_dry_run import DryRun, RuleCount
from listener.ops.runs import AttemptInfo, RunDetail, RunRow
from listener.ops.status import Status, human_bytes
from listener.pg.changes import Change, change_json
from listener.pg.lsn import format_lsn

_STYLE = {"pending": "yellow", "running": "cyan", "done": "green", "dead": "bold red", "cancelled": "dim"}


# ---------------------------------------------------------------------------------------------------------
# listener runs, listener runs show


def print_runs(console: Console, runs: Sequence[RunRow], *, limit: int) -> None:
    if not runs:
        console.print("no runs match")
        return
    wide = console.width >= WIDE_COLUMNS
    more = f"; more may exist: raise --limit (now {limit})" if len(runs) >= limit else ""
    table = Table(
        caption=f"{len(runs)} run(s), newest first{more}"
        + ("" if wide else f"; times in a terminal of {WIDE_COLUMNS}+ columns or `runs show`"),
        caption_justify="left",
        show_edge=wide,
    )
    # Only status and the numbers never break: ids and workflows fold, times break at the blank.
    table.add_column("id", overflow="fold", min_width=min(12, max(len(r.id) for r in runs)))
    table.add_column("workflow", overflow="fold", min_width=10)
    table.add_column("status", no_wrap=True)
    if wide:
        table.add_column("attempt", justify="right", no_wrap=True)
        table.add_column("failures", justify="right", no_wrap=True)
        table.add_column("created", min_width=10)
        table.add_column("started", min_width=10)
        table.add_column("finished", min_width=10)
    else:
        table.add_column("attempt", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("last error", overflow="fold", min_width=8)
    for r in runs:
        error = cell(_first_line(r.last_error, ERROR_CELL_CHARS))
        if wide:
            table.add_row(
                cell(r.id),
                cell(r.workflow),
                _status(r.status),
                str(r.attempt),
                str(r.failures),
                _time(r.created_at),
                _time(r.started_at),
                _time(r.finished_at),
                _duration(r.duration_s),
                error,
            )
        else:
            tries = f"{r.attempt} ({r.failures} failed)" if r.failures else str(r.attempt)
            table.add_row(
                cell(r.id), cell(r.workflow), _status(r.status), tries, _duration(r.duration_s), error
            )
    console.print(table)


def print_run(console: Console, d: RunDetail) -> None:
    r = d.run
    head = Text.assemble(("run ", "bold"), (printable(r.id), "bold"), "  ", _status(r.status))
    if r.generation:
        head.append(printable(f"  (generation {r.generation} of event {r.event_key})"), "dim")
    console.print(head)
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    fields.add_row("workflow", cell(r.workflow))
    fields.add_row("attempt", f"{r.attempt} ({r.failures} failed)")
    fields.add_row("created", _time(r.created_at))
    fields.add_row("started", _time(r.started_at))
    fields.add_row("finished", _time(r.finished_at))
    so_far = " so far" if r.started_at and not r.finished_at else ""
    fields.add_row("duration", _duration(r.duration_s) + so_far)
    if r.status == "pending":
        fields.add_row("runs after", _time(d.run_after))
    if r.status == "running":
        fields.add_row("lease", cell(f"{d.lease_owner} until {_time(d.lease_expires)}"))
    if len(d.generations) > 1:
        fields.add_row("generations", cell(", ".join(f"{g.id} ({g.status})" for g in d.generations)))
    console.print(fields)

    console.print()
    e = d.event
    if e is None:
        console.print(cell(f"event {r.event_key}: missing from the events table", "red"))
    else:
        console.print(Text.assemble(("event ", "bold"), (printable(e.idempotency_key), "bold")))
        ev = Table.grid(padding=(0, 2))
        ev.add_column(style="bold")
        ev.add_column()
        ev.add_row("rule", cell(f"{e.rule} ({e.source})"))
        ev.add_row("change", cell(" ".join(x for x in (e.op, e.table_name) if x) or "-"))
        ev.add_row("lsn", cell(f"{e.lsn or '-'} (commit {e.commit_lsn or '-'}, xid {e.xid or '-'})"))
        ev.add_row("committed", _time(e.commit_time))
        payload = e.payload if isinstance(e.payload, dict) else {"payload": e.payload}
        for part in ("new", "old"):
            if payload.get(part) is not None:
                ev.add_row(part, cell(dumps(payload[part])))
        if payload.get("unchanged_toast"):
            ev.add_row("unchanged", cell(", ".join(map(str, payload["unchanged_toast"]))))
        console.print(ev)

    console.print()
    if console.width >= WIDE_COLUMNS:
        _step_table(console, d)
        _attempt_table(console, d)
    else:  # one line per step and per attempt, the error on a line of its own
        console.print(cell(f"steps ({len(d.steps)})" if d.steps else "steps: none recorded", "bold"))
        for s in d.steps:
            console.print(
                Text.assemble(
                    "  ",
                    (printable(s.name), "bold"),
                    f"  attempt {s.attempt}  {_time(s.started_at)}  {_duration(s.duration_s)}  ",
                    printable(_truncate(dumps(s.result), RESULT_CELL_CHARS)),
                )
            )
        console.print(cell(f"attempts ({len(d.attempts)})" if d.attempts else "attempts: none yet", "bold"))
        for a in d.attempts:
            console.print(
                Text.assemble(
                    f"  {a.attempt}  ",
                    _status(_outcome(d, a)),
                    printable(f"  {a.worker}  {_time(a.started_at)}  {_duration(a.duration_s)}"),
                )
            )
            if a.error:
                console.print(cell(f"     {a.error}"))

    if r.last_error:
        console.print()
        console.print(Text.assemble(("last error: ", "bold red"), printable(r.last_error)))
        if d.traceback:
            console.print(cell(d.traceback.rstrip("\n"), "dim"))


def _step_table(console: Console, d: RunDetail) -> None:
    if not d.steps:
        console.print("steps: none recorded")
        return
    steps = Table(title=f"steps ({len(d.steps)})", title_justify="left")
    steps.add_column("step", overflow="fold")
    steps.add_column("attempt", justify="right")
    steps.add_column("started", no_wrap=True)
    steps.add_column("finished", no_wrap=True)
    steps.add_column("duration", justify="right", no_wrap=True)
    steps.add_column("result", overflow="ellipsis", no_wrap=True)
    for s in d.steps:
        steps.add_row(
            cell(s.name),
            str(s.attempt),
            _time(s.started_at),
            _time(s.finished_at),
            _duration(s.duration_s),
            cell(_truncate(dumps(s.result), RESULT_CELL_CHARS)),
        )
    console.print(steps)


def _attempt_table(console: Console, d: RunDetail) -> None:
    if not d.attempts:
        console.print("attempts: none yet")
        return
    attempts = Table(title=f"attempts ({len(d.attempts)})", title_justify="left")
    attempts.add_column("attempt", justify="right")
    attempts.add_column("worker", overflow="fold")
    attempts.add_column("started", no_wrap=True)
    attempts.add_column("finished", no_wrap=True)
    attempts.add_column("duration", justify="right", no_wrap=True)
    attempts.add_column("outcome", no_wrap=True)
    attempts.add_column("error", overflow="fold")
    for a in d.attempts:
        attempts.add_row(
            str(a.attempt),
            cell(a.worker),
            _time(a.started_at),
            _time(a.finished_at),
            _duration(a.duration_s),
            _status(_outcome(d, a)),
            cell(a.error or ""),
        )
    console.print(attempts)


def _outcome(d: RunDetail, a: AttemptInfo) -> str:
    if a.outcome:
        return a.outcome
    return "running" if d.run.status == "running" and a.attempt == d.run.attempt else "-"


def _status(status: str) -> Text:
    return cell(status, _STYLE.get(status, ""))


def _time(value: datetime | None) -> str:
    """Local time to the second, for people; JSON keeps the full ISO 8601 value."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _first_line(text: str | None, width: int) -> str:
    if not text:
        return ""
    lines = text.strip().splitlines()
    first = lines[0] if lines else ""
    return _truncate(first + (" …" if len(lines) > 1 else ""), width)


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------------------------------------
# listener status


def print_status(console: Console, s: Status) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    running = f"in use by PID {s.active_pid}" if s.active_pid else "not in use (no `listener run` streaming)"
    grid.add_row("slot", cell(f"{s.slot}: {running}" if s.slot_exists else f"{s.slot}: missing"))
    if s.leader is not None:
        who = f"{s.leader['holder']} (epoch {s.leader['epoch']}, since {_time(s.leader['since'])})"
        grid.add_row("leader", cell(who if s.leader["running"] else f"none running; the last was {who}"))
    grid.add_row("checkpoint", cell(f"{s.checkpoint_lsn or '-'} (written {_time(s.checkpoint_at)})"))
    grid.add_row("confirmed", cell(f"{s.confirmed_flush_lsn or '-'} (restart_lsn {s.restart_lsn or '-'})"))
    if s.retain is None:
        grid.add_row("retain", cell("off: the slot confirms the checkpoint; nothing is rewindable"))
    else:
        grid.add_row("retain", cell(", ".join(f"{k} {v}" for k, v in s.retain.items() if v is not None)))
    if s.rewindable is not None:
        r = s.rewindable
        grid.add_row(
            "rewindable", cell(f"{r['from_lsn']} (committed {_time(r['from_time'])}) .. {r['to_lsn']}")
        )
    elif s.retain is not None:
        grid.add_row("rewindable", cell("nothing yet: the window fills while `listener run` runs"))
    if s.journal is not None:
        j = s.journal
        if j["keep"] is None:
            text = f"off, but holds rows from {_time(j['oldest_commit_time'])} ({human_bytes(j['bytes'])})"
        elif j["since"] is None:
            text = f"keep {j['keep']}: empty until `listener run` runs with it"
        else:
            text = (
                f"keep {j['keep']}: replayable from {_time(j['since'])}, oldest change "
                f"{_time(j['oldest_commit_time'])}, {human_bytes(j['bytes'])}"
            )
        grid.add_row("journal", cell(text))
    if s.run_retention is not None:
        r = s.run_retention
        periods = ", ".join(
            [f"keep {r['keep'] or 'forever'}", *(f"{w} {k}" for w, k in r["workflows"].items())]
        )
        pruned = f"{r['pruned_runs']} run(s) of {r['pruned_events']} event(s) pruned"
        if r["last_pruned"] is not None:
            pruned += f", last {_time(r['last_pruned'])}"
        grid.add_row("finished", cell(f"{periods}: {pruned}; oldest kept {_time(r['oldest_finished'])}"))
    retained = "-" if s.retained_wal_bytes is None else human_bytes(s.retained_wal_bytes)
    grid.add_row(
        "WAL kept",
        cell(f"{retained} (warn above {human_bytes(s.warn_wal_bytes)}; wal_status {s.wal_status or '-'})"),
    )
    grid.add_row("runs", cell(", ".join(f"{n} {name}" for name, n in s.runs.items())))
    console.print(grid)
    if s.rewinds:
        table = Table(title="rewinds", title_justify="left")
        for column in ("id", "from", "up to", "rerun", "progress", "new events", "reruns", "state"):
            table.add_column(column, overflow="fold")
        for w in s.rewinds:
            if w["error"]:
                state = cell(f"failed: {w['error']}", "red")
            elif w["finished_at"]:
                state = cell(f"finished {_time(w['finished_at'])}", "green")
            elif w["started_at"]:
                state = cell("running", "cyan")
            else:
                state = cell("waiting for `listener run`", "yellow")
            rerun = f"{w['rerun_rule']} (#{w['generation']})" if w["rerun_rule"] else "-"
            table.add_row(
                str(w["id"]),
                w["from_lsn"],
                w["up_to"],
                cell(rerun),
                w["position"] or "-",
                str(w["events_inserted"]),
                str(w["runs_rerun"]),
                state,
            )
        console.print(table)
    if s.backfills:
        table = Table(title="backfills (`listener backfill status`)", title_justify="left")
        for column in ("id", "rule", "status", "rows read", "superseded", "to expand"):
            table.add_column(column, overflow="fold")
        for b in s.backfills:
            total = f" of ~{b['rows_total']:,}" if b["rows_total"] is not None else ""
            table.add_row(
                str(b["id"]), cell(b["rule"]), cell(b["status"]), f"{b['rows_read']:,}{total}",
                f"{b['rows_dropped']:,}", f"{b['rows_unexpanded']:,}",
            )  # fmt: skip
        console.print(table)
    for warning in s.warnings:
        console.print(cell(f"warning: {warning}", "yellow"))


# ---------------------------------------------------------------------------------------------------------
# listener rewind, listener replay


def print_dry_run(console: Console, result: DryRun) -> None:
    table = Table(
        title=f"dry run: {format_lsn(result.from_lsn)} .. {format_lsn(result.up_to)}, "
        f"{result.transactions} transaction(s) re-read",
        title_justify="left",
        caption="nothing was written",
        caption_justify="left",
    )
    table.add_column("rule", overflow="fold")
    table.add_column("events", justify="right")
    table.add_column("already present", justify="right")
    table.add_column("new", justify="right")
    table.add_column("new runs", justify="right")
    for name, count in result.rules.items():
        runs = str(result.runs(name)) + (" (rerun)" if name == result.rerun_rule else "")
        table.add_row(Text(name), str(count.events), str(count.present), str(count.new), runs)
    console.print(table)


def print_finished(console: Console, row: RewindRow) -> None:
    if row.error:
        console.print(cell(f"rewind {row.id} failed: {row.error}", "red"))
        return
    reruns = f", {row.runs_rerun} rerun(s) of rule {row.rerun_rule}" if row.rerun_rule else ""
    console.print(f"rewind {row.id} finished: {row.events_inserted} new event(s){reruns}")


def print_replay(console: Console, result: ReplayResult) -> None:
    plan = result.plan
    rerun = plan.rules[0] if plan.rerun else None
    title = (
        f"{journal.describe(plan)}: {result.changes} request(s)"
        if plan.webhook is not None
        else f"{journal.describe(plan)}: {result.changes} change(s) in {result.rows} journal row(s)"
    )
    runs = {name: str(result.runs(name)) + (" (rerun)" if name == rerun else "") for name in result.rules}
    console.print(_rule_counts(title, result.dry_run, result.rules, runs))
    if not result.dry_run:
        reruns = (
            f", {result.reruns} run(s) of rule {rerun} as generation {result.generation}" if rerun else ""
        )
        console.print(f"{result.inserted} new event(s){reruns}")


def _rule_counts(title: str, dry_run: bool, rules: dict[str, RuleCount], runs: dict[str, str]) -> Table:
    """Per rule: the events read, those already present, the new ones and the runs they make."""
    table = Table(
        title=title,
        title_justify="left",
        caption="dry run: nothing was written" if dry_run else None,
        caption_justify="left",
    )
    table.add_column("rule", overflow="fold")
    table.add_column("events", justify="right")
    table.add_column("already present", justify="right")
    table.add_column("new", justify="right")
    table.add_column("new runs", justify="right")
    for name, count in rules.items():
        table.add_row(Text(name), str(count.events), str(count.present), str(count.new), runs[name])
    return table


def replay_progress(
    console: Console, what: str = "the journal", unit: str = "changes"
) -> contextlib.AbstractContextManager[Callable[[int, int], None]]:
    """The bar of `listener replay` on ``console`` while ``what`` is read (gone once it is done)."""
    return progress_bar(
        console,
        TextColumn(f"replaying {what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeRemainingColumn(),
        description="replay",
        transient=True,
    )


# ---------------------------------------------------------------------------------------------------------
# listener backfill


def print_backfills(console: Console, found: Sequence[BackfillRow]) -> None:
    table = Table(title="backfills", title_justify="left")
    for column in ("id", "rule", "where", "status", "rows read", "of about", "superseded", "to expand",
                   "last key", "error"):  # fmt: skip
        table.add_column(column, overflow="fold")
    for row in found:
        table.add_row(
            str(row.id), row.rule, row.where_sql or "", row.status, f"{row.rows_read:,}",
            f"{row.rows_total:,}" if row.rows_total is not None else "", f"{row.rows_dropped:,}",
            f"{row.rows_unexpanded:,}", ",".join(row.last_key or []), row.error or "",
        )  # fmt: skip
    console.print(table)


@contextmanager
def backfill_progress(console: Console) -> Iterator[Callable[[BackfillRow], None]]:
    """A bar (rows read, rows/s, ETA) on ``console``, drawn from each backfill row it is given."""
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} rows/s"),
        TimeRemainingColumn(),
    )
    progress: Progress | None = None
    task = None
    started = 0.0
    first = 0

    def show(row: BackfillRow) -> None:
        nonlocal progress, task, started, first
        if progress is None:
            progress = Progress(*columns, console=console, transient=False)
            progress.start()
            task = progress.add_task(
                f"backfill {row.id} ({row.rule})", total=row.rows_total or None, rate="-", completed=0
            )
            started = time.monotonic()
            first = row.rows_read
        assert task is not None
        elapsed = time.monotonic() - started
        rate = (row.rows_read - first) / elapsed if elapsed > 0.5 else 0.0
        total = max(row.rows_total or 0, row.rows_read) or None
        if row.status == "done":
            total = row.rows_read
        progress.update(task, completed=row.rows_read, total=total, rate=f"{rate:,.0f}" if rate else "-")

    try:
        yield show
    finally:
        if progress is not None:
            progress.stop()


# ---------------------------------------------------------------------------------------------------------
# listener queues, queues parked, replay --queue


def print_queues(console: Console, found: Sequence[QueueView]) -> None:
    if not found:
        console.print('no queues: add a `queues:` section to the config (README "Queue sources")')
        return
    table = Table(caption="position: the last message whose events are durable", caption_justify="left")
    table.add_column("queue", overflow="fold")
    table.add_column("broker", no_wrap=True)
    table.add_column("part", overflow="fold")
    table.add_column("position", no_wrap=True)
    table.add_column("moved", min_width=10)
    table.add_column("parked", justify="right", no_wrap=True)
    for q in found:
        broker = q.broker or "(not configured)"
        parked = Text(str(q.parked), "bold red" if q.parked else "")
        if not q.parts:
            table.add_row(cell(q.name), broker, "-", "none stored yet", "-", parked)
        for n, p in enumerate(q.parts):
            table.add_row(
                cell(q.name) if n == 0 else "", broker if n == 0 else "", cell(p.part), cell(p.position),
                _time(p.updated_at), parked if n == 0 else "",
            )  # fmt: skip
    console.print(table)
    if any(q.parked for q in found):
        console.print("`listener queues parked` lists the parked messages; `listener replay --queue NAME` "
                      "reads them again once the cause is fixed")  # fmt: skip


def print_parked(console: Console, rows: Sequence[ParkedRow], *, limit: int, everything: bool) -> None:
    if not rows:
        console.print(
            "no parked messages" + ("" if everything else " waiting for a retry (--all: retried too)")
        )
        return
    more = f"; more may exist: raise --limit (now {limit})" if len(rows) >= limit else ""
    table = Table(
        caption=f"{len(rows)} parked message(s), oldest first{more}; `--show POSITION` prints one",
        caption_justify="left",
    )
    table.add_column("queue", overflow="fold")
    table.add_column("part", overflow="fold")
    table.add_column("position", no_wrap=True)
    table.add_column("topic", overflow="fold")
    table.add_column("parked", min_width=10)
    table.add_column("size", justify="right", no_wrap=True)
    if everything:
        table.add_column("retried", min_width=10)
    table.add_column("reason", overflow="fold", min_width=12)
    for r in rows:
        retried = [_time(r.retried_at)] if everything else []
        table.add_row(
            cell(r.queue), cell(r.part), cell(r.position), cell(r.topic), _time(r.parked_at),
            human_bytes(r.bytes), *retried, cell(_first_line(r.reason, ERROR_CELL_CHARS)),
        )  # fmt: skip
    console.print(table)


def print_parked_message(console: Console, m: ParkedMessage) -> None:
    r = m.row
    console.print(
        Text.assemble(("parked message ", "bold"), (printable(f"{r.queue} {r.part}:{r.position}"), "bold"))
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("topic", cell(r.topic))
    grid.add_row("sent", _time(r.sent_at))
    grid.add_row("parked", _time(r.parked_at))
    grid.add_row("retried", _time(r.retried_at) if r.retried_at else "not yet")
    grid.add_row("reason", cell(r.reason))
    key = m.to_json()["key"]
    grid.add_row("key", cell(key) if key is not None else "-")
    grid.add_row("headers", cell(dumps(m.headers)) if m.headers else "-")
    console.print(grid)
    text = m.text
    if text is not None:
        console.print(Text(f"body ({human_bytes(r.bytes)}, UTF-8)", "bold"))
        console.print(cell(text))
        return
    shown = m.body[:PARKED_PREVIEW_BYTES]
    cut = f", the first {len(shown)} as hex" if len(shown) < len(m.body) else ", as hex"
    console.print(Text(f"body ({human_bytes(r.bytes)}, not UTF-8{cut}; --json: whole, base64)", "bold"))
    for start in range(0, len(shown), 32):
        console.print(f"{start:08x}  {shown[start : start + 32].hex(' ')}")


def print_queue_replay(console: Console, result: QueueReplayResult) -> None:
    plan = result.plan
    what = f"queue {plan.queue}"
    if plan.part is not None and plan.position is not None:
        what += f", message {position_label(plan.part, plan.position)}"
    if not result.messages:
        console.print(f"{what}: no parked message waits for a retry: nothing to do")
        return
    if result.rules:
        title = f"retry of {what}: {result.messages} parked message(s) read again"
        runs = {name: str(count.new) for name, count in result.rules.items()}  # one run per new event
        console.print(_rule_counts(title, result.dry_run, result.rules, runs))
    would = "would be " if result.dry_run else ""
    unmatched = f" ({result.unmatched} matched no rule)" if result.unmatched else ""
    made = "would make" if result.dry_run else "made"
    console.print(
        f"{result.retried} message(s) {would}retried{unmatched}: {made} {result.new} new event(s) and run(s)"
    )
    if result.still:
        updated = "" if result.dry_run else " (with the reason they fail with now)"
        console.print(cell(f"{len(result.still)} message(s) still parked{updated}:", "yellow"))
        for label, reason in result.still:
            console.print(cell(f"  {label}: {reason}"))


# ---------------------------------------------------------------------------------------------------------
# listener demo


def print_demo(console: Console, run: DemoRun) -> None:
    from listener_examples.onboarding import ACTIONS

    started, expected = run.started, run.expected
    table = Table(title="row change → workflow run")
    table.add_column("rule")
    table.add_column("change")
    table.add_column("commit → start", justify="right")
    for event, at in started:
        commit = event.commit_time or datetime.now(UTC)
        latency_ms = (at - commit.timestamp()) * 1000
        row = (event.new or {}).get("email") or (event.new or {}).get("subject", "")
        table.add_row(
            event.rule,
            f"{event.op} {event.table} #{(event.new or {}).get('id')} {row}",
            f"{latency_ms:.1f} ms",
        )
    console.print(table)
    for action in ACTIONS:
        console.print(f"  • {action}")
    console.print(
        f"\n{len(started)} of {expected} changes ran their workflow. "
        "Try `listener tail` with your own rules next (see README)."
    )


# ---------------------------------------------------------------------------------------------------------
# listener tail


class JsonLines:
    """`listener tail`'s output: a JSON line per change on ``out``, flushed after each read from the server;
    tail's own notices on ``err``."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err

    def change(self, change: Change) -> None:
        self.out.write(json.dumps(change_json(change), ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self.out.flush()

    def notice(self, text: str) -> None:
        print(text, file=self.err, flush=True)
