"""Replicas of one slot: one leader streams, the others stand by and take over; a deposed leader's
checkpoint write is refused (listener.ingest.leadership, sql/0010_leaders.sql)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from listener import service
from listener.errors import Deposed
from listener.ingest import Ingest
from listener.ingest.leadership import Campaign, lock_key
from listener.queue.batches import EventBatch
from listener.queue.store import StateStore
from tests.support import (
    SLOT,
    BatchRule,
    acli,
    current_wal_lsn,
    events,
    make_config,
    running_ingest,
    wait_caught_up,
    write_config,
)

Conn = psycopg.Connection[tuple[object, ...]]
RULES = [{"name": "rows", "table": "items", "on": ["insert"], "workflow": "m:f"}]
TAKEOVER_S = 10.0


def leader(sql: Conn) -> tuple[int, str]:
    row = sql.execute("SELECT epoch, holder FROM listener.leaders WHERE slot_name = %s", [SLOT]).fetchone()
    assert row is not None
    return int(str(row[0])), str(row[1])


def checkpoint_row(sql: Conn) -> tuple[str, int | None] | None:
    row = sql.execute(
        "SELECT lsn::text, epoch FROM listener.checkpoints WHERE slot_name = %s", [SLOT]
    ).fetchone()
    return (str(row[0]), None if row[1] is None else int(str(row[1]))) if row is not None else None


async def wait(cond: object, what: str, timeout: float = 60.0) -> float:
    """Wait until ``cond()``; the seconds it took."""
    began = time.monotonic()
    while not cond():  # type: ignore[operator]
        assert time.monotonic() - began < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


@asynccontextmanager
async def standby(dsn: str, store: StateStore) -> AsyncIterator[tuple[Ingest, asyncio.Task[None]]]:
    """A second ingest of the same slot, as a second `listener run` would run it."""
    ingest = Ingest.from_config(make_config(RULES), source_dsn=dsn, store=store)
    ingest.empty_checkpoint_interval = 0.1
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop))
    try:
        yield ingest, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def test_a_second_replica_stands_by_and_takes_over_when_the_leader_stops(
    dsn: str, sql: Conn, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    config = write_config(tmp_path / "listener.yaml", RULES)
    second = await StateStore.connect(dsn, schema="listener", slot=SLOT)
    caplog.set_level(logging.INFO, logger="listener")
    try:
        async with running_ingest(dsn, config) as first:
            assert leader(sql)[0] == 1
            async with standby(dsn, second) as (other, task):
                await wait(
                    lambda: other.campaign is not None and other.campaign.role == "standby", "a standby"
                )
                assert await service._not_ready(other, second, 1.0) is None  # a healthy standby is ready
                # ... while its state database takes writes
                read_only = await StateStore.connect(
                    f"{dsn} options='-c default_transaction_read_only=on'", schema="listener", slot=SLOT
                )
                try:
                    assert await service._not_ready(other, read_only, 1.0) == (
                        "the state database takes no writes (a standby, or transaction_read_only is on)"
                    )
                finally:
                    await read_only.close()
                sql.execute("INSERT INTO items SELECT g FROM generate_series(1, 50) g")
                await wait_caught_up(first, dsn)
                assert not other.streaming.is_set()
                first.stop.set()  # a clean stop frees the lock
                await asyncio.wait_for(first.task, 60)
                took = await wait(lambda: other.streaming.is_set() or task.done(), "the takeover", TAKEOVER_S)
                assert not task.done()
                assert leader(sql)[0] == 2 and other.store.epoch == 2
                sql.execute("INSERT INTO items SELECT g FROM generate_series(51, 80) g")
                target = current_wal_lsn(dsn)
                await wait(lambda: other.durable_lsn > target, "the new leader to catch up")
                shown = await acli(dsn, config, "status", "--json")
                assert shown.exit_code == 0, shown.output
                now = json.loads(shown.output)["leader"]
                assert now["epoch"] == 2 and now["running"] and f"PID {os.getpid()}" in now["holder"]
        assert took < TAKEOVER_S
    finally:
        await second.close()
    got = events(dsn)
    assert sorted(e["payload"]["new"]["id"] for e in got) == list(range(1, 81))  # none lost, none twice
    standby_lines = [r for r in caplog.records if r.getMessage().startswith("standby for slot")]
    assert len(standby_lines) == 1, [r.getMessage() for r in standby_lines]
    assert "epoch 1" in standby_lines[0].getMessage()  # it names the leader it waits for
    assert any("taking over slot" in r.getMessage() for r in caplog.records)
    row = checkpoint_row(sql)
    assert row is not None and row[1] == 2  # the checkpoint carries the new leader's epoch
    shown = await acli(dsn, config, "status")
    assert "leader" in shown.output and "none running; the last was" in shown.output, shown.output


async def test_a_deposed_leaders_checkpoint_write_is_refused_with_its_events(dsn: str, sql: Conn) -> None:
    store = await StateStore.connect(dsn, schema="listener", slot=SLOT)
    old, new = (Campaign(dsn, schema="listener", slot=SLOT) for _ in range(2))
    try:
        stop = asyncio.Event()
        lease = await old.lead(stop)
        assert lease is not None and lease.epoch == 1
        store.epoch = lease.epoch
        batch = EventBatch()
        group = batch.group_id(BatchRule(), "insert", "public.items", "0/10", 1, None)
        batch.add(group, 0x10, 0, json.dumps({"new": {"id": 1}}))
        batch.checkpoint = 0x20
        assert await store.write_batch(batch) == 1
        # the old leader's lock connection dies unnoticed; another replica is elected
        await old.close()
        second = await new.lead(stop)
        assert second is not None and second.epoch == 2
        for size in (1, 2):  # the one-statement write, and one in a transaction with a history row
            batch = EventBatch()
            group = batch.group_id(BatchRule(), "insert", "public.items", "0/30", 2, None)
            for n in range(size):
                batch.add(group, 0x30 + n, n, json.dumps({"new": {"id": 2 + n}}))
            batch.checkpoint = 0x40
            if size == 2:
                batch.ticks = {"nightly": datetime.now(UTC)}
            with pytest.raises(Deposed, match=r"epoch 1.*epoch 2"):
                await store.write_batch(batch)
        assert [e["payload"]["new"]["id"] for e in events(dsn)] == [1]  # its events went with it
        assert checkpoint_row(sql) == ("0/20", 1)
        store.epoch = second.epoch  # the new leader writes
        assert await store.write_batch(batch) == 2
        assert checkpoint_row(sql) == ("0/40", 2)
    finally:
        await old.resign()
        await new.resign()
        await store.close()


async def test_a_leader_whose_lock_connection_dies_stands_down_and_leads_again(
    dsn: str, sql: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    caplog.set_level(logging.INFO, logger="listener")
    async with running_ingest(dsn, make_config(RULES)) as run:
        sql.execute("INSERT INTO items SELECT g FROM generate_series(1, 20) g")
        await wait_caught_up(run, dsn)
        killed = sql.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND ((classid::int8 << 32) | objid::int8) = %s",
            [lock_key("listener", SLOT)],
        ).fetchall()
        assert killed == [(True,)]
        await wait(lambda: leader(sql)[0] == 2, "a new election")
        await wait(lambda: run.ingest.streaming.is_set(), "streaming again")
        sql.execute("INSERT INTO items SELECT g FROM generate_series(21, 40) g")
        await wait_caught_up(run, dsn)
    assert sorted(e["payload"]["new"]["id"] for e in events(dsn)) == list(range(1, 41))
    assert any("lost the lock of slot" in r.getMessage() for r in caplog.records)


async def test_a_standby_takes_over_with_the_rules_its_config_file_holds_now(
    dsn: str, sql: Conn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader may have reloaded new rules since the standby started: the standby reads its config file
    again when it takes over (and keeps the rules it has when the file is refused)."""
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    sql.execute("CREATE TABLE more (id int PRIMARY KEY)")
    path = tmp_path / "listener.yaml"
    workflow = "listener_examples.onboarding:welcome"  # the file is read as a service reads it: importable
    rules = [{**RULES[0], "workflow": workflow}]
    config = write_config(path, rules)
    more = [*rules, {"name": "more_rows", "table": "more", "on": ["insert"], "workflow": workflow}]
    second = await StateStore.connect(dsn, schema="listener", slot=SLOT)
    caplog.set_level(logging.INFO, logger="listener")
    try:
        async with running_ingest(dsn, config) as first:
            other = Ingest.from_config(config, source_dsn=dsn, store=second)
            other.takeover = functools.partial(service.takeover_rules, other, dsn, dsn)
            stop = asyncio.Event()
            task = asyncio.create_task(other.run(stop))
            await wait(lambda: other.campaign is not None and other.campaign.role == "standby", "a standby")
            write_config(path, more)  # (the leader would reload it)
            first.stop.set()
            await asyncio.wait_for(first.task, 60)
            await wait(lambda: other.streaming.is_set() or task.done(), "the takeover", TAKEOVER_S)
            assert [rule.name for rule in other.rules.rules] == ["rows", "more_rows"]
            sql.execute("INSERT INTO more VALUES (7)")
            target = current_wal_lsn(dsn)
            await wait(lambda: other.durable_lsn > target, "the new leader to catch up")
            stop.set()
            await asyncio.wait_for(task, 60)
    finally:
        await second.close()
    assert [(e["rule"], e["payload"]["new"]["id"]) for e in events(dsn)] == [("more_rows", 7)]
    assert any("taking over with the rules of" in r.getMessage() for r in caplog.records)
