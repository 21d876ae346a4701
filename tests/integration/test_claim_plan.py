"""The workers' statements are prepared (asyncpg), and PostgreSQL may run a prepared statement with a
generic plan, chosen without the parameters' values.  Workers ask for custom plans
(``plan_cache_mode``, listener.runtime.worker); their statements are also written so that a generic plan
over a full queue still looks runs up by index.  A generic claim that expected `LIMIT $1` to take a tenth
of the queue once joined every run and event by hash: ten times the custom plan's time, growing with the
tables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from listener.queue import queries
from listener.runtime.worker import WORKER_SETTINGS
from tests.runtime_support import prepare

Conn = psycopg.Connection[tuple[object, ...]]
RUNS = 5000

STATEMENTS = {
    # name: (parameter types, the EXECUTE's arguments)
    "claim": ("int, text, float8, text[]", "16, 'w', 30, NULL"),
    "complete_runs": ("text[], int4[]", "ARRAY['r/2601', 'r/2602'], ARRAY[1, 1]"),
    "heartbeat": ("text[], text, float8", "ARRAY['r/2601'], 'w', 30"),
    "save_steps": (
        "text[], text[], int4[], text[], timestamptz[]",
        "ARRAY['r/2601'], ARRAY['llm'], ARRAY[1], ARRAY['{}'], ARRAY[now()]",
    ),
}


@pytest.fixture
def queue(sql: Conn) -> Conn:
    """A queue of 5,000 runs, half of them done (with their attempts and steps), and its statistics."""
    prepare(sql)
    sql.execute(
        """
        INSERT INTO listener.events (idempotency_key, source, rule, workflow, op, table_name, lsn, commit_lsn,
                                     xid, commit_time, payload)
        SELECT 'r/' || g, 'cdc', 'r', 'w', 'insert', 't', '0/0'::pg_lsn + g, '0/0'::pg_lsn + g, 1, now(),
               '{"new": {"id": 1}}'
        FROM generate_series(1, %(n)s) g
        """,
        {"n": RUNS},
    )
    sql.execute(
        "INSERT INTO listener.runs (id, event_key, workflow) SELECT 'r/' || g, 'r/' || g, 'w' "
        "FROM generate_series(1, %(n)s) g",
        {"n": RUNS},
    )
    sql.execute("UPDATE listener.runs SET status = 'done', attempt = 1 WHERE seq <= %(n)s", {"n": RUNS // 2})
    sql.execute(
        "INSERT INTO listener.attempts (run_id, attempt, workflow, worker, finished_at, outcome) "
        "SELECT id, 1, 'w', 'w0', now(), 'done' FROM listener.runs WHERE status = 'done'"
    )
    sql.execute(
        "INSERT INTO listener.steps (run_id, name, attempt, result, started_at) "
        "SELECT id, s, 1, '{}', now() FROM listener.runs, unnest(ARRAY['llm', 'save']) s "
        "WHERE status = 'done'"
    )
    sql.execute("ANALYZE listener.runs, listener.events, listener.steps, listener.attempts")
    return sql


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def plan_of(conn: Conn, name: str, arguments: str, settings: dict[str, str]) -> dict[str, Any]:
    """The plan of the prepared statement ``name`` (sql/queries) executed with ``arguments``."""
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL search_path TO listener")
        for setting, value in settings.items():
            conn.execute("SELECT set_config(%s, %s, true)", (setting, value))
        conn.execute(f"PREPARE s ({STATEMENTS[name][0]}) AS {queries.get(name)}")
        row = conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE s({arguments})").fetchone()
        conn.execute("DEALLOCATE s")
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(str(row[0]))
    return dict(plan[0]["Plan"])


def whole_tables(plan: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (n["Node Type"], n["Relation Name"])
        for n in nodes(plan)
        if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in ("runs", "events", "steps", "attempts")
    ]


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_the_generic_plan_of_a_worker_statement_looks_runs_up_by_index(queue: Conn, name: str) -> None:
    plan = plan_of(queue, name, STATEMENTS[name][1], {"plan_cache_mode": "force_generic_plan"})
    found = [(n["Node Type"], n.get("Relation Name")) for n in nodes(plan)]
    assert not whole_tables(plan), f"{name}: its generic plan reads whole tables: {found}"
    assert ("Hash Join", None) not in found, f"{name}: its generic plan joins by hash: {found}"


def reinsert_runs(queue: Conn, *, analyse_when: str) -> None:
    """The queue's runs inserted again, half of them done and 128 running.  Under load the statistics of
    ``runs`` lag: taken when the queue was ``empty`` or ``all pending``, they say a handful of runs are
    pending, running or done when thousands are."""
    queue.execute("DELETE FROM listener.runs")
    if analyse_when == "empty":
        queue.execute("ANALYZE listener.runs")
    queue.execute(
        "INSERT INTO listener.runs (id, event_key, workflow) SELECT 'r/' || g, 'r/' || g, 'w' "
        "FROM generate_series(1, %(n)s) g",
        {"n": RUNS},
    )
    if analyse_when == "all pending":
        queue.execute("ANALYZE listener.runs")
    half = {"n": RUNS // 2}
    queue.execute("UPDATE listener.runs SET status = 'done', attempt = 1 WHERE seq <= %(n)s", half)
    queue.execute(
        "UPDATE listener.runs SET status = 'running', attempt = 1 WHERE seq > %(n)s AND seq <= %(n)s + 128",
        half,
    )


def test_a_claim_planned_with_stale_statistics_reads_the_first_pending_runs_in_order(queue: Conn) -> None:
    """In the worker's session the claim still takes the first runs of runs_claimable in its order,
    instead of reading every pending run and sorting them (measured: 5 ms for 5 runs out of 3,000)."""
    reinsert_runs(queue, analyse_when="empty")
    plan = plan_of(queue, "claim", STATEMENTS["claim"][1], WORKER_SETTINGS)
    free = next(n for n in nodes(plan) if n.get("Subplan Name") == "CTE free")
    found = [(n["Node Type"], n.get("Index Name")) for n in nodes(free)]
    assert ("Index Scan", "runs_claimable") in found and ("Sort", None) not in found, found


BATCHED = {  # statements of many runs at once, for the 128 running runs
    "complete_runs": "ARRAY[{ids}], array_fill(1, ARRAY[128])",
    "save_steps": "ARRAY[{ids}], array_fill('llm'::text, ARRAY[128]), array_fill(1, ARRAY[128]), "
    "array_fill('{{}}'::text, ARRAY[128]), array_fill(now(), ARRAY[128])",
}


@pytest.mark.parametrize("analyse_when", ["empty", "all pending"])
@pytest.mark.parametrize("name", sorted(BATCHED))
def test_batches_planned_with_stale_statistics_look_runs_up_by_key(
    queue: Conn, name: str, analyse_when: str
) -> None:
    """Completions and step records of 128 runs read no whole table, whatever the statistics say (a
    completion that expected one done run read all of them: 10 ms per completion)."""
    reinsert_runs(queue, analyse_when=analyse_when)
    ids = ", ".join(f"'r/{RUNS // 2 + i}'" for i in range(1, 129))
    plan = plan_of(queue, name, BATCHED[name].format(ids=ids), WORKER_SETTINGS)
    assert not whole_tables(plan), [(n["Node Type"], n.get("Relation Name")) for n in nodes(plan)]
