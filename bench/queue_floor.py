"""What one queue row costs the server, with no Python in the loop.

Inserts N rows in 5,000-row statements (``INSERT ... SELECT FROM generate_series``) into the real
``listener.events`` table and into leaner shapes, on a fresh embedded PostgreSQL 18 with default durable
settings, and prints microseconds per row.  It bounds what any ingest design that stores one row per
event can reach.

    python bench/queue_floor.py [--rows 500000] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import psycopg

from listener.queue import migrations

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

BATCH = 5000
PAYLOAD = (
    """'{"new":{"id":' || g || ',"account":' || (g %% 1000) || ',"amount":"' || g || '.25","note":"note '"""
    """ || g || '","created_at":"2026-11-24 05:00:00+00"},"old":null,"unchanged_toast":[]}'"""
)
KEY = "'rule/0/C995AC8/' || g"
EVENTS = (
    "WITH ev AS (INSERT INTO listener.events (idempotency_key, source, rule, workflow, op, table_name, lsn,"
    " commit_lsn, xid, commit_time, payload)"
    f" SELECT {KEY}, 'cdc', 'rule', 'm:f', 'insert', 'public.bench_rows', '0/C995AC8', '0/C995AC8', 1234,"
    f" now(), ({PAYLOAD})::jsonb FROM generate_series(%s::int, %s::int) g"
    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key, workflow)"
    " INSERT INTO listener.runs (id, event_key, workflow)"
    " SELECT idempotency_key, idempotency_key, workflow FROM ev"
)
VARIANTS: list[tuple[str, str | None, str]] = [
    ("listener.events + its run (3 indexes in all, ON CONFLICT)", None, EVENTS),
    (
        "(key text PRIMARY KEY, payload json)",
        "CREATE TABLE v (k text PRIMARY KEY, p json NOT NULL)",
        "::json",
    ),
    (
        "(key text PRIMARY KEY, payload jsonb)",
        "CREATE TABLE v (k text PRIMARY KEY, p jsonb NOT NULL)",
        "::jsonb",
    ),
    ("(key text PRIMARY KEY, payload text)", "CREATE TABLE v (k text PRIMARY KEY, p text NOT NULL)", ""),
    ("(key text, payload jsonb), no index", "CREATE TABLE v (k text NOT NULL, p jsonb NOT NULL)", "::jsonb"),
    ("(key text, payload text), no index", "CREATE TABLE v (k text NOT NULL, p text NOT NULL)", ""),
]


def measure(dsn: str, rows: int) -> list[tuple[str, float]]:
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrations.migrate(conn, "listener")
        for name, ddl, tail in VARIANTS:
            if ddl is None:
                conn.execute("TRUNCATE listener.events, listener.runs")
                statement = tail
            else:
                conn.execute("DROP TABLE IF EXISTS v")
                conn.execute(ddl)
                select = f"SELECT {KEY}, ({PAYLOAD}){tail} FROM generate_series(%s::int, %s::int) g"
                statement = f"INSERT INTO v {select}"
            began = time.perf_counter()
            for start in range(1, rows + 1, BATCH):
                conn.execute(statement.encode(), [start, min(start + BATCH - 1, rows)])
            out.append((name, (time.perf_counter() - began) / rows * 1e6))
        conn.execute("DROP TABLE IF EXISTS v")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--dsn", help="a scratch database (default: a fresh embedded PostgreSQL)")
    args = parser.parse_args()
    with benchlib.server(args.dsn, prefix="listener-bench-floor-") as (dsn, _):
        results = measure(dsn, args.rows)
    print(f"server cost of one queue row ({args.rows:,} rows, {BATCH:,} per statement)")
    for name, us in results:
        print(f"  {name:52s} {us:5.2f} us/row")
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}, python {platform.python_version()}")


if __name__ == "__main__":
    main()
