"""The hand-off (listener.queue.handoff): the runs the local ingest makes start on the local worker without a
claim while it has free slots and nothing waits on disk; the rest wait on disk as pending runs.  Handed
runs are durable, leased and fenced like claimed ones: a worker that dies with them loses them to another
once the lease expires."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from listener.queue.handoff import Offer
from tests import sample_workflows
from tests.runtime_support import effects, prepare, running_worker, wait_until
from tests.support import running_ingest, wait_caught_up, write_config

Conn = psycopg.Connection[tuple[object, ...]]
RULE = {
    "name": "items_in",
    "table": "items",
    "on": ["insert"],
    "workflow": "tests.sample_workflows:two_steps",
}


@pytest.fixture
def items(sql: Conn) -> Conn:
    prepare(sql)
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, text text)")
    return sql


def runs(sql: Conn) -> list[tuple[Any, ...]]:
    """(item id, status, attempt) of every run, by item."""
    return sql.execute(
        "SELECT (e.payload -> 'new' ->> 'id')::int, r.status, r.attempt FROM listener.runs r "
        "JOIN listener.events e ON e.idempotency_key = r.event_key ORDER BY 1"
    ).fetchall()


def attempts(sql: Conn) -> list[tuple[Any, ...]]:
    return sql.execute(
        "SELECT (e.payload -> 'new' ->> 'id')::int, a.attempt, a.worker, a.outcome FROM listener.attempts a "
        "JOIN listener.runs r ON r.id = a.run_id JOIN listener.events e ON e.idempotency_key = r.event_key "
        "ORDER BY 1, 2"
    ).fetchall()


async def test_new_runs_start_on_the_idle_local_worker_without_a_claim(
    dsn: str, items: Conn, tmp_path: Path, calls_file: str
) -> None:
    config = write_config(tmp_path / "a.yaml", [RULE])
    async with running_ingest(dsn, config) as run, running_worker(dsn) as worker:
        run.ingest.handoff = worker
        await wait_until(lambda: worker.taking_handoff, "the worker to find nothing to claim")
        items.execute("INSERT INTO items SELECT g, 'text ' || g FROM generate_series(1, 3) g")
        await wait_until(lambda: worker.stats.done == 3, "three runs done")
    assert (worker.stats.handed, worker.stats.claimed) == (3, 3)  # every start was a hand-off
    assert runs(items) == [(i, "done", 1) for i in (1, 2, 3)]
    # logged as a claim's attempt would be: attempt 1, this worker, its outcome
    assert attempts(items) == [(i, 1, worker.worker_id, "done") for i in (1, 2, 3)]
    assert sorted(e[1] for e in effects(items)) == [f"summary of text {i}" for i in (1, 2, 3)]


async def test_a_busy_worker_is_handed_its_free_slots_and_the_rest_wait_on_disk(
    dsn: str, items: Conn, tmp_path: Path, calls_file: str
) -> None:
    config = write_config(tmp_path / "a.yaml", [RULE])
    sample_workflows.GATE = asyncio.Event()  # two_steps waits between its steps until the test opens it
    try:
        async with running_ingest(dsn, config) as run, running_worker(dsn, concurrency=2) as worker:
            run.ingest.handoff = worker
            await wait_until(lambda: worker.taking_handoff, "the worker to find nothing to claim")
            items.execute(
                "INSERT INTO items SELECT g, 'text ' || g FROM generate_series(1, 5) g"
            )  # one batch
            # The batch commits before the writer hands its runs over (a moment later, on this loop): wait
            # for the hand itself, not only for the committed rows.
            await wait_until(lambda: worker.stats.handed == 2 and len(runs(items)) == 5, "two of five handed")
            # The first two of the batch were handed (claimed in the batch's own transaction); the other
            # three wait on disk, since the worker has no slot for them: nothing is held in memory.
            assert runs(items) == [(1, "running", 1), (2, "running", 1)] + [
                (i, "pending", 0) for i in (3, 4, 5)
            ]
            assert worker.offer() is None  # no free slot
            # Ingest does not wait for the workers: 200 more rows are durable events and pending runs while
            # both slots stay busy, and the worker holds only its two runs.
            items.execute("INSERT INTO items SELECT g, 'text ' || g FROM generate_series(6, 205) g")
            await wait_caught_up(run, dsn)
            assert len(runs(items)) == 205 and len(worker._running) == 2 and worker.stats.claimed == 2
            sample_workflows.GATE.set()
            await wait_until(lambda: worker.stats.done == 205, "every run done")
    finally:
        sample_workflows.GATE = None
    assert (worker.stats.handed, worker.stats.claimed) == (2, 205)  # the others claimed from disk
    assert runs(items) == [(i, "done", 1) for i in range(1, 206)]


def claimed_rows(dsn: str) -> list[dict[str, Any]]:
    """The runs' rows as the claim statement returns them (sql/queries/runs.sql), in order."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(
            """
            SELECT r.id, r.event_key, r.attempt, r.failures, r.key, e.rule, e.workflow, e.op, e.table_name,
                   e.lsn::text AS lsn, e.commit_lsn::text AS commit_lsn, e.xid, e.commit_time, e.payload,
                   '{}' AS steps
            FROM listener.runs r JOIN listener.events e ON e.idempotency_key = r.event_key ORDER BY r.seq
            """
        ).fetchall()


class Ghost:
    """A worker that takes every run handed to it and dies before starting any (its process was killed
    right after the ingest's commit)."""

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self.handed: list[str] = []
        self.rows: list[Any] = []

    def offer(self) -> Offer | None:
        return Offer("ghost", self.lease_seconds, 10)

    def hand(self, offer: Offer | None, rows: Sequence[Any], *, left_pending: bool) -> None:
        self.handed += [row["id"] for row in rows]
        self.rows += rows

    def withdraw(self, offer: Offer) -> None:
        pass


async def test_runs_handed_to_a_worker_that_died_run_elsewhere_once_the_lease_expires(
    dsn: str, items: Conn, tmp_path: Path, calls_file: str
) -> None:
    config = write_config(tmp_path / "a.yaml", [RULE])
    ghost = Ghost(lease_seconds=0.5)
    async with running_ingest(dsn, config) as run:
        run.ingest.handoff = ghost
        items.execute("INSERT INTO items SELECT g, 'text ' || g FROM generate_series(1, 2) g")
        await wait_until(lambda: len(ghost.handed) == 2, "two runs handed")
    # durable and leased: committed as running, attempt 1, the ghost's
    leases = items.execute("SELECT status, attempt, lease_owner FROM listener.runs").fetchall()
    assert leases == [("running", 1, "ghost")] * 2
    # what the worker was handed is what a claim of those runs returns (the payload as JSON)
    assert [{**row, "payload": json.loads(row["payload"])} for row in ghost.rows] == claimed_rows(dsn)
    await asyncio.sleep(0.6)  # the ghost's lease expires
    async with running_worker(dsn) as worker:  # reclaims at once, then claims: attempt 2, which fences
        await wait_until(lambda: worker.stats.done == 2, "both runs done by the living worker")
    assert worker.stats.handed == 0
    assert runs(items) == [(1, "done", 2), (2, "done", 2)]
    assert attempts(items) == [
        (i, attempt, who, outcome)
        for i in (1, 2)
        for attempt, who, outcome in ((1, "ghost", "lease expired"), (2, worker.worker_id, "done"))
    ]
