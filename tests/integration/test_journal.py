"""The change journal (`journal:`) and `listener replay`, against a real server: the journal holds the rule
tables' changes, raw and once; a replay evaluates the current rules on them -- new rules make their events,
existing keys nothing -- also after the slot has let go of that WAL; pruning removes old rows; `--dry-run`
writes nothing; refusals say what and how to fix."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from listener.ingest.expand import decode_relation, stored_changes
from listener.ingest.journal import JournalPolicy, prune_forever
from listener.pg.lsn import parse_lsn
from listener.pg.types import TypeRegistry
from listener.queue.store import StateStore
from tests.integration.test_rewind import (
    AUDIT,
    NOTIFY,
    SLOT,
    checkpoint,
    insert,
    refused,
    runs,
    slot_flush,
)
from tests.support import acli, events, running_ingest, wait_caught_up, write_config

Conn = psycopg.Connection[tuple[object, ...]]

JOURNAL = {"keep": "1h"}
DELETES = {"name": "gone", "table": "items", "on": ["delete"], "workflow": "m:gone"}


@pytest.fixture
def items(sql: Conn) -> Conn:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    return sql


def journal_rows(sql: Conn) -> list[dict[str, Any]]:
    cur = sql.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        "SELECT commit_lsn::text AS commit_lsn, relation_oid, first_ordinal, changes, xid, commit_time,"
        " table_name, protocol, relation, data FROM listener.journal ORDER BY commit_lsn, first_ordinal"
    ).fetchall()


def journaled(sql: Conn) -> list[tuple[str, str, int, dict[str, Any]]]:
    """Every journaled change, decoded as replay does: (op, commit LSN, ordinal, payload)."""
    types = TypeRegistry()
    out = []
    for row in journal_rows(sql):
        info = decode_relation(row["protocol"], row["relation"], types)
        for change in stored_changes(
            row["protocol"], info, row["data"], commit_text=row["commit_lsn"], xid=row["xid"],
            at=row["commit_time"], first_ordinal=row["first_ordinal"],
        ):  # fmt: skip
            out.append((change.op, change.commit_text, change.ordinal, json.loads(change.payload_json())))
    return out


def horizon(sql: Conn) -> str:
    """Since when the journal holds every change: the earliest time a replay may start."""
    row = sql.execute("SELECT since FROM listener.journal_horizon").fetchone()
    assert row is not None and isinstance(row[0], datetime)
    return row[0].isoformat()


def ok(result: Any) -> str:
    assert result.exit_code == 0, (result.output, result.stderr)
    return str(result.stdout)


# ---------------------------------------------------------------------------------------------------------
# The journal


async def test_the_journal_holds_every_change_of_the_rule_tables_once(
    dsn: str, items: Conn, tmp_path: Path
) -> None:
    # insert only for the rule, but the publication publishes delete too (another rule): both journaled
    config = write_config(tmp_path / "a.yaml", [AUDIT, DELETES], journal=JOURNAL)
    async with running_ingest(dsn, config) as run:
        insert(items, 1)
        insert(items, 2, 3)
        items.execute("UPDATE items SET v = 'y' WHERE id = 2")
        items.execute("DELETE FROM items WHERE id = 3")
        await wait_caught_up(run, dsn)
    rows = journal_rows(items)
    assert [r["changes"] for r in rows] == [1, 2, 1, 1]
    assert {r["table_name"] for r in rows} == {"public.items"}
    changes = journaled(items)
    assert [(op, ordinal) for op, _, ordinal, _ in changes] == [
        ("insert", 0), ("insert", 0), ("insert", 1), ("update", 0), ("delete", 0),
    ]  # fmt: skip
    # the same changes, payloads and keys as the events ingest made
    by_key = {e["idempotency_key"]: e for e in events(dsn)}
    for op, commit, ordinal, payload in changes:
        rule = "gone" if op == "delete" else "audit"
        assert by_key[f"{rule}/{commit}/{ordinal}"]["payload"] == payload
    horizon = items.execute("SELECT since FROM listener.journal_horizon").fetchone()
    assert horizon is not None

    # A redelivered transaction journals once: forget the checkpoint, so the server (the slot kept
    # behind by `retain:`) sends everything again.
    config = write_config(tmp_path / "b.yaml", [AUDIT, DELETES], journal=JOURNAL, retain={"duration": "1h"})
    async with running_ingest(dsn, config) as run:
        insert(items, 10)
        await wait_caught_up(run, dsn)
    before = journal_rows(items)
    items.execute("DELETE FROM listener.checkpoints")
    async with running_ingest(dsn, config) as run:
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.changes >= 1  # re-sent and handled again
    assert journal_rows(items) == before


async def test_a_huge_transaction_is_journaled_in_rows_of_bounded_size(
    dsn: str, items: Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from listener.ingest import journal as journal_mod

    monkeypatch.setattr(journal_mod, "JOURNAL_ROW_BYTES", 2000)
    config = write_config(tmp_path / "a.yaml", [AUDIT], journal=JOURNAL)
    async with running_ingest(dsn, config) as run:
        items.execute("INSERT INTO items SELECT g, repeat('x', 50) FROM generate_series(1, 500) g")
        await wait_caught_up(run, dsn)
    rows = journal_rows(items)
    assert len(rows) > 5 and sum(r["changes"] for r in rows) == 500
    assert all(len(r["data"]) < 2200 for r in rows)
    assert [ordinal for _, _, ordinal, _ in journaled(items)] == list(range(500))


async def test_without_journal_nothing_is_journaled(dsn: str, items: Conn, tmp_path: Path) -> None:
    config = write_config(tmp_path / "a.yaml", [AUDIT], journal=JOURNAL)
    async with running_ingest(dsn, config) as run:
        insert(items, 1)
        await wait_caught_up(run, dsn)
    config = write_config(tmp_path / "b.yaml", [AUDIT])
    async with running_ingest(dsn, config) as run:
        insert(items, 2)
        await wait_caught_up(run, dsn)
    assert len(journal_rows(items)) == 1  # the first only
    # switched off: the journal has a gap from then on, so replay refuses
    assert items.execute("SELECT count(*) FROM listener.journal_horizon").fetchone() == (0,)
    refused(
        await acli(
            dsn, write_config(tmp_path / "c.yaml", [AUDIT], journal=JOURNAL), "replay", "--from-time", "1h"
        ),
        "the change journal of slot 'listener_test' is empty",
    )


async def test_pruning_removes_rows_older_than_keep(dsn: str, items: Conn, tmp_path: Path) -> None:
    config = write_config(tmp_path / "a.yaml", [AUDIT], journal=JOURNAL)
    async with running_ingest(dsn, config) as run:
        for i in range(1, 6):
            insert(items, i)
        await wait_caught_up(run, dsn)
    items.execute(
        "UPDATE listener.journal SET commit_time = commit_time - interval '2 hours'"
        " WHERE commit_lsn IN (SELECT commit_lsn FROM listener.journal ORDER BY commit_lsn LIMIT 3)"
    )
    items.execute("UPDATE listener.journal_horizon SET since = since - interval '3 hours'")  # as if older
    store = await StateStore.connect(dsn, schema="listener", slot=SLOT)
    stop = asyncio.Event()
    try:
        pruner = asyncio.create_task(
            prune_forever(store, JournalPolicy(3600, prune_interval_s=0.05, prune_batch_rows=2), stop)
        )
        for _ in range(200):
            if len(journal_rows(items)) == 2:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await pruner
    finally:
        await store.close()
    assert len(journal_rows(items)) == 2
    since = items.execute("SELECT since FROM listener.journal_horizon").fetchone()
    assert since is not None and isinstance(since[0], datetime)
    assert abs(since[0] - (datetime.now(UTC) - timedelta(hours=1))) < timedelta(minutes=1)  # moved up


# ---------------------------------------------------------------------------------------------------------
# Replay


async def test_replay_with_one_new_rule_yields_exactly_its_events_beyond_the_wal_window(
    dsn: str, items: Conn, tmp_path: Path
) -> None:
    config_a = write_config(tmp_path / "a.yaml", [AUDIT], journal=JOURNAL)  # no `retain:`
    async with running_ingest(dsn, config_a) as run:
        for i in range(1, 6):
            insert(items, i)
        insert(items, 6, 7)  # two changes of one transaction: ordinals 0 and 1
        items.execute("UPDATE items SET v = 'y' WHERE id = 1")
        await wait_caught_up(run, dsn)
        # the slot let go of all of it: a rewind could not re-read it.  Polled: the slot's position follows
        # the checkpoint by a status update, and the checkpoint itself may move meanwhile (on PostgreSQL
        # 14 every transaction of the database streams, listener's own too)
        for _ in range(100):
            if (flushed := slot_flush(items)) == (durable := checkpoint(items)):
                break
            await asyncio.sleep(0.1)
        assert flushed == durable
    before, runs_before = events(dsn), runs(items)
    assert len(before) == 8
    since = horizon(items)

    config_b = write_config(tmp_path / "b.yaml", [AUDIT, NOTIFY], journal=JOURNAL)
    dry = ok(await acli(dsn, config_b, "replay", "--from-time", since, "--dry-run", "--json"))
    counted = json.loads(dry)
    assert counted["dry_run"] and counted["changes"] == 8
    assert counted["rules"]["audit"] == {"events": 8, "present": 8, "new": 0, "runs": 0}
    assert counted["rules"]["notify"] == {"events": 7, "present": 0, "new": 7, "runs": 7}
    assert events(dsn) == before and runs(items) == runs_before  # the dry run wrote nothing
    table = ok(await acli(dsn, config_b, "replay", "--from-time", since, "--dry-run"))
    assert "dry run: nothing was written" in table and "notify" in table

    async with running_ingest(dsn, config_b) as run:  # works beside a running service
        out = ok(await acli(dsn, config_b, "replay", "--from-time", since))
        insert(items, 8)
        await wait_caught_up(run, dsn)
    assert "7 new event(s)" in out
    after = events(dsn)
    assert after[: len(before)] == before
    new = [e for e in after[len(before) :] if e["commit_lsn"] != after[-1]["commit_lsn"]]
    expected = {e["idempotency_key"].replace("audit/", "notify/", 1) for e in before if e["op"] == "insert"}
    assert [e["rule"] for e in new] == ["notify"] * 7
    assert {e["idempotency_key"] for e in new} == expected
    payloads = {e["idempotency_key"]: e["payload"] for e in before}
    for e in new:  # the same payload as ingest made for the same change
        assert e["payload"] == payloads[e["idempotency_key"].replace("notify/", "audit/", 1)]
    made = [r for r in runs(items) if r["id"] in expected]
    assert sorted((r["id"], r["generation"]) for r in made) == sorted((k, 0) for k in expected)

    # Again: every key exists, nothing is inserted.
    again = json.loads(ok(await acli(dsn, config_b, "replay", "--from-time", since, "--json")))
    assert again["events_inserted"] == 0 and again["rules"]["notify"]["new"] == 0
    assert len(events(dsn)) == len(after)


async def test_replay_of_one_rule_in_a_time_range_and_rerun(dsn: str, items: Conn, tmp_path: Path) -> None:
    config = write_config(tmp_path / "a.yaml", [AUDIT, NOTIFY], journal=JOURNAL)
    async with running_ingest(dsn, config) as run:
        insert(items, 1)
        await wait_caught_up(run, dsn)
        await asyncio.sleep(0.05)
        middle = datetime.now(UTC)
        await asyncio.sleep(0.05)
        insert(items, 2, 3)
        await wait_caught_up(run, dsn)
    since = horizon(items)
    later = [e for e in events(dsn) if e["commit_time"] >= middle]
    assert len(later) == 4  # audit and notify, two changes

    counted = json.loads(
        ok(await acli(dsn, config, "replay", "--from-time", middle.isoformat(), "--rule", "notify",
                      "--dry-run", "--json"))
    )  # fmt: skip
    assert list(counted["rules"]) == ["notify"] and counted["changes"] == 2
    assert counted["rules"]["notify"] == {"events": 2, "present": 2, "new": 0, "runs": 0}
    until = json.loads(
        ok(await acli(dsn, config, "replay", "--from-time", since, "--to-time", middle.isoformat(),
                      "--dry-run", "--json"))
    )  # fmt: skip
    assert until["changes"] == 1

    result = json.loads(
        ok(await acli(dsn, config, "replay", "--from-time", middle.isoformat(), "--rule", "notify",
                      "--rerun", "--json"))
    )  # fmt: skip
    assert result["generation"] == 1 and result["runs_rerun"] == 2 and result["events_inserted"] == 0
    reruns = [r for r in runs(items) if r["generation"] == 1]
    notify_keys = {e["idempotency_key"] for e in later if e["rule"] == "notify"}
    assert {r["event_key"] for r in reruns} == notify_keys
    assert {r["id"] for r in reruns} == {f"{k}#1" for k in notify_keys}
    result = json.loads(
        ok(await acli(dsn, config, "replay", "--from-time", middle.isoformat(), "--rule", "notify",
                      "--rerun", "--json"))
    )  # fmt: skip
    assert result["generation"] == 2 and result["runs_rerun"] == 2


async def test_replay_refusals(dsn: str, items: Conn, tmp_path: Path) -> None:
    config = write_config(tmp_path / "a.yaml", [AUDIT], journal=JOURNAL)
    async with running_ingest(dsn, config) as run:
        insert(items, 1)
        await wait_caught_up(run, dsn)
    since = items.execute("SELECT since FROM listener.journal_horizon").fetchone()
    assert since is not None and isinstance(since[0], datetime)

    text = refused(await acli(dsn, config, "replay", "--from-time", "2h"), "outside the change journal")
    assert since[0].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") in text and "journal.keep" in text
    refused(
        await acli(dsn, config, "replay", "--from-time", "1m", "--rule", "audti"), "no rule named", "'audit'"
    )
    refused(await acli(dsn, config, "replay", "--from-time", "1m", "--rerun"), "--rerun needs --rule")
    refused(
        await acli(dsn, config, "replay", "--from-time", "yesterday"),
        "invalid time 'yesterday' for --from-time",
    )
    refused(
        await acli(dsn, config, "replay", "--from-time", "1m", "--to-time", "2m"), "is not after --from-time"
    )
    off = write_config(tmp_path / "b.yaml", [AUDIT])
    refused(await acli(dsn, off, "replay", "--from-time", "1m"), "sets no change journal (`journal:`)")
    assert len(events(dsn)) == 1


async def test_status_shows_the_journal(dsn: str, items: Conn, tmp_path: Path) -> None:
    config = write_config(tmp_path / "a.yaml", [AUDIT], journal=JOURNAL)
    async with running_ingest(dsn, config) as run:
        insert(items, 1)
        await wait_caught_up(run, dsn)
    status = json.loads(ok(await acli(dsn, config, "status", "--json")))
    journal = status["journal"]
    assert journal["keep"] == "1h" and journal["since"] is not None
    assert journal["oldest_commit_time"] is not None and journal["bytes"] > 0
    text = ok(await acli(dsn, config, "status"))
    assert "journal" in text and "replayable from" in text
    assert parse_lsn(status["checkpoint_lsn"]) > 0
