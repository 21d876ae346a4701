"""The retention of finished work (`runs: keep:`), against a real server: pruning deletes whole events whose
runs are all done or cancelled and older than their workflow's period, with their runs, steps and attempts,
a bounded batch per transaction; pending, running and dead runs stay, and so does every event that has one;
a pruned event's key is forgotten (a redelivery runs again, as the README says); the leader's pruner runs
beside the stream and stops the service loudly when it cannot work."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from listener import install as setup
from listener.ingest import run_retention
from listener.ingest.run_retention import FIRST_BATCH, RunRetention, prune_once
from listener.ops import runs as runs_ops
from listener.queue import migrations, queries
from listener.queue.store import StateStore
from tests.support import SLOT, _wait_for, acli, make_config, running_ingest, write_config

Conn = psycopg.Connection[tuple[object, ...]]

DAY = 86400.0
OLD = "40 days"  # older than every period below but `forever`
KEEP = {"keep": "30d", "workflows": {"m:short": "7d", "m:ever": "forever"}}


def event(sql: Conn, key: str, workflow: str = "m:f") -> None:
    sql.execute(
        "INSERT INTO listener.events (idempotency_key, source, rule, workflow, payload)"
        " VALUES (%s, 'cdc', 'r', %s, '{}')",
        [key, workflow],
    )


def run(
    sql: Conn, key: str, status: str, ago: str | None, *, generation: int = 0, workflow: str = "m:f"
) -> str:
    """A run of event ``key`` (generation 0's id is the key, a later one's KEY#N), finished ``ago`` (an
    interval) before now, with a step and an attempt."""
    run_id = key if generation == 0 else f"{key}#{generation}"
    sql.execute(
        "INSERT INTO listener.runs (id, event_key, generation, workflow, status, attempt, finished_at)"
        " VALUES (%s, %s, %s, %s, %s, 1, now() - %s::interval)",
        [run_id, key, generation, workflow, status, ago],
    )
    sql.execute(
        "INSERT INTO listener.steps (run_id, name, attempt, result, started_at)"
        " VALUES (%s, 'llm', 1, '\"answer\"', now())",
        [run_id],
    )
    sql.execute(
        "INSERT INTO listener.attempts (run_id, attempt, workflow, worker, outcome)"
        " VALUES (%s, 1, %s, 'w', %s)",
        [run_id, workflow, status],
    )
    return run_id


def one(sql: Conn, key: str, status: str, ago: str | None = OLD, workflow: str = "m:f") -> str:
    event(sql, key, workflow)
    return run(sql, key, status, ago, workflow=workflow)


def left(sql: Conn, table: str, column: str) -> set[str]:
    return {str(r[0]) for r in sql.execute(f"SELECT {column} FROM listener.{table}").fetchall()}


@pytest.fixture
def state(sql: Conn) -> Conn:
    migrations.migrate(sql, "listener")
    return sql


@pytest_asyncio.fixture
async def store(dsn: str, state: Conn) -> AsyncIterator[StateStore]:
    store = await StateStore.connect(dsn, schema="listener", slot=SLOT)
    try:
        yield store
    finally:
        await store.close()


POLICY = RunRetention(30 * DAY, {"m:short": 7 * DAY, "m:ever": None}, batch_rows=2)


async def test_pruning_deletes_old_finished_events_whole_and_nothing_else(
    state: Conn, store: StateStore
) -> None:
    pruned = {
        one(state, "done", "done"),
        one(state, "cancelled", "cancelled"),
        one(state, "short", "done", "10 days", workflow="m:short"),  # its workflow keeps 7 days
    }
    for n in range(5):  # more than a batch (2)
        pruned.add(one(state, f"many{n}", "done"))
    # an event whose later generation (`retry --rerun`) is also old and finished: both go
    event(state, "reran")
    pruned |= {run(state, "reran", "done", OLD), run(state, "reran", "cancelled", OLD, generation=1)}
    # an event with a rerun's run only (`rewind --rerun` of a new event): no generation 0
    event(state, "rerun_only")
    pruned.add(run(state, "rerun_only", "done", OLD, generation=2))
    kept = {
        one(state, "recent", "done", "1 day"),
        one(state, "short_recent", "done", "3 days", workflow="m:short"),
        one(state, "forever", "done", "400 days", workflow="m:ever"),
        one(state, "pending", "pending", None),
        one(state, "running", "running", None),
        one(state, "dead", "dead"),  # dead runs wait for an operator
    }
    # an old done run whose event has a later generation pending, dead or recent: the event stays whole
    for later, ago in (("pending", None), ("dead", OLD), ("done", "1 day")):
        event(state, f"busy_{later}")
        kept |= {
            run(state, f"busy_{later}", "done", OLD),
            run(state, f"busy_{later}", later, ago, generation=1),
        }

    done = await prune_once(store, POLICY)

    assert left(state, "runs", "id") == kept
    assert left(state, "steps", "run_id") == kept
    assert left(state, "attempts", "run_id") == kept
    events = {k.partition("#")[0] for k in kept}
    assert left(state, "events", "idempotency_key") == events
    assert (done.runs, done.events) == (len(pruned), len(pruned) - 1)  # "reran" had two runs
    row = state.execute("SELECT events, runs, last_pruned IS NOT NULL FROM listener.run_retention").fetchone()
    assert row == (len(pruned) - 1, len(pruned), True)
    assert (await prune_once(store, POLICY)).runs == 0  # nothing more is due


async def test_a_transaction_deletes_one_batch_and_passes_over_events_that_stay(
    state: Conn, store: StateStore
) -> None:
    # the oldest candidate's event must stay (a dead generation): batches go on after it, not round it
    event(state, "stuck")
    run(state, "stuck", "done", "50 days")
    run(state, "stuck", "dead", OLD, generation=1)
    for n in range(5):
        one(state, f"e{n}", "done", f"{45 - n} days")
    events, runs, after = await store.prune_runs("m:f", 30 * DAY, FIRST_BATCH, batch_rows=2)
    assert (events, runs) == (1, 1)  # "stuck" was a candidate, and stays; e0 went
    seen = [events]
    while after is not None:
        events, runs, after = await store.prune_runs("m:f", 30 * DAY, after, batch_rows=2)
        seen.append(events)
    assert seen == [1, 2, 2, 0]  # e1 e2, e3 e4, then nothing: never "stuck" again
    assert left(state, "events", "idempotency_key") == {"stuck"}


async def test_two_pruners_at_once_share_the_work(dsn: str, state: Conn, store: StateStore) -> None:
    """An old leader's last pass beside a new leader's first: the candidates are locked SKIP LOCKED, so
    each event is deleted once, by one of them, and both end without an error."""
    state.execute(
        "INSERT INTO listener.events (idempotency_key, source, rule, workflow, payload)"
        " SELECT 'e' || g, 'cdc', 'r', 'm:f', '{}' FROM generate_series(1, 300) g"
    )
    state.execute(
        "INSERT INTO listener.runs (id, event_key, workflow, status, attempt, finished_at)"
        " SELECT 'e' || g, 'e' || g, 'm:f', 'done', 1, now() - interval '40 days' - g * interval '1 s'"
        " FROM generate_series(1, 300) g"
    )
    other = await StateStore.connect(dsn, schema="listener", slot=SLOT)
    try:
        policy = RunRetention(30 * DAY, batch_rows=10)
        first, second = await asyncio.gather(prune_once(store, policy), prune_once(other, policy))
    finally:
        await other.close()
    assert first.events + second.events == 300 and first.runs + second.runs == 300
    assert first.runs and second.runs  # both worked, side by side
    assert left(state, "runs", "id") == set() and left(state, "events", "idempotency_key") == set()


async def test_a_pruned_key_is_forgotten_a_kept_one_is_not(state: Conn, store: StateStore) -> None:
    """What the README says: a redelivery of an event whose runs are kept inserts nothing; once pruned,
    the same key makes a new event and a new run (which is why `keep` must outlive every window through
    which an event can come again)."""
    one(state, "old", "done")
    one(state, "new", "done", "1 day")

    def redeliver(key: str) -> int:
        row = state.execute(
            queries.get("insert_keyed_events").replace("INSERT INTO events", "INSERT INTO listener.events")
            .replace("INSERT INTO runs", "INSERT INTO listener.runs"),
            {"keys": [key], "payloads": ["{}"], "run_keys": [None], "source": "cdc", "rule": "r",
             "workflow": "m:f", "op": "insert", "table_name": "t", "lsn": None, "commit_time": None,
             "gated": False, "key_limit": None, "ordered": False, "priority": 0},
        ).fetchone()  # fmt: skip
        assert row is not None
        return int(str(row[0]))

    assert redeliver("old") == 0 and redeliver("new") == 0
    await prune_once(store, POLICY)
    assert redeliver("new") == 0
    assert redeliver("old") == 1  # pruned: the key is no longer known
    assert state.execute("SELECT status FROM listener.runs WHERE id = 'old'").fetchone() == ("pending",)


async def test_the_leader_prunes_beside_the_stream_and_status_shows_it(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "listener.yaml", [], runs=KEEP)
    await asyncio.to_thread(setup.init, config, dsn, dsn)
    one(sql, "old", "done")
    one(sql, "recent", "done", "1 day")
    async with running_ingest(dsn, config, init=False) as running:
        assert running.ingest.run_retention is not None
        await _wait_for(lambda: left(sql, "runs", "id") == {"recent"}, "the old run to be pruned")
    result = await acli(dsn, config, "status", "--json")
    assert result.exit_code == 0, result.output
    kept = json.loads(result.stdout)["run_retention"]
    assert kept["keep"] == "30d" and kept["workflows"] == KEEP["workflows"]
    assert (kept["pruned_events"], kept["pruned_runs"]) == (1, 1) and kept["last_pruned"] is not None
    assert datetime.fromisoformat(kept["oldest_finished"]) < datetime.now(UTC) - timedelta(hours=23)
    text = (await acli(dsn, config, "status")).stdout
    assert "finished" in text and "1 run(s) of 1 event(s) pruned" in text, text


async def test_a_pruner_that_cannot_work_stops_the_service_naming_itself(
    dsn: str, sql: Conn, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_retention, "RUNS_PRUNE_INTERVAL_S", 0.1)
    config = make_config([], runs=KEEP)
    with caplog.at_level(logging.ERROR), pytest.raises(BaseException) as caught:
        async with running_ingest(dsn, config) as running:
            one(sql, "old", "done")
            sql.execute("DROP TABLE listener.run_retention")  # no retry can fix that
            await asyncio.wait_for(asyncio.shield(running.task), 60)
    assert "UndefinedTable" in repr(caught.value)
    assert any("ingest-run-retention failed" in r.getMessage() for r in caplog.records), caplog.text
    assert left(sql, "runs", "id") == {"old"}  # its transaction rolled back: nothing half-deleted


@pytest.mark.parametrize(
    ("statuses", "workflow", "limit"),
    [
        ((), None, 7),
        ((), None, 100),
        (("running", "dead"), None, 4),
        (("done",), "m:short", 3),
        ((), "m:f", 5),
    ],
)
def test_runs_lists_the_newest_of_the_statuses_merged_as_a_full_sort_would(
    state: Conn, statuses: tuple[str, ...], workflow: str | None, limit: int
) -> None:
    """`listener runs` reads each status's newest runs from its index (running ones apart) and merges
    them: the same runs, in the same order, as sorting every run would give."""
    kinds = ["done", "running", "pending", "dead", "cancelled", "done", "running"]
    for n in range(40):
        one(state, f"k{n:02}", kinds[n % len(kinds)], None, workflow="m:short" if n % 3 else "m:f")
    state.execute("SET search_path TO listener")
    expected = [
        str(r[0])
        for r in state.execute(
            "SELECT id FROM runs WHERE (%(s)s::text[] IS NULL OR status = ANY(%(s)s::text[]))"
            " AND (%(w)s::text IS NULL OR workflow = %(w)s) ORDER BY seq DESC LIMIT %(n)s",
            {"s": list(statuses) or None, "w": workflow, "n": limit},
        ).fetchall()
    ]
    listed = runs_ops.list_runs(state, statuses=statuses, workflow=workflow, limit=limit)
    assert [r.id for r in listed] == expected and expected


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("list_runs", {"statuses": None, "workflow": None, "rule": None, "limit": 50}),
        ("list_runs", {"statuses": ["pending", "running"], "workflow": "m:f", "rule": None, "limit": 50}),
        ("list_runs", {"statuses": ["dead"], "workflow": None, "rule": "r", "limit": 50}),
        ("count_runs", {"statuses": ["pending", "running", "dead"]}),
        ("generations", {"key": "r/10"}),
        ("retry_runs", {"key": "r/10"}),
        ("queue_gauges", {}),  # GET /metrics
    ],
)
def test_the_operators_commands_read_no_whole_table(state: Conn, name: str, params: dict[str, Any]) -> None:
    """`listener runs`, `status`, `runs show` and `retry` find their runs by index (sql/0011): on a queue of
    mostly finished runs their plans read no whole table, so their time does not grow with the queue
    (bench/runs_at_scale.py measures it at 10M runs)."""
    state.execute(
        "INSERT INTO listener.events (idempotency_key, source, rule, workflow, payload)"
        " SELECT 'r/' || g, 'cdc', 'r', 'm:f', '{}' FROM generate_series(1, 20000) g"
    )
    state.execute(
        "INSERT INTO listener.runs (id, event_key, workflow, status, gated, finished_at)"
        " SELECT 'r/' || g, 'r/' || g, 'm:f', CASE WHEN g > 19900 THEN 'pending'"
        " WHEN g > 19880 THEN 'running' WHEN g % 100 = 0 THEN 'dead' ELSE 'done' END, g % 2 = 0, now()"
        " FROM generate_series(1, 20000) g"
    )
    state.execute("VACUUM ANALYZE listener.runs, listener.events")
    with state.transaction(force_rollback=True):
        state.execute("SET LOCAL search_path TO listener")
        row = state.execute(f"EXPLAIN (FORMAT JSON) {queries.get(name)}", params).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(str(row[0]))
    found = list(_nodes(plan[0]["Plan"]))
    assert not [n for n in found if n[0] == "Seq Scan" and n[1] in ("runs", "events")], f"{name}: {found}"


def _nodes(plan: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    yield plan["Node Type"], plan.get("Relation Name")
    for child in plan.get("Plans", ()):
        yield from _nodes(child)
