"""Schedules as a source of events (see :mod:`listener.ingest.source` and :mod:`listener.rules.schedules`).

Each tick is one event keyed ``schedule/NAME/tick/0``, committed with the schedule's ``last_tick``
(``schedules`` table) in one state transaction: a restart, a kill -9 or a second `listener run` firing
the same tick inserts nothing new.  When a session starts, the ticks after ``last_tick`` that are due
are made up if within ``catchup:`` (trigger ``catchup``); older ones are counted, reported once and
recorded as done (the next event's ``missed``).  A schedule seen for the first time starts from now.

Before a tick fires, the state database says whether the schedule is paused (`listener schedules pause`)
and how many runs of its earlier ticks are unfinished: ``overlap: skip`` makes no run while one is
pending or running, ``buffer_one`` none while one is pending; both run one at a time (flow-control key
``schedule/NAME``, limit 1).  A skipped tick is still recorded as done, so it is never made up later.
Ticks are fired one after the other, each after the last one's commit: that check sees its run.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

from listener import metrics
from listener.defaults import SCHEDULE_MISSED_COUNTED, SCHEDULE_STALL_S
from listener.ingest.source import BatchQueue
from listener.ingest.state import IngestState
from listener.logs import fields
from listener.queue.batches import EventBatch
from listener.queue.store import StateStore
from listener.rules.schedules import Schedule, missed_between, tick_text

logger = logging.getLogger(__name__)

_LONGEST_SLEEP_S = 30.0  # the wall clock is read again at least this often (it may jump)


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Plan:
    """One schedule's coming ticks: first those made up, then the ones ahead."""

    def __init__(self, schedule: Schedule, due: list[datetime], after: datetime, missed: int) -> None:
        self.schedule = schedule
        self.missed = missed  # older ticks not made up, told by the next event
        self.skipped = 0  # ticks skipped in a row (overlap, pause), for the log
        self._from(due, after)

    def _from(self, due: list[datetime], after: datetime) -> None:
        made_up = ((tick, "catchup") for tick in due)
        ahead = ((tick, "tick") for tick in self.schedule.ticks_after(due[-1] if due else after))
        self._ticks: Iterator[tuple[datetime, str]] = itertools.chain(made_up, ahead)
        self.tick, self.trigger = next(self._ticks)

    def drop_stale(self, now: datetime) -> tuple[int, datetime | None, datetime | None]:
        """Skip the coming ticks older than ``catchup:`` at ``now`` when the next is more than that (and
        ``SCHEDULE_STALL_S``) late, the writer or the database stalled: like those missed while no service
        ran, they are counted, not fired.  (how many, the first, the last)"""
        late = (now - self.schedule.fire_at(self.tick)).total_seconds()
        if late <= max(self.schedule.settings.catchup_s, SCHEDULE_STALL_S):
            return 0, None, None
        before = self.tick - timedelta(microseconds=1)
        due, older, first, final = missed_between(self.schedule, before, now, SCHEDULE_MISSED_COUNTED)
        self.missed += older
        self._from(due, now)
        return older, first, final

    @property
    def fire_at(self) -> datetime:
        return self.schedule.fire_at(self.tick)

    def advance(self) -> None:
        self.tick, self.trigger = next(self._ticks)


class ScheduleSource:
    """The ``schedules:`` of a config, ticking into the ingest's writer."""

    name = "schedule"

    def __init__(self, schedules: Sequence[Schedule], clock: Callable[[], datetime] = utc_now) -> None:
        self.ingest: IngestState | None = None  # the ingest whose writer commits its ticks (attach)
        self.schedules = tuple(schedules)
        self.clock = clock
        self._rules = {s.name: s.rule() for s in schedules}
        self._waiting: dict[int, asyncio.Future[None]] = {}

    def attach(self, ingest: IngestState) -> None:
        """Tick into ``ingest``'s writer: this source joins its sources."""
        self.ingest = ingest
        ingest.sources.append(self)

    @property
    def store(self) -> StateStore:
        assert self.ingest is not None, "attach the source to an ingest first"
        return self.ingest.store

    def committed(self, batch: EventBatch) -> None:
        done = self._waiting.pop(id(batch), None)
        if done is not None and not done.done():
            done.set_result(None)

    async def run(self, out: BatchQueue) -> None:
        """Fire the ticks as they come, each durable before the next; runs until cancelled."""
        try:
            plans = await self._start(out)
            while True:
                plan = min(plans, key=lambda p: p.fire_at)
                now = self.clock()
                wait = (plan.fire_at - now).total_seconds()
                if wait > 0:
                    await asyncio.sleep(min(wait, _LONGEST_SLEEP_S))
                    continue
                stale, first, final = plan.drop_stale(now)
                if stale:
                    assert first is not None and final is not None
                    self._report_missed(plan.schedule, stale, first, final, "were not fired in time")
                    continue  # the plan's next tick may not be due yet
                await self._fire(out, plan)
                plan.advance()
        finally:
            for done in self._waiting.values():
                done.cancel()
            self._waiting.clear()

    async def _start(self, out: BatchQueue) -> list[_Plan]:
        """Read where each schedule stands; record the new ones and the ticks too old to make up."""
        states = await self.store.schedule_states([s.name for s in self.schedules])
        now = self.clock()
        start = EventBatch()
        plans = []
        for schedule in self.schedules:
            if schedule.name not in states:
                start.ticks[schedule.name] = now  # ticks before now were never due
                plans.append(_Plan(schedule, [], now, 0))
                continue
            last, _paused = states[schedule.name]
            due, older, first, final = missed_between(schedule, last, now, SCHEDULE_MISSED_COUNTED)
            if older:
                assert first is not None and final is not None
                start.ticks[schedule.name] = final
                self._report_missed(schedule, older, first, final, "were missed while no `listener run` ran")
            if due:
                logger.info(
                    "schedule %r: making up %d tick(s) missed since %s",
                    schedule.name,
                    len(due),
                    tick_text(last),
                    extra=fields(schedule=schedule.name),
                )
            plans.append(_Plan(schedule, due, now, older))
        if start.ticks:
            await self._put(out, start)
        return plans

    @staticmethod
    def _report_missed(schedule: Schedule, count: int, first: datetime, final: datetime, why: str) -> None:
        metrics.record_tick(schedule.name, "missed", count)
        logger.warning(
            "schedule %r: %s%d tick(s) from %s to %s %s, more than catchup: %s ago; not made up (the next "
            "event says missed: %d)",
            schedule.name,
            "at least " if count >= SCHEDULE_MISSED_COUNTED else "",
            count,
            tick_text(first),
            tick_text(final),
            why,
            schedule.settings.catchup,
            count,
            extra=fields(schedule=schedule.name),
        )

    async def _fire(self, out: BatchQueue, plan: _Plan) -> None:
        """One tick: its event (unless paused or held back by ``overlap:``) and its place, durable."""
        schedule, tick = plan.schedule, plan.tick
        overlap = schedule.settings.overlap
        paused, pending, running = await self.store.schedule_gate(
            schedule.name, schedule.run_key, schedule.key(tick)
        )
        batch = EventBatch()
        batch.ticks[schedule.name] = tick
        why = None
        if paused:
            why = "the schedule is paused (`listener schedules resume` resumes it)"
        elif overlap == "skip" and pending + running:
            why = f"overlap: skip, and {pending + running} run(s) of earlier ticks are unfinished"
        elif overlap == "buffer_one" and pending:
            why = "overlap: buffer_one, and a run of an earlier tick already waits"
        if why is None:
            rule = self._rules[schedule.name]
            group = batch.group_id(rule, None, None, tick_text(tick), None, tick)
            payload = schedule.payload(tick, plan.trigger, plan.missed, self.clock())
            batch.add(group, 0, 0, payload, key=schedule.run_key)
            if plan.skipped:
                logger.info(
                    "schedule %r: tick %s fires, after %d skipped",
                    schedule.name,
                    tick_text(tick),
                    plan.skipped,
                    extra=fields(schedule=schedule.name),
                )
            plan.missed = plan.skipped = 0
        else:
            if not plan.skipped:
                logger.info(
                    "schedule %r: tick %s skipped: %s",
                    schedule.name,
                    tick_text(tick),
                    why,
                    extra=fields(schedule=schedule.name),
                )
            plan.skipped += 1
        await self._put(out, batch)
        metrics.record_tick(schedule.name, "fired" if why is None else "skipped")

    async def _put(self, out: BatchQueue, batch: EventBatch) -> None:
        """Hand ``batch`` to the writer and wait until it is committed."""
        done = asyncio.get_running_loop().create_future()
        self._waiting[id(batch)] = done
        await out.put(batch, self)
        await done
