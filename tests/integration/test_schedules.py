"""Schedules end to end on a real server: ticks become events keyed by the tick, once however many ingests
fire them; missed ticks are made up within ``catchup:`` and the older ones counted; ``overlap:``, pause,
resume and trigger-now act through the state database (listener.ingest.schedules, listener.ops.schedules)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from listener.ingest.schedules import ScheduleSource
from listener.rules.config import Config
from listener.rules.schedules import Schedule
from tests.support import _wait_for, cli, running_ingest, write_config

Conn = psycopg.Connection[tuple[object, ...]]
WORKFLOW = "listener_examples.tickets:triage"


def config(tmp_path: Path, slot: str = "listener_test", **schedule: Any) -> Config:
    entry = {"name": "beat", "every": "1s", "workflow": WORKFLOW, **schedule}
    return write_config(tmp_path / f"{slot}.yaml", [], slot=slot, publication=slot, schedules=[entry])


def attach(config: Config) -> Any:
    return ScheduleSource([Schedule(s) for s in config.schedules]).attach


def ticks(sql: Conn) -> list[dict[str, Any]]:
    """The schedule's events, oldest tick first, with their runs."""
    rows = sql.execute(
        "SELECT e.idempotency_key, e.rule, e.source, e.payload, e.commit_time, e.lsn, r.status, r.gated, "
        "r.key FROM listener.events e JOIN listener.runs r ON r.event_key = e.idempotency_key "
        "WHERE e.source = 'schedule' ORDER BY e.idempotency_key"
    ).fetchall()
    names = ("key", "rule", "source", "payload", "commit_time", "lsn", "status", "gated", "run_key")
    return [dict(zip(names, row, strict=True)) for row in rows]


def last_tick(sql: Conn, name: str = "beat") -> datetime | None:
    row = sql.execute("SELECT last_tick FROM listener.schedules WHERE name = %s", [name]).fetchone()
    return None if row is None else row[0]  # type: ignore[return-value]


def seconds(events: Sequence[dict[str, Any]]) -> list[datetime]:
    return [datetime.fromisoformat(e["payload"]["data"]["tick"]) for e in events]


async def run_for(sql: Conn, cfg: Config, duration: float) -> None:
    async with running_ingest(sql.info.dsn, cfg, attach=[attach(cfg)]):
        await asyncio.sleep(duration)


async def test_each_tick_is_one_event_keyed_by_the_tick_and_committed_with_its_place(
    sql: Conn, tmp_path: Path
) -> None:
    cfg = config(tmp_path, overlap="allow")
    started = datetime.now(UTC)
    await run_for(sql, cfg, 3.6)
    found = ticks(sql)
    assert 3 <= len(found) <= 5, found
    at = seconds(found)
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(at)), at
    assert at[0] > started - timedelta(seconds=1)  # the first sight starts from now: nothing made up
    for event, tick in zip(found, at, strict=True):
        assert event["key"] == f"schedule/beat/{tick.strftime('%Y-%m-%dT%H:%M:%SZ')}/0"
        assert event["rule"] == "schedule/beat" and event["lsn"] is None
        assert event["commit_time"] == tick
        data = event["payload"]["data"]
        assert data["schedule"] == "beat" and data["trigger"] == "tick" and data["missed"] == 0
        assert event["status"] == "pending" and not event["gated"] and event["run_key"] is None
    assert last_tick(sql) == at[-1]


async def test_two_ingests_firing_the_same_schedule_make_one_run_per_tick(sql: Conn, tmp_path: Path) -> None:
    """Two `listener run`s on one state schema (each with its own slot) fire the same ticks: the tick's
    key makes one event and one run of each, and the schedule's place moves only forward."""
    one, two = config(tmp_path, overlap="allow"), config(tmp_path, "listener_two", overlap="allow")
    async with (
        running_ingest(sql.info.dsn, one, attach=[attach(one)]),
        running_ingest(sql.info.dsn, two, attach=[attach(two)]),
    ):
        await asyncio.sleep(4.5)
    found = ticks(sql)
    at = seconds(found)
    assert len(at) >= 4 and len(set(at)) == len(at), at
    assert at == [at[0] + timedelta(seconds=n) for n in range(len(at))], "a tick is missing"
    count = sql.execute("SELECT count(*) FROM listener.runs").fetchone()
    assert count == (len(at),)


async def test_ticks_missed_while_down_are_made_up_within_catchup_and_the_older_ones_counted(
    sql: Conn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path, overlap="allow", catchup="4s")
    seeded = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=12)
    sql.execute("INSERT INTO listener.schedules (name, last_tick) VALUES ('beat', %s)", [seeded])
    with caplog.at_level(logging.INFO, logger="listener.ingest.schedules"):
        await run_for(sql, cfg, 1.5)
    found = ticks(sql)
    made_up = [e for e in found if e["payload"]["data"]["trigger"] == "catchup"]
    at = seconds(found)
    assert 4 <= len(made_up) <= 6, found
    assert at == [at[0] + timedelta(seconds=n) for n in range(len(at))]
    assert at[0] > seeded
    # every tick after the seeded place is either made up or counted as missed, none both, none lost
    missed = (at[0] - seeded).seconds - 1
    assert missed >= 6
    assert found[0]["payload"]["data"]["missed"] == missed
    assert all(e["payload"]["data"]["missed"] == 0 for e in found[1:])
    assert f"{missed} tick(s) from" in caplog.text and "not made up" in caplog.text


async def test_overlap_skip_makes_no_run_while_an_earlier_tick_s_is_unfinished(
    sql: Conn, tmp_path: Path
) -> None:
    cfg = config(tmp_path)  # the default: overlap skip
    await run_for(sql, cfg, 3.5)
    found = ticks(sql)
    assert len(found) == 1, found  # no worker: the first tick's run stays pending
    (first,) = found
    assert first["gated"] and first["run_key"] == "schedule/beat"
    after = last_tick(sql)
    assert after is not None and after - seconds(found)[0] >= timedelta(seconds=2)  # skipped, recorded


async def test_overlap_buffer_one_lets_one_run_wait_behind_a_running_one(sql: Conn, tmp_path: Path) -> None:
    cfg = config(tmp_path, overlap="buffer_one")
    async with running_ingest(sql.info.dsn, cfg, attach=[attach(cfg)]):
        await _wait_for(lambda: bool(ticks(sql)), "the first tick")
        sql.execute("UPDATE listener.runs SET status = 'running', attempt = 1")  # as a worker would
        await asyncio.sleep(3.2)
    statuses = [e["status"] for e in ticks(sql)]
    assert statuses == ["running", "pending"], statuses


async def test_pause_resume_and_trigger_act_on_a_running_service(sql: Conn, tmp_path: Path) -> None:
    cfg = config(tmp_path, overlap="allow")
    dsn = sql.info.dsn
    result = cli(dsn, cfg, "schedules", "pause", "beat")
    assert result.exit_code == 0, result.output
    async with running_ingest(dsn, cfg, attach=[attach(cfg)]):
        await asyncio.sleep(2.2)
        assert ticks(sql) == []  # paused: the ticks are skipped, and recorded as done
        paused_until = last_tick(sql)
        result = await asyncio.to_thread(cli, dsn, cfg, "schedules", "resume", "beat")
        assert result.exit_code == 0 and "resumed" in result.output, result.output
        await asyncio.sleep(2.2)
    resumed = ticks(sql)
    assert resumed, "no tick after resume"
    assert paused_until is not None and min(seconds(resumed)) > paused_until  # none made up
    result = cli(dsn, cfg, "schedules", "trigger", "beat")
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    assert run_id.startswith("schedule/beat/manual-") and run_id.endswith("Z/0")
    manual = [e for e in ticks(sql) if e["key"] == run_id]
    assert [e["payload"]["data"]["trigger"] for e in manual] == ["manual"]
    assert manual[0]["status"] == "pending"


def test_the_schedules_command_lists_state_and_next_ticks(sql: Conn, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "listener.yaml",
        [],
        schedules=[
            {"name": "nightly", "cron": "30 2 * * *", "tz": "Europe/Paris", "workflow": WORKFLOW},
            {"name": "beat", "every": "10s", "workflow": WORKFLOW, "jitter": "5s"},
        ],
    )
    assert cli(sql.info.dsn, cfg, "schedules", "pause", "nightly").exit_code == 0
    result = cli(sql.info.dsn, cfg, "schedules", "--json", "--next", "4")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    nightly, beat = rows["nightly"], rows["beat"]
    assert nightly["paused"] and nightly["spec"] == "cron 30 2 * * * (Europe/Paris)"
    assert not beat["paused"] and beat["last_tick"] is None
    for row in (nightly, beat):
        assert len(row["next_ticks"]) == 4
    paris = Schedule(cfg.schedules[0]).zone
    local = [datetime.fromisoformat(t).astimezone(paris) for t in nightly["next_ticks"]]
    assert all((t.hour, t.minute) in ((2, 30), (3, 0)) for t in local), local
    table = cli(sql.info.dsn, cfg, "schedules")
    assert table.exit_code == 0 and "nightly" in table.stdout and "paused by" in table.stdout, table.output
    unknown = cli(sql.info.dsn, cfg, "schedules", "trigger", "nope")
    assert unknown.exit_code == 2 and "no schedule named 'nope'" in unknown.output
    assert "nightly, beat" in unknown.output


async def test_ticks_late_by_more_than_catchup_in_a_running_service_are_counted_not_fired(
    sql: Conn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stall longer than `catchup:` (here the clock jumps two minutes, as after a frozen VM) is treated
    like downtime: the ticks within `catchup:` of now are made up, the older ones counted."""
    cfg = config(tmp_path, overlap="allow", catchup="10s")
    jump = timedelta(0)

    def clock() -> datetime:
        return datetime.now(UTC) + jump

    source = ScheduleSource([Schedule(s) for s in cfg.schedules], clock=clock)
    with caplog.at_level(logging.WARNING, logger="listener.ingest.schedules"):
        async with running_ingest(sql.info.dsn, cfg, attach=[source.attach]):
            await _wait_for(lambda: len(ticks(sql)) >= 2, "two ticks")
            jump = timedelta(minutes=2)
            await _wait_for(lambda: any(e["payload"]["data"]["missed"] for e in ticks(sql)), "the stall")
            await asyncio.sleep(1.5)
    found = ticks(sql)
    at = seconds(found)
    gaps = [(a, b) for a, b in itertools.pairwise(at) if b - a > timedelta(seconds=1)]
    assert len(gaps) == 1, at
    before, after = gaps[0]
    first_after = found[at.index(after)]["payload"]["data"]
    assert first_after["trigger"] == "catchup"
    assert first_after["missed"] == (after - before).seconds - 1 >= 100  # every tick fired or counted
    made_up = [e for e in found if e["payload"]["data"]["trigger"] == "catchup"]
    assert 9 <= len(made_up) <= 12, made_up  # those within catchup: 10s of the jumped clock
    assert "were not fired in time" in caplog.text
