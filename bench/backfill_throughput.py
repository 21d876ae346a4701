"""Benchmark: snapshot backfill against ``COPY table TO STDOUT`` of the same table (not a test).

Fills ``bench_backfill`` with ``--rows`` rows (the columns of bench/cdc_throughput.py), then measures:

(a) ``COPY bench_backfill TO STDOUT`` read with psycopg and thrown away (the server's fastest way out, a
    client costing nothing);
(b) ``listener backfill`` of a rule on that table, carried out by a running ingest (in this process):
    from recording the request to the moment its ``backfills`` row says ``done``, that is every chunk
    read between its watermarks, passed through the slot's stream and committed with its progress in the
    state database (as ``backfill_chunks`` of COPY text: the events are durable, expanded later);
(c) then the expander turning those chunks into events and runs (reported apart, like the CDC
    benchmark: work done at the workers' pace; ``expand_ahead`` is 1 during (b), so (b) does not
    include it).

Prints rows/s for each, the ratio b/a (goal >= 0.5) and the machine; fails if the queue does not end up
with exactly one event per row.

    python bench/backfill_throughput.py                 # 1,000,000 rows on a fresh embedded PostgreSQL
    python bench/backfill_throughput.py --rows 100000 --chunk-rows 50000

Without ``--dsn`` a fresh embedded PostgreSQL 18 runs in a temporary directory with its default, durable
settings.  With ``--dsn`` use a scratch database: the table, publication, slot and state schema are
dropped and made again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from listener import install as setup
from listener import supervise
from listener.ingest import Ingest
from listener.ingest.backfill_marks import OPEN
from listener.ops import backfill_requests as backfill
from listener.queue.store import StateStore
from listener.rules.config import Config, parse_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # bench/ is not a package: found through the path set above

TABLE = "bench_backfill"
SLOT = "bench_backfill"
SCHEMA = "listener_backfill_bench"
RULE = "bench_rows"
POLL_S = 0.01


def bench_config(chunk_rows: int) -> Config:
    return parse_config(
        f"""\
slot: {SLOT}
publication: {SLOT}
state_schema: {SCHEMA}
ingest:
  backfill_chunk_rows: {chunk_rows}
  expand_ahead: 1
rules:
  - name: {RULE}
    table: public.{TABLE}
    on: [insert, update, delete]
    workflow: listener_examples.onboarding:welcome
""",
        filename="<bench>",
    )


@dataclass
class Result:
    rows: int
    chunk_rows: int
    table_mb: float
    copy_s: float
    copy_rows_per_s: float
    copy_mb: float
    backfill_s: float
    backfill_rows_per_s: float
    ratio: float
    chunks: int
    expanded_during_backfill: int
    clock: dict[str, float]
    expand_s: float
    expand_rows_per_s: float
    events: int
    machine: dict[str, Any] = field(default_factory=dict)
    command: str = ""


def prepare(dsn: str, rows: int, config: Config) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
            [SLOT],
        )
        conn.execute(f"DROP PUBLICATION IF EXISTS {SLOT}")
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(
            f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, account int NOT NULL, amount numeric NOT NULL,"
            " note text NOT NULL, created_at timestamptz NOT NULL)"
        )
        conn.execute(
            f"INSERT INTO {TABLE} SELECT g, g %% 10000, round((g %% 100000) / 100.0, 2), md5(g::text),"
            " now() - (g %% 86400) * interval '1 s' FROM generate_series(1, %s) AS g",
            [rows],
        )
        conn.execute(f"VACUUM ANALYZE {TABLE}")
        conn.execute("CHECKPOINT")
        size = conn.execute("SELECT pg_total_relation_size(%s)", [TABLE]).fetchone()
    setup.init(config, dsn, dsn)
    return int(size[0]) / 2**20 if size else 0.0


def run_copy(dsn: str) -> tuple[float, int]:
    """(seconds, bytes) of COPY TO STDOUT read and dropped; the table is read once before, to warm up."""
    result = (0.0, 0)
    for _ in range(2):
        with psycopg.connect(dsn, autocommit=True) as conn:
            began, size = time.perf_counter(), 0
            with conn.cursor().copy(f"COPY {TABLE} TO STDOUT") as copy:
                for block in copy:
                    size += len(block)
            result = (time.perf_counter() - began, size)
    return result


async def run_backfill(dsn: str, config: Config) -> tuple[float, int, int, dict[str, float], float, int, int]:
    """(backfill seconds, chunks, expanded meanwhile, the task's clock, expand seconds, expanded, events)."""
    store = await StateStore.connect(dsn, schema=SCHEMA, slot=SLOT)
    ingest = Ingest.from_config(config, source_dsn=dsn, store=store)
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop))
    try:
        while not ingest.streaming.is_set():
            if task.done():
                task.result()
            await asyncio.sleep(POLL_S)
        with psycopg.connect(dsn, autocommit=True) as source, psycopg.connect(dsn, autocommit=True) as state:
            state.execute(f"SET search_path TO {SCHEMA}")
            request = backfill.plan(config, source, RULE, None)
            began = time.perf_counter()
            backfill_id = backfill.record(config, state, request)
        while True:
            status = await store.pool.fetchval("SELECT status FROM backfills WHERE id = $1", backfill_id)
            if status not in OPEN:
                break
            if task.done():
                task.result()
            await asyncio.sleep(POLL_S)
        backfill_s = time.perf_counter() - began
        if status != "done":
            raise SystemExit(f"backfill {backfill_id} ended {status}")
        chunks = int(await store.pool.fetchval("SELECT chunks FROM backfills WHERE id = $1", backfill_id))
        clock = asdict(ingest.backfills.clock)
        during = ingest.expander.stats.changes
        stop.set()
        await task
        expand_s, expanded = await benchlib.expand_all(dsn, store, ingest.types)
        events = int(await store.pool.fetchval("SELECT count(*) FROM events WHERE op = 'read'"))
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
    return backfill_s, chunks, during, clock, expand_s, expanded, events


def report(r: Result) -> str:
    m = r.machine
    goal = "met" if r.ratio >= 0.5 else "NOT met"
    pg = m["postgresql"].split(" on ")[0]
    lines = [
        ("rows", f"{r.rows:,} ({r.table_mb:.0f} MB with its index)"),
        ("(a) COPY TO STDOUT -> nothing", f"{r.copy_s:.2f} s  {r.copy_rows_per_s:,.0f} rows/s"),
        ("    bytes sent", f"{r.copy_mb:.0f} MB"),
        ("(b) backfill -> progress row done", f"{r.backfill_s:.2f} s  {r.backfill_rows_per_s:,.0f} rows/s"),
        ("    chunks (rows per chunk)", f"{r.chunks} ({r.chunk_rows:,})"),
        ("    expanded into events meanwhile", f"{r.expanded_during_backfill:,}"),
        ("    task: lock + snapshot + low mark", f"{r.clock['low_mark_s']:.2f} s"),
        ("    task: COPY into memory", f"{r.clock['copy_s']:.2f} s"),
        ("    task: high mark", f"{r.clock['high_mark_s']:.2f} s"),
        ("    task: waiting for chunks durable", f"{r.clock['waiting_s']:.2f} s"),
        ("(c) then: chunks -> events and runs", f"{r.expand_s:.2f} s  {r.expand_rows_per_s:,.0f} rows/s"),
        ("ratio b/a", f"{r.ratio:.3f}  (goal >= 0.5: {goal})"),
        ("events in queue", f"{r.events:,}"),
        ("machine", f"{m['cores']} cores, {m['ram_gb']} GB RAM, {m['cpu_model']}"),
        ("PostgreSQL", f"{pg} (fsync={m['fsync']}, synchronous_commit={m['synchronous_commit']})"),
        ("python / os", f"{m['python']} / {m['os']}"),
        ("command", r.command),
    ]  # fmt: skip
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the table")
    parser.add_argument("--chunk-rows", type=int, default=20_000, help="ingest.backfill_chunk_rows")
    parser.add_argument("--dsn", help="a scratch database (default: a fresh embedded PostgreSQL)")
    parser.add_argument("--keep", action="store_true", help="keep the embedded server's data directory")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = bench_config(args.chunk_rows)
    with benchlib.server(args.dsn, prefix="listener-bench-pg-", keep=args.keep) as (dsn, _):
        print(f"filling {TABLE} with {args.rows:,} rows ...", flush=True)
        table_mb = prepare(dsn, args.rows, config)
        print("(a) COPY TO STDOUT ...", flush=True)
        copy_s, copy_bytes = run_copy(dsn)
        print("(b) backfill, then (c) expansion ...", flush=True)
        b_s, chunks, during, clock, c_s, expanded, events = supervise.run(run_backfill(dsn, config))
        machine = benchlib.machine_facts(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:  # leave no slot pinning WAL behind
            conn.execute("SELECT pg_drop_replication_slot(%s)", [SLOT])
    if events != args.rows:
        raise SystemExit(f"LOST OR EXTRA EVENTS: {events:,} backfill events for {args.rows:,} rows")
    result = Result(
        rows=args.rows,
        chunk_rows=args.chunk_rows,
        table_mb=table_mb,
        copy_s=copy_s,
        copy_rows_per_s=args.rows / copy_s,
        copy_mb=copy_bytes / 2**20,
        backfill_s=b_s,
        backfill_rows_per_s=args.rows / b_s,
        ratio=copy_s / b_s,
        chunks=chunks,
        expanded_during_backfill=during,
        clock=clock,
        expand_s=c_s,
        expand_rows_per_s=expanded / max(c_s, 1e-9),
        events=events,
        machine=machine,
        command=shlex.join([sys.executable, *sys.argv]),
    )
    print()
    print(report(result))
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
