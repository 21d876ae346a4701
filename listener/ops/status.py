"""`listener status`: where ingest stands, what the slot keeps, what can be rewound, and the queue.

Read-only: the slot from ``pg_replication_slots`` on the watched database; the checkpoint, the history,
rewinds and run counts from the state schema.  The WAL the server keeps for the slot is
``pg_current_wal_lsn() - restart_lsn``: it includes the retention window, WAL not ingested yet, and WAL of
other databases written meanwhile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from listener.cli.render import cell
from listener.ops import rewind as rw
from listener.pg.lsn import format_lsn
from listener.rules.config import Config

COUNTED_STATUSES = ("pending", "running", "dead")


@dataclass
class Status:
    slot: str
    slot_exists: bool
    active_pid: int | None
    checkpoint_lsn: str | None
    checkpoint_at: datetime | None
    confirmed_flush_lsn: str | None
    restart_lsn: str | None
    current_wal_lsn: str | None
    wal_status: str | None
    retained_wal_bytes: int | None
    warn_wal_bytes: int
    retain: dict[str, str | None] | None
    rewindable: dict[str, Any] | None  # from_lsn, from_time, to_lsn
    journal: dict[str, Any] | None  # keep, since, oldest_commit_time, bytes (None: off and empty)
    runs: dict[str, int]
    rewinds: list[dict[str, Any]] = field(default_factory=list)
    backfills: list[dict[str, Any]] = field(default_factory=list)  # see `listener backfill status`
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def gather(config: Config, source: rw.Conn, state: rw.Conn) -> Status:
    slot = rw.slot_state(source, config.slot)
    cp = rw.read_checkpoint(state, config.slot)
    warn = config.retain.warn_bytes
    status = Status(
        slot=config.slot,
        slot_exists=slot is not None,
        active_pid=slot.active_pid if slot else None,
        checkpoint_lsn=format_lsn(cp[0]) if cp else None,
        checkpoint_at=cp[1] if cp else None,
        confirmed_flush_lsn=_lsn(slot.confirmed_flush) if slot else None,
        restart_lsn=_lsn(slot.restart_lsn) if slot else None,
        current_wal_lsn=_lsn(slot.current_lsn) if slot else None,
        wal_status=slot.wal_status if slot else None,
        retained_wal_bytes=slot.retained_bytes if slot else None,
        warn_wal_bytes=warn,
        retain={"duration": config.retain.duration, "size": config.retain.size}
        if config.retain.enabled
        else None,
        rewindable=None,
        journal=None,
        runs=dict.fromkeys(COUNTED_STATUSES, 0),
    )
    if slot is None:
        status.warnings.append(f"replication slot {config.slot!r} does not exist: run `listener init`")
    elif slot.wal_status == "lost":
        status.warnings.append(
            f"slot {config.slot!r} lost WAL it needed (max_slot_wal_keep_size): it can no longer be "
            "streamed; drop it (`listener drop`) and start again"
        )
    if slot is not None and slot.retained_bytes is not None and slot.retained_bytes > warn:
        status.warnings.append(
            f"the server keeps {_bytes(slot.retained_bytes)} of WAL for slot {config.slot!r}, above "
            f"{_bytes(warn)} (retain.warn_size): lower retain.duration / retain.size, or check that "
            "`listener run` is keeping up"
        )
    if slot is not None and cp is not None:
        win = rw.window(state, slot, cp[0])
        if win is not None:
            status.rewindable = {
                "from_lsn": format_lsn(win.oldest_lsn),
                "from_time": win.oldest_time,
                "to_lsn": format_lsn(win.checkpoint),
            }
    status.journal = _journal(config, state)
    for name, count in state.execute(
        "SELECT status, count(*) FROM runs WHERE status = ANY(%s) GROUP BY status", [list(COUNTED_STATUSES)]
    ).fetchall():
        status.runs[name] = int(count)
    status.rewinds = [asdict(row) for row in rw.rewinds(state, config.slot)]
    row = state.execute("SELECT to_regclass('backfills')").fetchone()
    if row is not None and row[0] is not None:  # a schema not migrated yet has none
        from listener.ops import backfill_requests

        status.backfills = [
            b.to_json() for b in backfill_requests.list_backfills(state, config.slot, limit=5)
        ]
    return status


def _journal(config: Config, state: rw.Conn) -> dict[str, Any] | None:
    """The change journal: since when it is complete, its oldest row and its size on disk."""
    exists = state.execute("SELECT to_regclass('journal') IS NOT NULL").fetchone()
    if exists is None or not exists[0]:  # a state schema from before the journal: `listener init` adds it
        return None
    row = state.execute(
        "SELECT (SELECT since FROM journal_horizon WHERE slot_name = %s),"
        " (SELECT min(commit_time) FROM journal), pg_total_relation_size('journal')",
        [config.slot],
    ).fetchone()
    assert row is not None
    since, oldest, size = row
    if not config.journal.enabled and oldest is None:
        return None
    return {"keep": config.journal.keep, "since": since, "oldest_commit_time": oldest, "bytes": size}


def _lsn(value: int | None) -> str | None:
    return format_lsn(value) if value is not None else None


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def print_status(console: Console, s: Status) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    running = f"in use by PID {s.active_pid}" if s.active_pid else "not in use (no `listener run` streaming)"
    grid.add_row("slot", cell(f"{s.slot}: {running}" if s.slot_exists else f"{s.slot}: missing"))
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
            text = f"off, but holds rows from {_time(j['oldest_commit_time'])} ({_bytes(j['bytes'])})"
        elif j["since"] is None:
            text = f"keep {j['keep']}: empty until `listener run` runs with it"
        else:
            text = (
                f"keep {j['keep']}: replayable from {_time(j['since'])}, oldest change "
                f"{_time(j['oldest_commit_time'])}, {_bytes(j['bytes'])}"
            )
        grid.add_row("journal", cell(text))
    retained = "-" if s.retained_wal_bytes is None else _bytes(s.retained_wal_bytes)
    grid.add_row(
        "WAL kept",
        cell(f"{retained} (warn above {_bytes(s.warn_wal_bytes)}; wal_status {s.wal_status or '-'})"),
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
