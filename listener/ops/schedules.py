"""`listener schedules`: each schedule's state and next ticks; pause, resume and trigger one now.

They work on the state schema's ``schedules`` table (sql/0008_schedules.sql), whether `listener run` is
running or not: a running service reads the pause before each tick, and a triggered tick is an event and
its run like any other, which workers pick up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from listener.errors import ConfigError, ListenerError
from listener.queue import queries
from listener.queue.store import notify_channel
from listener.rules.config import Config
from listener.rules.schedules import MANUAL, Schedule, schedules_of

Conn = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class ScheduleView:
    """A configured schedule as `listener schedules` shows it."""

    name: str
    spec: str
    workflow: str
    overlap: str
    catchup: str
    paused: bool
    paused_by: str | None
    last_tick: datetime | None  # ticks up to here are done (None: no `listener run` has seen it yet)
    next_ticks: tuple[datetime, ...]
    zone: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": self.spec,
            "workflow": self.workflow,
            "overlap": self.overlap,
            "catchup": self.catchup,
            "paused": self.paused,
            "paused_by": self.paused_by,
            "last_tick": _utc(self.last_tick),
            "next_ticks": [_utc(t) for t in self.next_ticks],
        }


def _utc(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat() if at is not None else None


def find(config: Config, name: str) -> Schedule:
    """The configured schedule ``name``; a ConfigError listing the others."""
    for schedule in schedules_of(config):
        if schedule.name == name:
            return schedule
    known = ", ".join(s.name for s in config.schedules) or "none"
    raise ConfigError(
        f"no schedule named {name!r} in {config.source_path or 'the configuration'}",
        hint=f"name one of its `schedules:` ({known})",
    )


def list_schedules(
    conn: Conn, config: Config, *, count: int, now: datetime | None = None
) -> list[ScheduleView]:
    """The configured schedules, each with its state and next ``count`` ticks (after ``now``)."""
    now = now or datetime.now(UTC)
    rows = {r["name"]: r for r in conn.cursor(row_factory=dict_row).execute(queries.get("list_schedules"))}
    views = []
    for settings in config.schedules:
        schedule = Schedule(settings)
        row = rows.get(settings.name)
        upcoming = []
        for tick in schedule.ticks_after(now):
            upcoming.append(schedule.fire_at(tick))
            if len(upcoming) == count:
                break
        views.append(
            ScheduleView(
                name=settings.name,
                spec=schedule.spec(),
                workflow=settings.workflow,
                overlap=settings.overlap,
                catchup=settings.catchup,
                paused=bool(row and row["paused"]),
                paused_by=row["paused_by"] if row else None,
                last_tick=row["last_tick"] if row else None,
                next_ticks=tuple(upcoming),
                zone=settings.tz,
            )
        )
    return views


def pause(conn: Conn, config: Config, name: str) -> None:
    """Skip the schedule's ticks from now on, until resumed (they are not made up)."""
    find(config, name)
    with conn.transaction():
        conn.execute(queries.get("pause_schedule"), {"name": name})


def resume(conn: Conn, config: Config, name: str) -> bool:
    """Tick again from now (the ticks skipped while paused are not made up); False if it was not paused."""
    find(config, name)
    with conn.transaction():
        row = conn.execute(queries.get("resume_schedule"), {"name": name}).fetchone()
    return row is not None


def trigger(conn: Conn, config: Config, name: str, *, now: datetime | None = None) -> str:
    """One run of the schedule's workflow now (trigger ``manual``), beside its ticks; its run's id."""
    schedule = find(config, name)
    at = now or datetime.now(UTC)
    settings = schedule.settings
    params = {
        "key": schedule.manual_key(at),
        "rule": schedule.rule_name,
        "workflow": settings.workflow,
        "tick": at,
        "payload": schedule.payload(at, MANUAL, 0, at),
        "gated": schedule.rule().gated,
        "run_key": schedule.run_key,
        "key_limit": 1 if settings.gated else None,
        "priority": settings.priority,
    }
    with conn.transaction():
        row = conn.execute(queries.get("trigger_schedule"), params).fetchone()
        if row is None:  # the same microsecond twice
            raise ListenerError(
                f"schedule {name!r} was triggered at {at.isoformat()} already", hint="try again"
            )
        conn.execute(queries.get("wake"), {"channel": notify_channel(config.state_schema)})
    return str(row[0])
