"""The retention window and `listener rewind`, against a real server: the slot's confirmed position trails
the checkpoint; a rewind re-reads the window, existing idempotency keys insert nothing, new rules and
`--rerun` make exactly their work; `--dry-run` counts without writing; refusals say what and how to fix."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import Result

from listener import install as setup
from listener.ingest import state as ingest_mod
from listener.pg.lsn import format_lsn, parse_lsn
from listener.queue.batches import EventBatch, Retention
from listener.queue.store import StateStore
from listener.rules.config import Config
from tests.support import acli, events, running_ingest, wait_caught_up, write_config

Conn = psycopg.Connection[tuple[object, ...]]

SLOT = "listener_test"
AUDIT = {"name": "audit", "table": "items", "on": ["insert", "update"], "workflow": "m:audit"}
NOTIFY = {"name": "notify", "table": "items", "on": ["insert"], "workflow": "m:notify"}
EXTRA = {"name": "extra", "table": "items", "on": ["insert"], "workflow": "m:extra"}
RETAIN = {"duration": "1h"}
WAIT_S = 60.0


# ---------------------------------------------------------------------------------------------------------
# Helpers


def slot_flush(sql: Conn) -> int:
    row = sql.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [SLOT]
    ).fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


def checkpoint(sql: Conn) -> int:
    row = sql.execute("SELECT lsn::text FROM listener.checkpoints").fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


def oldest_rewindable(sql: Conn) -> str:
    """The oldest history position the slot still keeps, as `listener status` shows it."""
    row = sql.execute(
        "SELECT min(lsn)::text FROM listener.lsn_history WHERE lsn >= %s::pg_lsn",
        [format_lsn(slot_flush(sql))],
    ).fetchone()
    assert row is not None and row[0] is not None
    return str(row[0])


def runs(sql: Conn) -> list[dict[str, Any]]:
    cur = sql.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute("SELECT id, event_key, generation, status FROM listener.runs ORDER BY seq").fetchall()


def rewind_row(sql: Conn, rewind_id: int) -> dict[str, Any]:
    cur = sql.cursor(row_factory=psycopg.rows.dict_row)
    row = cur.execute("SELECT * FROM listener.rewinds WHERE id = %s", [rewind_id]).fetchone()
    assert row is not None
    return row


async def wait_rewound(sql: Conn, rewind_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while (row := rewind_row(sql, rewind_id))["finished_at"] is None:
        assert time.monotonic() < deadline, f"rewind {rewind_id} did not finish"
        await asyncio.sleep(0.05)
    return row


def insert(sql: Conn, *ids: int) -> None:
    """One transaction inserting ``ids``."""
    sql.execute("INSERT INTO items SELECT g, 'x' FROM unnest(%s::int[]) g", [list(ids)])


def recorded(result: Result) -> int:
    assert result.exit_code == 0, result.stderr
    return int(result.stdout.strip())


def refused(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    assert "error:" in result.stderr and "fix:" in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


async def ingest_rows(dsn: str, sql: Conn, config: Config, *transactions: tuple[int, ...]) -> None:
    async with running_ingest(dsn, config) as run:
        for ids in transactions:
            insert(sql, *ids)
        await wait_caught_up(run, dsn)


@pytest.fixture
def items(sql: Conn) -> Conn:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    return sql


# ---------------------------------------------------------------------------------------------------------
# The retention window


async def test_retention_keeps_the_slot_behind_the_checkpoint(dsn: str, items: Conn, tmp_path: Path) -> None:
    config = write_config(tmp_path / "a.yaml", [AUDIT], retain=RETAIN)
    async with running_ingest(dsn, config) as run:
        start = slot_flush(items)
        for i in range(1, 6):
            insert(items, i)
        await wait_caught_up(run, dsn)
        await asyncio.sleep(0.3)  # several status updates' worth (FLUSH_REPORT_DELAY_S)
        assert slot_flush(items) == start < checkpoint(items)
    # A restart streams from the checkpoint (nothing re-sent) but confirms nothing the window keeps.
    async with running_ingest(dsn, config) as run:
        insert(items, 6)
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.changes == 1
        await asyncio.sleep(0.3)
    assert slot_flush(items) == start < checkpoint(items)
    assert len(events(dsn)) == 6
    history = [parse_lsn(str(r[0])) for r in items.execute("SELECT lsn::text FROM listener.lsn_history")]
    assert min(history) == start and max(history) <= checkpoint(items)


async def test_the_window_by_size_and_by_duration_moves_the_confirmed_position(
    dsn: str, items: Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_mod, "HISTORY_INTERVAL_S", 0.0)  # a history row with every checkpoint
    size = 32 * 1024
    config = write_config(tmp_path / "a.yaml", [AUDIT], retain={"size": "32kB"})
    async with running_ingest(dsn, config) as run:
        # History points only at the batches (about 10kB apart): an idle checkpoint that follows the
        # server's position (after IDLE_CHECKPOINT_INTERVAL_S on a slow machine) may jump further than
        # the whole window, and the window then rightly keeps nothing behind it.
        run.ingest.idle_checkpoint_interval = 3600.0
        start = slot_flush(items)
        recorded = [start]  # every checkpoint this test saw, each with its history row
        # about 10kB of WAL each, more when a server checkpoint adds full-page images: at least 12, and
        # until the checkpoints span three windows (what a batch takes is the server's business)
        i = 0
        while i < 12 or recorded[-1] - start <= 3 * size:
            assert i < 200, recorded
            items.execute(
                "INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(%s::int, %s::int) g",
                [i * 10 + 1, i * 10 + 10],
            )
            await wait_caught_up(run, dsn)
            recorded.append(checkpoint(items))
            i += 1
        # the pruned history begins where the writer confirmed; wait for the status update to say so
        confirmed = await wait_slot_flush(items, oldest_history(items))
        cp = checkpoint(items)
    # Kept, but no more than the cap: the confirmed position is the oldest history point inside the window,
    # the one before it lies outside. (How much WAL a batch takes is the server's business: a checkpoint
    # in between makes the next batch carry full-page images, so the test asserts no size per batch.)
    steps = [b - a for a, b in itertools.pairwise(recorded)]
    assert start < confirmed < cp and cp - confirmed <= size, (
        start,
        confirmed,
        cp,
        steps,
        oldest_history(items),
    )
    assert cp - max(h for h in recorded if h < confirmed) > size
    assert oldest_history(items) == confirmed  # older history pruned

    # By duration, with no wall clock in the outcome: the window is an hour, and what was recorded before
    # 5002 is made two hours old, so the writer lets go of exactly that and keeps 5002 (however slow the
    # machine is, 5002 is not an hour old).
    config = write_config(tmp_path / "b.yaml", [AUDIT], retain={"duration": "1h"})
    async with running_ingest(dsn, config) as run:
        before = slot_flush(items)
        insert(items, 5001)
        await wait_caught_up(run, dsn)
        middle = checkpoint(items)
        items.execute("UPDATE listener.lsn_history SET commit_time = commit_time - interval '2 hours'")
        insert(items, 5002)
        await wait_caught_up(run, dsn)
        confirmed = await wait_slot_flush(items, middle)
    assert before <= confirmed and middle == confirmed < checkpoint(items)  # older than 1h: let go


def oldest_history(sql: Conn) -> int:
    row = sql.execute("SELECT min(lsn)::text FROM listener.lsn_history").fetchone()
    assert row is not None and row[0] is not None
    return parse_lsn(str(row[0]))


async def wait_slot_flush(sql: Conn, lsn: int) -> int:
    """The slot's confirmed position once the server has been told ``lsn`` (status updates are batched)."""
    deadline = time.monotonic() + WAIT_S
    while (flushed := slot_flush(sql)) < lsn:
        assert time.monotonic() < deadline, f"the slot stays at {format_lsn(flushed)} < {format_lsn(lsn)}"
        await asyncio.sleep(0.05)
    return flushed


async def test_the_confirmed_position_honours_duration_size_and_unfinished_rewinds(
    dsn: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "a.yaml", [], retain=RETAIN)
    await asyncio.to_thread(setup.init, config, dsn, dsn)
    store = await StateStore.connect(dsn, schema="listener", slot=SLOT)
    now = datetime.now(UTC)
    history = [(0x1000, now - timedelta(hours=4)), (0x2000, now - timedelta(hours=3)),
               (0x3000, now - timedelta(hours=2)), (0x4000, now - timedelta(hours=1))]  # fmt: skip

    async def confirm(retention: Retention, cp: int = 0x5000) -> int | None:
        async with store.pool.acquire() as conn:
            await conn.execute("DELETE FROM lsn_history")
            await conn.executemany(
                "INSERT INTO lsn_history VALUES ($1, $2::text::pg_lsn, $3)",
                [(SLOT, format_lsn(lsn), at) for lsn, at in history],
            )
        batch = EventBatch(checkpoint=cp, checkpoint_time=now, retention=retention)
        await store.write_batch(batch)
        return batch.confirm

    try:
        assert await confirm(Retention(duration_s=2.5 * 3600)) == 0x2000
        assert await store.pool.fetchval("SELECT min(lsn)::text FROM lsn_history") == "0/2000"  # pruned
        assert await confirm(Retention(duration_s=10 * 3600)) is None  # nothing old enough: keep all
        # the size cap moves it up to the oldest row within 0x2800 bytes of the checkpoint
        assert await confirm(Retention(duration_s=2.5 * 3600, size_bytes=0x2800)) == 0x3000
        assert await confirm(Retention(size_bytes=0x2800)) == 0x3000
        assert await confirm(Retention(size_bytes=0x10000)) is None  # within the cap: keep all
        await store.pool.execute(
            "INSERT INTO rewinds (slot_name, from_lsn, up_to, rules) VALUES ($1, '0/1800', '0/5000', '{}')",
            SLOT,
        )
        assert await confirm(Retention(duration_s=2.5 * 3600)) == 0x1800  # held at the rewind's start
        await store.pool.execute("UPDATE rewinds SET position = '0/2800'")
        assert await confirm(Retention(duration_s=2.5 * 3600)) == 0x2000
    finally:
        await store.close()


# ---------------------------------------------------------------------------------------------------------
# Rewinds


async def test_rewind_with_one_new_rule_yields_exactly_that_rules_events(
    dsn: str, items: Conn, tmp_path: Path
) -> None:
    config_a = write_config(tmp_path / "a.yaml", [AUDIT], retain=RETAIN)
    async with running_ingest(dsn, config_a) as run:
        since = datetime.now(UTC)  # the window starts when the first session began, just before
        for i in range(1, 6):
            insert(items, i)
        insert(items, 6, 7)  # two changes of one transaction: ordinals 0 and 1
        items.execute("UPDATE items SET v = 'y' WHERE id = 1")
        await wait_caught_up(run, dsn)
    before = events(dsn)
    assert len(before) == 8 and len(runs(items)) == 8

    config_b = write_config(tmp_path / "b.yaml", [AUDIT, NOTIFY], retain=RETAIN)
    result = await acli(dsn, config_b, "rewind", "--to-time", since.isoformat())
    rewind_id = recorded(result)
    assert "`listener run` starts it when it starts" in result.stderr
    async with running_ingest(dsn, config_b) as run:  # a stopped service picks the rewind up at start
        row = await wait_rewound(items, rewind_id)
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.rewinds == 1 and run.ingest.stats.rewound >= 7
    assert row["error"] is None and row["events_inserted"] == 7 and row["started_at"] is not None

    after = events(dsn)
    assert after[: len(before)] == before
    new = after[len(before) :]
    expected = {e["idempotency_key"].replace("audit/", "notify/", 1) for e in before if e["op"] == "insert"}
    assert [e["rule"] for e in new] == ["notify"] * 7
    assert {e["idempotency_key"] for e in new} == expected
    made = runs(items)[8:]
    assert [(r["id"], r["generation"]) for r in made] == [(e["idempotency_key"], 0) for e in new]


async def test_rewind_with_no_new_rule_yields_nothing(dsn: str, items: Conn, tmp_path: Path) -> None:
    config = write_config(tmp_path / "a.yaml", [AUDIT], retain=RETAIN)
    await ingest_rows(dsn, items, config, (1,), (2, 3), (4,))
    before, runs_before = events(dsn), runs(items)
    rewind_id = recorded(await acli(dsn, config, "rewind", "--to-lsn", oldest_rewindable(items)))
    async with running_ingest(dsn, config) as run:
        row = await wait_rewound(items, rewind_id)
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.rewound >= 3  # re-read, every rule evaluated again...
        assert run.ingest.stats.events_inserted == 0  # ...and nothing inserted
    assert row["error"] is None and row["events_inserted"] == 0 and row["runs_rerun"] == 0
    assert events(dsn) == before and runs(items) == runs_before


async def test_a_rewind_whose_range_ends_at_an_idle_checkpoint_finishes(
    dsn: str, items: Conn, tmp_path: Path
) -> None:
    """No transaction ends where such a range does: the server's keepalive position says it was passed."""
    config = write_config(tmp_path / "a.yaml", [AUDIT], retain=RETAIN)
    async with running_ingest(dsn, config) as run:
        run.ingest.idle_checkpoint_interval = 0.0
        insert(items, 1)
        await wait_caught_up(run, dsn)
        last_commit = checkpoint(items)
        deadline = time.monotonic() + WAIT_S
        while checkpoint(items) == last_commit:  # the checkpoint follows the server's position while idle
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    rewind_id = recorded(await acli(dsn, config, "rewind", "--to-lsn", oldest_rewindable(items)))
    async with running_ingest(dsn, config) as run:
        row = await wait_rewound(items, rewind_id)
        assert row["error"] is None and run.ingest.stats.rewound >= 2
    assert len(events(dsn)) == 1


async def test_rerun_makes_one_new_run_per_matching_change_and_a_redelivery_none(
    dsn: str, items: Conn, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "a.yaml", [AUDIT], retain=RETAIN)
    await ingest_rows(dsn, items, config, (1,), (2,), (3, 4), (5,))
    keys = [e["idempotency_key"] for e in events(dsn)]
    assert len(keys) == 5
    items.execute("UPDATE listener.runs SET status = 'done', finished_at = now()")  # they ran once

    oldest = oldest_rewindable(items)
    result = await acli(dsn, config, "rewind", "--to-lsn", oldest, "--rerun", "audit")
    rewind_id = recorded(result)
    assert "rerunning rule audit as generation 1" in result.stderr
    async with running_ingest(dsn, config) as run:
        row = await wait_rewound(items, rewind_id)
        await wait_caught_up(run, dsn)
    assert row["runs_rerun"] == 5 and row["events_inserted"] == 0 and row["error"] is None
    made = runs(items)[5:]
    assert [(r["id"], r["event_key"], r["generation"], r["status"]) for r in made] == [
        (f"{key}#1", key, 1, "pending") for key in keys
    ]

    # A crash mid-rewind re-reads part of it again; here all of it: the same generation makes nothing new.
    items.execute(
        "UPDATE listener.rewinds SET finished_at = NULL, started_at = NULL, position = NULL WHERE id = %s",
        [rewind_id],
    )
    async with running_ingest(dsn, config) as run:
        row = await wait_rewound(items, rewind_id)
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.rewound >= 4
    assert row["runs_rerun"] == 5 and len(runs(items)) == 10

    # A rule that is new and rerun at once: each change gets exactly one run, of the rewind's generation.
    config_c = write_config(tmp_path / "c.yaml", [AUDIT, EXTRA], retain=RETAIN)
    rewind_id = recorded(await acli(dsn, config_c, "rewind", "--to-lsn", oldest, "--rerun", "extra"))
    async with running_ingest(dsn, config_c) as run:
        row = await wait_rewound(items, rewind_id)
        await wait_caught_up(run, dsn)
    assert row["events_inserted"] == 5 and row["runs_rerun"] == 5
    extra = [r for r in runs(items) if r["event_key"].startswith("extra/")]
    assert sorted((r["id"], r["generation"]) for r in extra) == sorted(
        (key.replace("audit/", "extra/", 1) + "#1", 1) for key in keys
    )


async def test_dry_run_counts_per_rule_and_writes_nothing(dsn: str, items: Conn, tmp_path: Path) -> None:
    config_a = write_config(tmp_path / "a.yaml", [AUDIT], retain=RETAIN)
    config_b = write_config(tmp_path / "b.yaml", [AUDIT, NOTIFY], retain=RETAIN)
    async with running_ingest(dsn, config_a) as run:  # the slot stays in use all along
        for ids in ((1,), (2, 3), (4,)):
            insert(items, *ids)
        items.execute("UPDATE items SET v = 'y' WHERE id = 2")
        await wait_caught_up(run, dsn)
        oldest, before, flush = oldest_rewindable(items), events(dsn), slot_flush(items)

        result = await acli(dsn, config_b, "rewind", "--to-lsn", oldest, "--dry-run", "--json")
        assert result.exit_code == 0, result.stderr
        counted = json.loads(result.stdout)
        assert counted["rules"] == {
            "audit": {"events": 5, "present": 5, "new": 0, "runs": 0},
            "notify": {"events": 4, "present": 0, "new": 4, "runs": 4},
        }
        assert counted["from_lsn"] == oldest and counted["transactions"] >= 4

        result = await acli(dsn, config_a, "rewind", "--to-lsn", oldest, "--rerun", "audit", "--dry-run")
        assert result.exit_code == 0, result.stderr
        assert "5 (rerun)" in result.stdout and "nothing was written" in result.stdout

        insert(items, 5)  # the running ingest was not disturbed
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.reconnects == 0
    assert events(dsn)[:5] == before and len(events(dsn)) == 6
    assert items.execute("SELECT count(*) FROM listener.rewinds").fetchone() == (0,)
    assert slot_flush(items) == flush
    assert items.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (1,)  # copies gone


async def test_rewind_while_the_ingest_is_running(dsn: str, items: Conn, tmp_path: Path) -> None:
    config_a = write_config(tmp_path / "a.yaml", [AUDIT], retain=RETAIN)
    await ingest_rows(dsn, items, config_a, (1,), (2, 3))
    oldest = oldest_rewindable(items)
    config_b = write_config(tmp_path / "b.yaml", [AUDIT, NOTIFY], retain=RETAIN)
    async with running_ingest(dsn, config_b) as run:  # restarted with the new rule
        insert(items, 4)
        await wait_caught_up(run, dsn)
        result = await acli(dsn, config_b, "rewind", "--to-lsn", oldest, "--wait")
        assert result.exit_code == 0, result.stderr
        assert "the running listener (PID" in result.stderr
        assert "finished: 3 new event(s)" in result.stderr
        insert(items, 5)
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.rewinds == 1
    got = events(dsn)
    by_rule = {
        rule: sorted(e["payload"]["new"]["id"] for e in got if e["rule"] == rule)
        for rule in ("audit", "notify")
    }
    assert by_rule == {"audit": [1, 2, 3, 4, 5], "notify": [1, 2, 3, 4, 5]}
    assert len({e["idempotency_key"] for e in got}) == len(got) == 10


async def test_a_rewind_asking_for_rules_the_listener_does_not_run_fails_clearly(
    dsn: str, items: Conn, tmp_path: Path
) -> None:
    config_a = write_config(tmp_path / "a.yaml", [AUDIT], retain=RETAIN)
    config_b = write_config(tmp_path / "b.yaml", [AUDIT, NOTIFY], retain=RETAIN)
    async with running_ingest(dsn, config_a) as run:
        insert(items, 1)
        await wait_caught_up(run, dsn)
        result = await acli(dsn, config_b, "rewind", "--to-lsn", oldest_rewindable(items), "--wait")
        assert result.exit_code == 3  # the recorded rewind failed in the service: a runtime failure
        assert "does not run rule(s) notify" in result.stderr and "restart `listener run`" in result.stderr
    assert [e["rule"] for e in events(dsn)] == ["audit"]


async def test_two_recorded_rewinds_run_one_after_the_other(dsn: str, items: Conn, tmp_path: Path) -> None:
    config = write_config(tmp_path / "a.yaml", [AUDIT], retain=RETAIN)
    await ingest_rows(dsn, items, config, (1,), (2,))
    oldest = oldest_rewindable(items)
    first = recorded(await acli(dsn, config, "rewind", "--to-lsn", oldest))
    second = recorded(await acli(dsn, config, "rewind", "--to-lsn", oldest, "--rerun", "audit"))
    async with running_ingest(dsn, config) as run:
        await wait_rewound(items, second)
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.rewinds == 2
    assert rewind_row(items, first)["finished_at"] < rewind_row(items, second)["started_at"]
    assert rewind_row(items, second)["runs_rerun"] == 2 and len(runs(items)) == 4


async def test_a_rewind_whose_start_the_slot_passed_is_refused_not_moved(
    dsn: str, items: Conn, tmp_path: Path
) -> None:
    """The server never starts a logical slot before its confirmed position: it would quietly start there.
    The ingest refuses such a rewind instead, saying why."""
    config = write_config(tmp_path / "a.yaml", [AUDIT], retain=RETAIN)
    await ingest_rows(dsn, items, config, (1,), (2,))
    below = format_lsn(slot_flush(items) - 1)
    items.execute(
        "INSERT INTO listener.rewinds (slot_name, from_lsn, up_to, rules) VALUES (%s, %s, %s, '{audit}')",
        [SLOT, below, format_lsn(checkpoint(items))],
    )
    async with running_ingest(dsn, config) as run:
        insert(items, 3)
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.rewinds == 0 and run.ingest.stats.rewound == 0
    (row,) = items.execute("SELECT error FROM listener.rewinds").fetchall()
    assert row[0] is not None and "already confirmed" in str(row[0]) and f"start {below}" in str(row[0])
    assert len(events(dsn)) == 3


async def test_status_shows_the_window_the_wal_kept_and_a_warning(
    dsn: str, items: Conn, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "a.yaml", [AUDIT], retain={"duration": "1h", "warn_size": "1kB"})
    async with running_ingest(dsn, config) as run:
        insert(items, 1)
        insert(items, 2, 3)
        await wait_caught_up(run, dsn)
        result = await acli(dsn, config, "status", "--json")
        assert result.exit_code == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["active_pid"] is not None
        human = await acli(dsn, config, "status")
    assert status["slot"] == SLOT and status["slot_exists"] is True
    # read while ingest ran: the checkpoint and the slot may have moved on since (on 14 each state write
    # streams back as an empty transaction)
    assert parse_lsn(status["checkpoint_lsn"]) <= checkpoint(items)
    assert parse_lsn(status["confirmed_flush_lsn"]) <= slot_flush(items)
    assert status["rewindable"]["from_lsn"] == oldest_rewindable(items)
    assert status["rewindable"]["to_lsn"] == status["checkpoint_lsn"]
    assert datetime.fromisoformat(status["rewindable"]["from_time"]) <= datetime.now(UTC)
    assert status["retain"] == {"duration": "1h", "size": None}
    assert status["retained_wal_bytes"] > status["warn_wal_bytes"] == 1024
    assert any("above 1.0 kB (retain.warn_size)" in w for w in status["warnings"])
    assert status["runs"] == {"pending": 3, "running": 0, "dead": 0}
    assert human.exit_code == 0, human.stderr
    for fragment in ("rewindable", status["rewindable"]["from_lsn"], "3 pending", "warning:", "PID"):
        assert fragment in human.stdout, (fragment, human.stdout)

    off = write_config(tmp_path / "off.yaml", [AUDIT])
    result = await acli(dsn, off, "status", "--json")
    assert json.loads(result.stdout)["retain"] is None
    assert "off: the slot confirms the checkpoint" in (await acli(dsn, off, "status")).stdout


async def test_refusals_say_what_is_wrong_and_how_to_fix_it(dsn: str, items: Conn, tmp_path: Path) -> None:
    off = write_config(tmp_path / "off.yaml", [AUDIT])
    await ingest_rows(dsn, items, off, (1,))
    on = write_config(tmp_path / "on.yaml", [AUDIT], retain=RETAIN)

    refused(
        await acli(dsn, off, "rewind", "--to-time", "1h"), "nothing is rewindable", "retain:", "duration: 24h"
    )
    # retention switched on, but nothing kept yet: the slot has confirmed up to the checkpoint
    refused(
        await acli(dsn, on, "rewind", "--to-time", "1h"), "outside the rewind window", "the window is empty"
    )

    await ingest_rows(dsn, items, on, (2,), (3,))
    oldest = oldest_rewindable(items)
    cp = format_lsn(checkpoint(items))
    refused(
        await acli(dsn, on, "rewind", "--to-lsn", "zz"), "invalid LSN 'zz' for --to-lsn", "two hex numbers"
    )
    refused(
        await acli(dsn, on, "rewind", "--to-time", "next tuesday"), "invalid time 'next tuesday'", "ISO 8601"
    )
    refused(await acli(dsn, on, "rewind", "--to-time", "99999999999999999999d"), "out of range", "ISO 8601")
    text = refused(
        await acli(dsn, on, "rewind", "--to-lsn", "0/1"),
        "--to-lsn 0/1 is outside the rewind window",
        f"the oldest reachable position is {oldest} (committed 20",
        "retain.duration",
    )
    assert "UTC)" in text
    refused(
        await acli(dsn, on, "rewind", "--to-time", "2000-01-01T00:00:00+00:00"),
        "outside the rewind window",
        f"oldest reachable position is {oldest}",
    )
    refused(await acli(dsn, on, "rewind", "--to-lsn", cp), "nothing to re-read", f"checkpoint {cp}")
    refused(await acli(dsn, on, "rewind", "--to-lsn", "FFFF/0"), "nothing to re-read")
    refused(
        await acli(dsn, on, "rewind", "--to-lsn", oldest, "--rerun", "audti"),
        "no rule named 'audti'",
        "did you mean 'audit'?",
    )
    refused(await acli(dsn, on, "rewind"), "exactly one of --to-lsn or --to-time")
    refused(await acli(dsn, on, "rewind", "--to-lsn", oldest, "--to-time", "1h"), "exactly one of")
    assert items.execute("SELECT count(*) FROM listener.rewinds").fetchone() == (0,)
