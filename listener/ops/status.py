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

from listener.ingest.heartbeat import invalidation_error
from listener.ingest.leadership import lock_key
from listener.ops import rewind as rw
from listener.ops import rewind_window as rwin
from listener.pg.lsn import format_lsn
from listener.pg.slots import slot_state
from listener.queue import queries
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
    # `runs: keep:`: keep, workflows, pruned_events, pruned_runs, last_pruned, oldest_finished (None: off
    # and never pruned)
    run_retention: dict[str, Any] | None = None
    # the slot's leader among the replicas: epoch, holder, since, running (its lock held now); None: never
    leader: dict[str, Any] | None = None
    rewinds: list[dict[str, Any]] = field(default_factory=list)
    backfills: list[dict[str, Any]] = field(default_factory=list)  # see `listener backfill status`
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def gather(config: Config, source: rwin.Conn, state: rwin.Conn) -> Status:
    slot = slot_state(source, config.slot)
    cp = rwin.read_checkpoint(state, config.slot)
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
        lost = invalidation_error(config.slot, "wal_removed: max_slot_wal_keep_size")
        status.warnings.append(f"{lost.message}; {lost.hint}")
    if slot is not None and slot.wal_status != "lost" and slot.near_invalidation:
        assert slot.safe_wal_bytes is not None and slot.keep_wal_bytes is not None
        status.warnings.append(
            f"slot {config.slot!r} is {human_bytes(slot.safe_wal_bytes)} of WAL from being invalidated by "
            f"max_slot_wal_keep_size ({human_bytes(slot.keep_wal_bytes)}; wal_status {slot.wal_status}): "
            "`listener run` is behind or stopped; let it catch up, or raise max_slot_wal_keep_size"
        )
    if slot is not None and slot.retained_bytes is not None and slot.retained_bytes > warn:
        status.warnings.append(
            f"the server keeps {human_bytes(slot.retained_bytes)} of WAL for slot {config.slot!r}, above "
            f"{human_bytes(warn)} (retain.warn_size): lower retain.duration / retain.size, or check that "
            "`listener run` is keeping up"
        )
    if slot is not None and cp is not None:
        win = rwin.window(state, slot, cp[0])
        if win is not None:
            status.rewindable = {
                "from_lsn": format_lsn(win.oldest_lsn),
                "from_time": win.oldest_time,
                "to_lsn": format_lsn(win.checkpoint),
            }
    status.journal = _journal(config, state)
    status.run_retention = _run_retention(config, state)
    for name, count in state.execute(
        queries.get("count_runs"), {"statuses": list(COUNTED_STATUSES)}
    ).fetchall():
        status.runs[name] = int(count)
    status.rewinds = [asdict(row) for row in rw.rewinds(state, config.slot)]
    status.leader = _leader(config, state)
    row = state.execute(queries.get("regclass"), ["backfills"]).fetchone()
    if row is not None and row[0] is not None:  # a schema not migrated yet has none
        from listener.ops import backfill_requests

        status.backfills = [
            b.to_json() for b in backfill_requests.list_backfills(state, config.slot, limit=5)
        ]
    return status


def _leader(config: Config, state: rwin.Conn) -> dict[str, Any] | None:
    """The slot's last elected leader (listener.ingest.leadership), and whether it runs now."""
    row = state.execute(queries.get("regclass"), ["leaders"]).fetchone()
    if row is None or row[0] is None:  # a schema not migrated yet has none
        return None
    found = state.execute(
        queries.get("leader_of"), {"slot": config.slot, "key": lock_key(config.state_schema, config.slot)}
    )
    leader = found.fetchone()
    if leader is None:
        return None
    epoch, holder, since, running = leader
    return {"epoch": int(epoch), "holder": str(holder), "since": since, "running": bool(running)}


def _journal(config: Config, state: rwin.Conn) -> dict[str, Any] | None:
    """The change journal: since when it is complete, its oldest row and its size on disk."""
    exists = state.execute(queries.get("regclass"), ["journal"]).fetchone()
    if exists is None or exists[0] is None:  # a state schema from before the journal: `listener init` adds it
        return None
    row = state.execute(queries.get("journal_summary"), [config.slot]).fetchone()
    assert row is not None
    since, oldest, size = row
    if not config.journal.enabled and oldest is None:
        return None
    return {"keep": config.journal.keep, "since": since, "oldest_commit_time": oldest, "bytes": size}


def _run_retention(config: Config, state: rwin.Conn) -> dict[str, Any] | None:
    """The retention of finished runs: what was pruned, and the oldest finished run kept (an index probe
    per workflow, listener.ingest.run_retention)."""
    exists = state.execute(queries.get("regclass"), ["run_retention"]).fetchone()
    if exists is None or exists[0] is None:  # a state schema from before it: `listener init` adds it
        return None
    row = state.execute(queries.get("retention_summary"), [config.slot]).fetchone()
    if not config.runs.enabled and row is None:
        return None
    events, runs, last = row if row is not None else (0, 0, None)
    oldest = None
    for (workflow,) in state.execute(queries.get("finished_workflows")).fetchall():
        found = state.execute(queries.get("oldest_finished"), [workflow]).fetchone()
        if found is not None and found[0] is not None and (oldest is None or found[0] < oldest):
            oldest = found[0]
    return {
        "keep": config.runs.keep,
        "workflows": dict(config.runs.workflows),
        "pruned_events": int(events),
        "pruned_runs": int(runs),
        "last_pruned": last,
        "oldest_finished": oldest,
    }


def _lsn(value: int | None) -> str | None:
    return format_lsn(value) if value is not None else None


def human_bytes(n: int) -> str:
    """A size for people: ``512 B``, ``1.5 MB``."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
