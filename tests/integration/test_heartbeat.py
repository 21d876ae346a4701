"""Idle heartbeats move the slot while its rule tables are idle and other tables churn WAL; a slot near
invalidation by max_slot_wal_keep_size is warned about, and an invalidated one stops ingest with the
recovery (listener.ingest.heartbeat)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from listener.errors import PrerequisiteError
from listener.pg.lsn import parse_lsn
from tests.support import SLOT, acli, current_wal_lsn, make_config, running_ingest, write_config

Conn = psycopg.Connection[tuple[object, ...]]
RULES = [{"name": "rows", "table": "items", "on": ["insert"], "workflow": "m:f"}]


def slot_positions(sql: Conn) -> tuple[int, int]:
    """(confirmed_flush_lsn, restart_lsn) of the tests' slot."""
    row = sql.execute(
        "SELECT confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        [SLOT],
    ).fetchone()
    assert row is not None
    return parse_lsn(str(row[0])), parse_lsn(str(row[1]))


def churn(sql: Conn, rows: int) -> None:
    """WAL from a table no rule watches (and no publication holds)."""
    sql.execute("INSERT INTO other SELECT g, repeat('x', 200) FROM generate_series(1, %s) g", [rows])


async def test_heartbeats_move_the_slot_while_rule_tables_idle_and_other_tables_churn(
    dsn: str, sql: Conn
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    sql.execute("CREATE TABLE other (id int, pad text)")
    config = make_config(RULES, ingest={"heartbeat_s": 0.3})
    async with running_ingest(dsn, config) as run:
        run.ingest.idle_checkpoint_interval = 3600.0  # the keepalives' position is not followed: only beats
        began = current_wal_lsn(dsn)
        for _ in range(10):
            churn(sql, 20_000)
        churned = current_wal_lsn(dsn)
        assert churned - began > 40 << 20  # tens of MB of WAL, none of it for the rules
        deadline = time.monotonic() + 30
        while slot_positions(sql)[1] <= churned:  # the restart position passes all of it
            assert time.monotonic() < deadline, (slot_positions(sql), churned, run.ingest.stats)
            sql.execute("CHECKPOINT")  # logs the running transactions the restart position moves on
            await asyncio.sleep(0.3)
        stats = run.ingest.stats
        # (before 15 the server sends the churn's empty transactions, which move the checkpoint too; the
        # heartbeats come once it is idle)
        while not stats.heartbeats or stats.lag_s is None:
            assert time.monotonic() < deadline, stats
            await asyncio.sleep(0.1)
        assert 0 <= stats.lag_s < 10
        retained = current_wal_lsn(dsn) - slot_positions(sql)[1]
        assert retained < 16 << 20, retained  # bounded: not the tens of MB written
    row = sql.execute("SELECT count(*) FROM listener.events").fetchone()
    assert row is not None and row[0] == 0  # a heartbeat makes no event


@contextlib.contextmanager
def max_slot_wal_keep_size(sql: Conn, value: str) -> Iterator[None]:
    """The server's max_slot_wal_keep_size for the block (the test server is the test's alone)."""
    sql.execute(f"ALTER SYSTEM SET max_slot_wal_keep_size = '{value}'")
    sql.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        sql.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        sql.execute("SELECT pg_reload_conf()")


def slot_health(sql: Conn) -> tuple[int | None, str]:
    """(safe_wal_size, wal_status) of the tests' slot."""
    row = sql.execute(
        "SELECT safe_wal_size, wal_status FROM pg_replication_slots WHERE slot_name = %s", [SLOT]
    ).fetchone()
    assert row is not None
    return (None if row[0] is None else int(str(row[0]))), str(row[1])


def wal_status(sql: Conn) -> str:
    row = sql.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", [SLOT]).fetchone()
    assert row is not None
    return str(row[0])


async def test_a_slot_near_invalidation_is_warned_about_and_an_invalidated_one_stops_ingest_with_the_fix(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    sql.execute("CREATE TABLE other (id int, pad text)")
    config = write_config(tmp_path / "listener.yaml", RULES)
    async with running_ingest(dsn, config):
        sql.execute("INSERT INTO items VALUES (1)")
    with max_slot_wal_keep_size(sql, "64MB"):
        for _ in range(40):  # behind the stopped slot until within 20% of the limit (not past it)
            if (safe := slot_health(sql)[0]) is not None and safe < 12 << 20:
                break
            churn(sql, 15_000)  # about 4 MB
        assert slot_health(sql)[1] != "lost"
        shown = await acli(dsn, config, "status", "--json")
        warnings = json.loads(shown.output)["warnings"]
        near = "from being invalidated by max_slot_wal_keep_size (64.0 MB"
        assert any(near in w for w in warnings), (warnings, slot_health(sql))
        for _ in range(4):
            churn(sql, 25_000)
            sql.execute("SELECT pg_switch_wal()")
        sql.execute("CHECKPOINT")  # removes the WAL the slot needed: it is invalidated
        assert wal_status(sql) == "lost"
        with pytest.raises(PrerequisiteError) as failed:
            async with running_ingest(dsn, config, init=False):
                pass
    assert f"replication slot {SLOT!r} was invalidated (" in failed.value.message
    assert failed.value.hint is not None and "`listener backfill --rule NAME`" in failed.value.hint
    shown = await acli(dsn, config, "status", "--json")
    assert any("was invalidated" in w and "listener drop" in w for w in json.loads(shown.output)["warnings"])
