"""Schedules: when a ``schedules:`` entry ticks, and what each tick's event is.

A tick is an instant in UTC.  ``every: N`` ticks at the multiples of N seconds since the Unix epoch (so
every replica agrees on them; ``tz:`` does not matter).  ``cron:`` ticks where the spec matches the wall
clock of ``tz:``, as Debian's cron does across daylight-saving changes (cronsim implements it):

- a local time the spring change skips (02:30 on the night clocks go 02:00 -> 03:00) fires once, at the
  first instant after the gap (03:00 local);
- a local time the autumn change repeats fires once, at its first occurrence, when the spec names the
  hour and minute (``30 2 * * *``); a spec with a wildcard or a step in them (``*/30 * * * *``) fires in
  both occurrences, as it matches each;
- every tick is a distinct UTC instant, and ticks only move forward.

A tick's event is keyed ``schedule/NAME/YYYY-MM-DDTHH:MM:SSZ/0`` (rule ``schedule/NAME``): pure in the
schedule's name and the tick, so replicas and restarts that fire the same tick make one run.  ``jitter:``
delays each tick's firing by a deterministic fraction of it (a hash of the key), the same on every replica.
"""

from __future__ import annotations

import hashlib
import json
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import cronsim

from listener.rules.compile import CompiledRule
from listener.rules.config import Config, ScheduleSettings
from listener.rules.config.validators import cron_fields

MANUAL = "manual"  # the trigger of a tick asked for by `listener schedules trigger`


def tick_text(tick: datetime) -> str:
    """A tick as its key writes it: UTC to the second, ``2026-12-07T01:00:00Z``."""
    return tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A ``schedules:`` entry, ready to tick."""

    settings: ScheduleSettings
    limited: bool = False  # its workflow has `limits:`: its runs are claimed under them

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def rule_name(self) -> str:
        """The rule its events carry: ``schedule/NAME`` (no rule's name has a '/')."""
        return f"schedule/{self.settings.name}"

    @property
    def run_key(self) -> str | None:
        """The flow-control key of its runs when they go one at a time (overlap skip, buffer_one)."""
        return self.rule_name if self.settings.gated else None

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.settings.tz)

    def rule(self) -> CompiledRule:
        """The rule its events are grouped under in a batch."""
        s = self.settings
        return CompiledRule(
            self.rule_name,
            "",
            "",
            frozenset(),
            s.workflow,
            gated=s.gated or self.limited,
            key_limit=1 if s.gated else None,
            priority=s.priority,
            source="schedule",
            topic=s.name,
        )

    def spec(self) -> str:
        """The spec as `listener schedules` shows it."""
        s = self.settings
        return f"every {s.every}" if s.every is not None else f"cron {s.cron} ({s.tz})"

    def ticks_after(self, instant: datetime) -> Iterator[datetime]:
        """The ticks strictly after ``instant`` (aware), in order, as aware UTC datetimes."""
        s = self.settings
        if s.every is not None:
            step = s.every_s
            start = int(instant.timestamp() // step) + 1
            for n in range(start, 1 << 40):
                yield datetime.fromtimestamp(n * step, UTC)
            return
        assert s.cron is not None
        last = instant.astimezone(UTC)
        for local in cronsim.CronSim(cron_fields(s.cron), instant.astimezone(self.zone)):
            tick = local.astimezone(UTC)
            if tick > last:  # distinct instants, forward only (guards a library's repeat in a fold)
                last = tick
                yield tick

    def fire_at(self, tick: datetime) -> datetime:
        """When ``tick`` fires: the tick, plus its share of ``jitter:`` (the same on every replica)."""
        jitter = self.settings.jitter_s
        if not jitter:
            return tick
        digest = hashlib.sha256(self.key(tick).encode()).digest()
        fraction = int.from_bytes(digest[:8], "big") / 2**64
        return tick + timedelta(seconds=round(fraction * jitter, 3))

    def key(self, tick: datetime) -> str:
        """The idempotency key of ``tick``'s event (sql/queries/events.sql builds the same)."""
        return f"{self.rule_name}/{tick_text(tick)}/0"

    def manual_key(self, at: datetime) -> str:
        """The key of a tick asked for at ``at`` (`listener schedules trigger`): never a regular tick's."""
        return f"{self.rule_name}/{MANUAL}-{at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}/0"

    def payload(self, tick: datetime, trigger: str, missed: int, fired: datetime) -> str:
        """The event's payload: its ``data`` is what the workflow reads as ``event.data``."""
        data = {
            "schedule": self.name,
            "tick": tick_text(tick),
            "local": tick.astimezone(self.zone).isoformat(),
            "trigger": trigger,  # "tick", "catchup" or "manual"
            "missed": missed,  # ticks before this one not made up (older than catchup:, or while paused)
            "fired_at": fired.astimezone(UTC).isoformat(),
        }
        return json.dumps({"data": data})


def schedules_of(config: Config) -> list[Schedule]:
    """The config's schedules, ready to tick."""
    limited = {limit.workflow for limit in config.limits}
    return [Schedule(s, limited=s.workflow in limited) for s in config.schedules]


def missed_between(
    schedule: Schedule, last: datetime, now: datetime, limit: int
) -> tuple[list[datetime], int, datetime | None, datetime | None]:
    """The ticks in (``last``, ``now``]: those within ``catchup:`` of ``now`` (to make up, in order), and
    how many older ones there are (counted up to ``limit``), with the first and last of those."""
    horizon = now - timedelta(seconds=schedule.settings.catchup_s)
    due: list[datetime] = []
    older = 0
    first: datetime | None = None
    final: datetime | None = None
    start = last
    s = schedule.settings
    if s.every is not None and last < horizon:  # count the older ones without walking them
        step = s.every_s
        low = int(last.timestamp() // step) + 1
        high = int(horizon.timestamp() // step)
        if horizon.timestamp() % step == 0:
            high -= 1  # a tick at the horizon itself is due
        if high >= low:
            older = high - low + 1
            first = datetime.fromtimestamp(low * step, UTC)
            final = datetime.fromtimestamp(high * step, UTC)
            start = final
    for tick in schedule.ticks_after(start):
        if tick > now:
            break
        if tick >= horizon:
            due.append(tick)
            continue
        older += 1
        first = first or tick
        final = tick
        if older >= limit:  # a long outage of a frequent cron: the count is a lower bound
            for tick in schedule.ticks_after(horizon - timedelta(microseconds=1)):
                if tick > now:
                    break
                due.append(tick)
            break
    return due, older, first, final
