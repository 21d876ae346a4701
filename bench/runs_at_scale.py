"""`listener runs` and `listener status` on a queue of millions of runs, before and after migration 11, and
the finished runs' pruner (`runs: keep:`).

For each size: a fresh state schema at version 10 (as before this change) is filled with N events and their
runs in SQL (``generate_series``; 0.1% dead, 1% cancelled, 1,000 pending, 100 running, the rest done,
finished over the last N/2 seconds, 8 workflows), vacuumed and analysed as autovacuum would; then the
statements of version 10 are timed (`listener runs` with and without filters, `listener status`'s count),
migration 11 is applied (timed: it builds three indexes) and the same commands are timed again with this
version's statements.  Each figure is the median of 5 after one warm-up.  With ``--prune``, one pass of the
pruner then deletes the oldest tenth of the finished runs (a `keep:` that makes them due).

    python bench/runs_at_scale.py [--sizes 1000000,3000000] [--prune] [--dsn DSN]
    python bench/runs_at_scale.py --write-cost 200000   # what migration 11's indexes cost a run's writes
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from listener.ingest.run_retention import RunRetention, prune_once
from listener.ops import runs as runs_ops
from listener.queue import migrations, queries
from listener.queue.store import StateStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

SCHEMA = "listener"
FILL_ROWS = 500_000  # per statement
WORKFLOWS = 8
# Version 10's statement of `listener runs` (sql/queries/runs.sql before migration 11): a scan and a top-N
# sort of every run.
LIST_BEFORE = """
SELECT r.id, r.event_key, r.generation, e.rule, r.workflow, r.status, r.attempt, r.failures,
       r.created_at, r.started_at, r.finished_at,
       extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at)::float8 AS duration_s,
       r.last_error
FROM runs r LEFT JOIN events e ON e.idempotency_key = r.event_key
WHERE (%(statuses)s::text[] IS NULL OR r.status = ANY(%(statuses)s::text[]))
  AND (%(workflow)s::text IS NULL OR r.workflow = %(workflow)s::text)
  AND (%(rule)s::text IS NULL OR e.rule = %(rule)s::text)
ORDER BY r.seq DESC
LIMIT %(limit)s
"""
COUNT_BEFORE = "SELECT status, count(*) FROM runs WHERE status = ANY(%(statuses)s) GROUP BY status"
# (label, --status values, --workflow)
COMMANDS: list[tuple[str, list[str] | None, str | None]] = [
    ("listener runs", None, None),
    ("listener runs --status dead", ["dead"], None),
    ("listener runs --status pending --status running", ["pending", "running"], None),
    ("listener runs --workflow bench.wf:w3", None, "bench.wf:w3"),
]
FILL = """
WITH ev AS (
    INSERT INTO events (idempotency_key, source, rule, workflow, op, table_name, commit_time, payload)
    SELECT 'rule' || g %% {w} || '/0/' || g || '/0', 'cdc', 'rule' || g %% {w}, 'bench.wf:w' || g %% {w},
           'insert', 'public.orders', now() - (%(n)s - g) * interval '0.5 s',
           jsonb_build_object('new', jsonb_build_object('id', g, 'note', 'row ' || g))
    FROM generate_series(%(lo)s::int8, %(hi)s::int8) g
    RETURNING idempotency_key, workflow, commit_time
)
INSERT INTO runs (id, event_key, workflow, status, attempt, created_at, started_at, finished_at)
SELECT idempotency_key, idempotency_key, workflow, status, 1, commit_time, commit_time,
       CASE WHEN status IN ('done', 'dead', 'cancelled') THEN commit_time + interval '1 s' END
FROM (SELECT *, split_part(idempotency_key, '/', 3)::int8 AS g FROM ev) e,
     LATERAL (SELECT CASE WHEN g > %(n)s - 100 THEN 'running' WHEN g > %(n)s - 1100 THEN 'pending'
                          WHEN g %% 1000 = 0 THEN 'dead' WHEN g %% 100 = 1 THEN 'cancelled'
                          ELSE 'done' END AS status) s
""".replace("{w}", str(WORKFLOWS))

Conn = psycopg.Connection[tuple[Any, ...]]


def median_ms(action: Callable[[], object]) -> float:
    action()  # warm-up: the pages this reads are cached from here on, as on a busy server
    times = []
    for _ in range(5):
        began = time.perf_counter()
        action()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def fresh_schema(conn: Conn, version: int) -> None:
    """The state schema at ``version`` (migrations 1..version, as `listener init` of that version)."""
    conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    conn.execute(f"CREATE SCHEMA {SCHEMA}")
    conn.execute(f"SET search_path TO {SCHEMA}")
    conn.execute(queries.query("create_schema_migrations").compose(schema=psycopg.sql.Identifier(SCHEMA)))
    for migration in migrations.load_migrations()[:version]:
        conn.execute(migration.sql.encode())
        conn.execute(f"INSERT INTO schema_migrations VALUES ({migration.version}, '{migration.name}')")


def fill(conn: Conn, n: int) -> float:
    began = time.perf_counter()
    for lo in range(1, n + 1, FILL_ROWS):
        conn.execute(FILL, {"n": n, "lo": lo, "hi": min(n, lo + FILL_ROWS - 1)})
    conn.execute("VACUUM ANALYZE events, runs")
    return time.perf_counter() - began


def time_commands(conn: Conn, statement: str | None) -> dict[str, float]:
    """Milliseconds per command: with ``statement`` (version 10's) or this version's listener.ops.runs."""
    out = {}
    for label, statuses, workflow in COMMANDS:
        params = {"statuses": statuses, "workflow": workflow, "rule": None, "limit": 50}

        def listed(params: dict[str, Any] = params) -> object:
            if statement is not None:
                return conn.execute(statement, params).fetchall()
            return runs_ops.list_runs(
                conn, statuses=params["statuses"] or (), workflow=params["workflow"], limit=50
            )

        out[label] = median_ms(listed)
    # the runs of one event (`listener runs show ID`, `retry`): version 10's statement, or this one's
    key = conn.execute(
        "SELECT id FROM runs WHERE status = 'done' ORDER BY seq LIMIT 1 OFFSET 1000"
    ).fetchone()
    assert key is not None
    if statement is None:
        mine = queries.get("generations")
        out["runs of one event (runs show, retry)"] = median_ms(
            lambda: conn.execute(mine, {"key": key[0]}).fetchall()
        )
    else:
        old = "SELECT id, generation, status FROM runs WHERE event_key = %s ORDER BY generation"
        out["runs of one event (runs show, retry)"] = median_ms(
            lambda: conn.execute(old, [key[0]]).fetchall()
        )
    counted = {"statuses": ["pending", "running", "dead"]}
    count = queries.get("count_runs") if statement is None else COUNT_BEFORE
    out["listener status (runs per status)"] = median_ms(lambda: conn.execute(count, counted).fetchall())
    return out


async def prune_tenth(dsn: str, conn: Conn, n: int) -> tuple[int, float]:
    """One pass of the pruner with a keep that makes the oldest tenth of the runs due: (runs, seconds)."""
    keep_s = conn.execute(
        "SELECT extract(epoch FROM now() - finished_at) FROM runs WHERE status = 'done'"
        " ORDER BY finished_at LIMIT 1 OFFSET %s",
        [n // 10],
    ).fetchone()
    assert keep_s is not None
    store = await StateStore.connect(dsn, schema=SCHEMA, slot="bench")
    try:
        began = time.perf_counter()
        pruned = await prune_once(store, RunRetention(float(keep_s[0])))
        return pruned.runs, time.perf_counter() - began
    finally:
        await store.close()


# A run's life as the server sees it, in batches of WRITE_BATCH: inserted with its event (insert_events),
# claimed (status, attempt, lease: an update that is not HOT), heartbeat (lease_expires), completed.
WRITE_BATCH = 5000
LIFE = [
    FILL,
    "UPDATE runs SET status = 'running', attempt = attempt + 1, lease_owner = 'w', started_at = now(),"
    " lease_expires = now() + interval '30 s' WHERE seq BETWEEN %(lo)s AND %(hi)s",
    "UPDATE runs SET lease_expires = now() + interval '60 s' WHERE seq BETWEEN %(lo)s AND %(hi)s",
    "UPDATE runs SET status = 'done', finished_at = now(), lease_owner = NULL, lease_expires = NULL"
    " WHERE seq BETWEEN %(lo)s AND %(hi)s",
]


def write_cost(conn: Conn, rows: int, version: int) -> float:
    """Microseconds of server time per run over its life (LIFE) in a schema at ``version``."""
    fresh_schema(conn, version)
    conn.execute("CREATE INDEX bench_seq ON runs (seq)")  # the updates find their batch (both versions)
    began = time.perf_counter()
    for lo in range(1, rows + 1, WRITE_BATCH):
        hi = min(rows, lo + WRITE_BATCH - 1)
        for statement in LIFE:
            conn.execute(statement, {"n": rows + 2000, "lo": lo, "hi": hi})
    return (time.perf_counter() - began) / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000000,3000000", help="runs in the queue, comma-separated")
    parser.add_argument("--prune", action="store_true", help="then time one pass of the pruner")
    parser.add_argument(
        "--write-cost", type=int, metavar="ROWS", help="only: the life of ROWS runs, v10 vs v11"
    )
    parser.add_argument("--dsn", help="a scratch database (default: a fresh embedded PostgreSQL)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with benchlib.server(args.dsn, prefix="listener-bench-runs-") as (dsn, _):
        facts = benchlib.machine_facts(dsn)
        if args.write_cost:
            with psycopg.connect(dsn, autocommit=True) as conn:
                print(f"server time per run over its life ({args.write_cost:,} runs), v10 / v11:")
                for _ in range(3):
                    v10, v11 = write_cost(conn, args.write_cost, 10), write_cost(conn, args.write_cost, 11)
                    print(f"  {v10:6.1f} us / {v11:6.1f} us", flush=True)
            sizes = []
        for n in sizes:
            with psycopg.connect(dsn, autocommit=True) as conn:
                fresh_schema(conn, 10)
                filled = fill(conn, n)
                size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('runs'))").fetchone()
                print(
                    f"\n{n:,} runs (filled in {filled:.0f} s; runs: {size[0] if size else '?'})", flush=True
                )
                before = time_commands(conn, LIST_BEFORE)
                began = time.perf_counter()
                with conn.transaction():
                    conn.execute(migrations.load_migrations()[10].sql.encode())
                migrated = time.perf_counter() - began
                conn.execute("ANALYZE runs")
                after = time_commands(conn, None)
                print(f"  migration 11 (three indexes on runs): {migrated:.1f} s")
                print(f"  {'command':52s} {'v10 ms':>9s} {'v11 ms':>9s}")
                for label in before:
                    print(f"  {label:52s} {before[label]:9.1f} {after[label]:9.2f}", flush=True)
                if args.prune:
                    pruned, seconds = asyncio.run(prune_tenth(dsn, conn, n))
                    print(f"  pruner: {pruned:,} runs in {seconds:.1f} s ({pruned / seconds:,.0f} runs/s)")
                    conn.execute("VACUUM ANALYZE events, runs")
                    after_prune = time_commands(conn, None)["listener runs"]
                    print(f"  listener runs after the prune and a VACUUM: {after_prune:.2f} ms")
    print("\nmachine:", ", ".join(f"{k} {v}" for k, v in facts.items()))


if __name__ == "__main__":
    main()
