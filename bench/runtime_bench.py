"""Benchmark: the durable runtime -- pickup latency, no-op throughput against PgQueuer and Procrastinate,
and memoized two-step workflows (not a test).

(a) ``latency``: the real pipeline.  ``listener run`` (ingest + in-process workers, a separate process)
    watches ``bench_latency``; one rule starts ``bench_workflows:record_latency`` on insert, which notes
    the wall clock at its start.  A writer commits single-row transactions at ``--rate`` rows/s (paced
    on a monotonic schedule: a late write is not followed by a longer sleep) for ``--duration`` seconds.
    Latency = workflow start - the source transaction's commit timestamp (from the server's commit
    record, on the same machine's clock); also shown from the moment the writer's COMMIT returned.
    The rows written during the first ``--warmup`` seconds are dropped.  The server's own timestamps
    split it into: commit -> ingest's transaction began (events.created_at), -> the claim
    (runs.started_at), -> the workflow function started.
(b) ``throughput``: ``--jobs`` no-op jobs enqueued first (listener: events + runs exactly as ingest makes
    them, in ``INSERT ... SELECT generate_series`` batches; PgQueuer and Procrastinate: their own batch
    enqueue APIs), then 1 and 2 worker processes started with each system's own CLI, timed from the spawn
    until the last job is done (polled every 20 ms).  Every system gets its own fresh database on the
    same server, enqueued, ANALYZEd and CHECKPOINTed before its workers start.  Also shown: when the
    first job was done (process start, imports, connect, first claim) and the rate between 10% and 90%
    done (steady state), CPU time of the worker processes and of the server's processes.  PgQueuer runs
    as ``pgq run`` does, on uvloop (a dependency of pgqueuer), as listener runs; two more rows can be
    asked for with ``--systems``: ``pgqueuer-asyncio`` and ``listener-asyncio`` (each on asyncio's default
    loop instead, to measure what the loop is worth).
(c) ``steps``: ``--step-runs`` two-step workflows (a memoized no-op step returning a small dict, then a
    step whose insert commits with its record through ``ctx.transaction()``), 1 worker process.

PgQueuer and Procrastinate are benchmark-only, not project dependencies::

    pip install pgqueuer procrastinate

Without them (b) runs listener alone and says so.  Run from the repository root (venv active)::

    python bench/runtime_bench.py all                  # everything, fresh embedded PostgreSQL
    python bench/runtime_bench.py latency --rate 200 --duration 20
    python bench/runtime_bench.py throughput --jobs 20000 --processes 1,2 --concurrency 16
    python bench/runtime_bench.py steps --step-runs 10000
    python bench/runtime_bench.py throughput \\
        --systems listener,pgqueuer,procrastinate,listener-asyncio,pgqueuer-asyncio
    python bench/runtime_bench.py throughput --systems listener \\
        --worker-prefix "py-spy record -r 250 -f speedscope -o /tmp/worker{i}.json --"

Without ``--dsn`` a fresh embedded PostgreSQL runs in a temporary directory with its default, durable
settings (fsync and synchronous_commit on).  With ``--dsn`` give a scratch server and a role that may
create databases: every part creates its own ``bench_*`` databases and drops them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import listener
from listener.pg.conninfo import asyncpg_params
from listener.queue import migrations

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import bench_workflows  # noqa: E402
import benchlib  # noqa: E402  (bench/ is not a package)

SCHEMA = "listener"  # the default state schema: each system has a database of its own
ENQUEUE_BATCH = 5000
COMPETITOR_BATCH = 1000
POLL_S = 0.02
INSTALL_HINT = "pip install pgqueuer procrastinate   (benchmark only: not project dependencies)"
SYSTEMS = ("listener", "pgqueuer", "procrastinate")  # the default comparison
# also: "listener-asyncio" and "pgqueuer-asyncio": each on asyncio's default loop instead of the uvloop that
# `listener` and `pgq run` use
ALL_SYSTEMS = (*SYSTEMS, "listener-asyncio", "pgqueuer-asyncio")

ENQUEUE_LISTENER = f"""
WITH ev AS (
    INSERT INTO {SCHEMA}.events (idempotency_key, source, rule, workflow, op, table_name, payload)
    SELECT 'bench/' || g, 'bench', 'bench', %(workflow)s, 'insert', 'public.bench',
           jsonb_build_object('new', jsonb_build_object('id', g), 'old', NULL, 'unchanged_toast', '[]'::jsonb)
    FROM generate_series(%(first)s::int, %(last)s::int) AS g
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING idempotency_key, workflow
)
INSERT INTO {SCHEMA}.runs (id, event_key, workflow) SELECT idempotency_key, idempotency_key, workflow FROM ev
"""

# -------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Drain:
    system: str
    processes: int
    concurrency: str
    jobs: int
    enqueue_s: float
    seconds: float  # spawn of the worker processes -> every job done
    first_done_s: float  # spawn -> the first job done
    steady_per_s: float  # between 10% and 90% done
    worker_cpu_s: float  # from the first job done to the last (process start and imports excluded)
    server_cpu_s: float | None
    command: str
    claims: int | None = None  # listener: claim transactions (distinct claim times in attempts)

    @property
    def per_s(self) -> float:
        return self.jobs / self.seconds


@dataclass
class Percentiles:
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


@dataclass
class Latency:
    target_rate: float
    achieved_rate: float
    duration_s: float
    warmup_s: float
    rows_written: int
    measured: int
    from_commit_ms: Percentiles
    from_ack_ms: Percentiles
    commit_to_ingest_tx_ms: Percentiles
    ingest_tx_to_claim_ms: Percentiles
    claim_to_start_ms: Percentiles
    writer_late_max_ms: float
    command: str
    goals: dict[str, bool] = field(default_factory=dict)


@dataclass
class Steps:
    runs: int
    processes: int
    concurrency: int
    seconds: float
    first_done_s: float
    steady_runs_per_s: float
    worker_cpu_s: float
    server_cpu_s: float | None
    command: str
    claims: int | None = None

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds


@dataclass
class Report:
    machine: dict[str, Any]
    command: str
    latency: Latency | None = None
    throughput: list[Drain] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    steps: Steps | None = None
    goals: dict[str, bool] = field(default_factory=dict)


# -------------------------------------------------------------------------------------------------------
# Server, databases, processes


def machine_facts(dsn: str) -> dict[str, Any]:
    packages = {}
    for name in ("asyncpg", "psycopg", "pgqueuer", "procrastinate", "uvloop"):
        with contextlib.suppress(Exception):
            packages[name] = importlib.metadata.version(name)
    return {
        "listener": listener_source(),
        **benchlib.machine_facts(dsn, ("fsync", "synchronous_commit", "shared_buffers", "wal_level")),
        "packages": packages,
    }


def listener_source() -> str:
    """Which listener code runs (the workers inherit this process's PYTHONPATH): its path and git state."""
    path = Path(listener.__file__).resolve().parent
    try:
        described = subprocess.run(
            ["git", "-C", str(path), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        described = "not a git checkout"
    return f"{path} ({described})"


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[str]:
    global _POSTMASTER
    with benchlib.server(args.dsn, prefix="listener-bench-runtime-") as (dsn, data):
        if data is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                _POSTMASTER = int((data / "postmaster.pid").read_text().split()[0])
        try:
            yield dsn
        finally:
            _POSTMASTER = None


@contextlib.contextmanager
def scratch_database(admin_dsn: str, name: str, keep: bool = False) -> Iterator[str]:
    """A fresh database on the server, dropped afterwards (its replication slots first)."""
    ident = sql.Identifier(name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        _drop_database(conn, name)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        if not keep:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                _drop_database(conn, name)


def _drop_database(conn: psycopg.Connection[Any], name: str) -> None:
    for (slot,) in conn.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE database = %s", [name]
    ).fetchall():
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def checkpoint(dsn: str) -> None:
    """Start every drain with the same clean slate: no checkpoint I/O left over from the enqueue."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute("CHECKPOINT")
        except psycopg.Error as exc:
            print(f"  note: CHECKPOINT refused ({str(exc).strip()}); continuing", file=sys.stderr)


def child_env(dsn: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    env[bench_workflows.DSN_ENV] = dsn
    env.update(extra)
    return env


# The embedded server's postmaster: its process tree is the server (other servers on this machine, such
# as a test suite's, are not counted).  None with --dsn: then every local postgres process counts.
_POSTMASTER: int | None = None


def server_cpu() -> dict[int, float]:
    """CPU seconds so far of the server's processes (empty when the server is not visible here)."""
    out: dict[int, float] = {}
    procs: list[psutil.Process]
    if _POSTMASTER is not None:
        try:
            root = psutil.Process(_POSTMASTER)
            procs = [root, *root.children()]
        except psutil.Error:
            procs = []
    else:
        procs = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
    return out


def server_cpu_since(before: dict[int, float]) -> float | None:
    after = server_cpu()
    if not after:
        return None
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


class Workers:
    """Worker processes, each in its own session so a signal reaches a wrapper (py-spy) and its child."""

    def __init__(self, commands: list[list[str]], env: dict[str, str], log_dir: Path, label: str) -> None:
        self.logs = [log_dir / f"{label}-{i}.log" for i in range(len(commands))]
        self.procs: list[subprocess.Popen[bytes]] = []
        for command, log in zip(commands, self.logs, strict=True):
            with open(log, "wb") as out:
                # cwd: the log directory, so `python -m listener` imports the package this process
                # imported (PYTHONPATH / the installed one), not ./listener of wherever we were started
                self.procs.append(
                    subprocess.Popen(
                        command,
                        cwd=log_dir,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise SystemExit(f"worker exited early with code {proc.returncode}:\n{_tail(log)}")

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(proc.pid)
                for q in [p, *p.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        t = q.cpu_times()
                        total += t.user + t.system
        return total

    def stop(self, timeout: float = 60.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)  # every system here stops gracefully on SIGINT
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Timeline:
    seconds: float
    first_done_s: float
    steady_per_s: float
    worker_cpu_at_first_s: float  # the worker processes' CPU time when the first job was seen done


def wait_drained(
    dsn: str, remaining_sql: str, jobs: int, workers: Workers, began: float, timeout: float
) -> Timeline:
    """Poll how many jobs are left until none is; the clock started at ``began`` (the spawn)."""
    samples: list[tuple[float, int]] = []
    cpu_at_first: float | None = None
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(remaining_sql).fetchone()
            now = time.perf_counter() - began
            assert row is not None
            samples.append((now, jobs - int(row[0])))
            if cpu_at_first is None and row[0] < jobs:
                cpu_at_first = workers.cpu_seconds()
            if row[0] == 0:
                break
            workers.check_alive()
            if now > timeout:
                raise SystemExit(f"timed out after {timeout:.0f}s with {row[0]} of {jobs} jobs left")
            time.sleep(POLL_S)
    first = next(t for t, done in samples if done > 0)
    lo = next((t, d) for t, d in samples if d >= 0.1 * jobs)
    hi = next((t, d) for t, d in samples if d >= 0.9 * jobs)
    steady = (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else float("nan")
    assert cpu_at_first is not None
    return Timeline(samples[-1][0], first, steady, cpu_at_first)


# -------------------------------------------------------------------------------------------------------
# The three systems: prepare (schema + enqueue), worker command, "how many left", verification


def listener_command(on_asyncio: bool, dsn: str, config: Path, command: str) -> list[str]:
    args = ["--dsn", dsn, "-c", str(config), command]
    if on_asyncio:
        return [sys.executable, str(BENCH_DIR / "bench_workflows.py"), "listener-asyncio", *args]
    return [sys.executable, "-m", "listener", *args]


def listener_config(path: Path, concurrency: int, extra: str = "") -> Path:
    path.write_text(f"state_schema: {SCHEMA}\nworker:\n  concurrency: {concurrency}\n{extra}rules: []\n")
    return path


def enqueue_listener(dsn: str, jobs: int, workflow: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrations.migrate(conn, SCHEMA)
        conn.execute(bench_workflows.EFFECTS_DDL)
        began = time.perf_counter()
        for first in range(1, jobs + 1, ENQUEUE_BATCH):
            last = min(first + ENQUEUE_BATCH - 1, jobs)
            conn.execute(ENQUEUE_LISTENER, {"workflow": workflow, "first": first, "last": last})
        seconds = time.perf_counter() - began
        conn.execute(
            sql.SQL("ANALYZE {}.events, {}.runs").format(sql.Identifier(SCHEMA), sql.Identifier(SCHEMA))
        )
    return seconds


LISTENER_REMAINING = f"SELECT count(*) FROM {SCHEMA}.runs WHERE status IN ('pending', 'running')"


def count_claims(dsn: str) -> int:
    """How many claim transactions the workers ran: an attempt's started_at is its claim's now()."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT worker, started_at FROM {SCHEMA}.attempts) AS c"
        ).fetchone()
    assert row is not None
    return int(row[0])


def verify_listener(dsn: str, jobs: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        counts: dict[str, int] = dict(
            conn.execute(f"SELECT status, count(*) FROM {SCHEMA}.runs GROUP BY status").fetchall()
        )
    if counts != {"done": jobs}:
        raise SystemExit(f"listener runs not all done: {counts}")


async def _enqueue_pgqueuer(dsn: str, jobs: int) -> float:
    pgqueuer = importlib.import_module("pgqueuer")
    conn = await asyncpg.connect(**asyncpg_params(dsn))
    try:
        queries = pgqueuer.Queries(pgqueuer.AsyncpgDriver(conn))
        await queries.install()  # `pgq install`: durable (logged) tables by default
        began = time.perf_counter()
        for first in range(1, jobs + 1, COMPETITOR_BATCH):
            ids = range(first, min(first + COMPETITOR_BATCH, jobs + 1))
            await queries.enqueue(
                [bench_workflows.NOOP_JOB] * len(ids), [str(i).encode() for i in ids], [0] * len(ids)
            )
        seconds = time.perf_counter() - began
        await conn.execute("ANALYZE pgqueuer")
        return seconds
    finally:
        await conn.close()


PGQUEUER_REMAINING = "SELECT count(*) FROM pgqueuer"  # a finished job is deleted (and logged)


def verify_pgqueuer(dsn: str, jobs: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM pgqueuer").fetchone()
        bad = conn.execute(
            "SELECT count(*) FROM pgqueuer_log WHERE status NOT IN ('queued', 'picked', 'successful')"
        ).fetchone()
        logged = conn.execute(
            "SELECT relpersistence FROM pg_class WHERE relname IN ('pgqueuer', 'pgqueuer_log')"
        ).fetchall()
    if left != (0,) or bad != (0,):
        raise SystemExit(f"pgqueuer: {left} jobs left, {bad} log rows not successful")
    if any(p != "p" for (p,) in logged):
        raise SystemExit("pgqueuer tables are not all logged (durable)")


async def _enqueue_procrastinate(dsn: str, jobs: int) -> float:
    app = bench_workflows.make_procrastinate_app(dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()  # `procrastinate schema --apply`
        task = app.tasks[bench_workflows.NOOP_JOB]
        began = time.perf_counter()
        for first in range(1, jobs + 1, COMPETITOR_BATCH):
            await task.batch_defer_async(
                *({"id": i} for i in range(first, min(first + COMPETITOR_BATCH, jobs + 1)))
            )
        seconds = time.perf_counter() - began
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE procrastinate_jobs")
    return float(seconds)


PROCRASTINATE_REMAINING = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"


def verify_procrastinate(dsn: str, jobs: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        counts: dict[str, int] = dict(
            conn.execute("SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1").fetchall()
        )
    if counts != {"succeeded": jobs}:
        raise SystemExit(f"procrastinate jobs not all succeeded: {counts}")


def competitor_missing(system: str) -> bool:
    return importlib.util.find_spec(system) is None


def drain(args: argparse.Namespace, admin_dsn: str, system: str, processes: int, log_dir: Path) -> Drain:
    jobs, conc = args.jobs, args.concurrency
    with scratch_database(admin_dsn, f"bench_{system}_p{processes}", keep=args.keep_dbs) as dsn:
        env = child_env(dsn)
        commands: list[list[str]]
        verify: Callable[[str, int], None]
        if system.startswith("listener"):
            enqueue_s = enqueue_listener(dsn, jobs, "bench_workflows:noop")
            config = listener_config(log_dir / f"{system}-p{processes}.yaml", conc)
            base = listener_command(system == "listener-asyncio", dsn, config, "worker")
            commands = [_prefixed(args, i) + base for i in range(processes)]
            remaining, verify, concurrency = LISTENER_REMAINING, verify_listener, f"{conc} runs"
        elif system.startswith("pgqueuer"):
            enqueue_s = asyncio.run(_enqueue_pgqueuer(dsn, jobs))
            loop = "asyncio" if system == "pgqueuer-asyncio" else "uvloop"
            base = [sys.executable, str(BENCH_DIR / "bench_workflows.py"), "pgqueuer"]
            base += ["--batch-size", str(args.pgq_batch_size), "--loop", loop]
            commands = [base] * processes
            remaining, verify = PGQUEUER_REMAINING, verify_pgqueuer
            concurrency = f"batch {args.pgq_batch_size}, no cap"
        else:
            enqueue_s = asyncio.run(_enqueue_procrastinate(dsn, jobs))
            base = [sys.executable, "-m", "procrastinate", "--app", "bench_workflows.procrastinate_app"]
            base += ["worker", "--concurrency", str(conc)]
            commands = [base] * processes
            remaining, verify, concurrency = PROCRASTINATE_REMAINING, verify_procrastinate, f"{conc} jobs"
        checkpoint(dsn)
        cpu_before = server_cpu()
        began = time.perf_counter()
        workers = Workers(commands, env, log_dir, f"{system}-p{processes}")
        try:
            timeline = wait_drained(dsn, remaining, jobs, workers, began, args.timeout)
            worker_cpu = workers.cpu_seconds() - timeline.worker_cpu_at_first_s
            server_s = server_cpu_since(cpu_before)
        finally:
            workers.stop()
        verify(dsn, jobs)
        claims = count_claims(dsn) if system.startswith("listener") else None
    return Drain(
        system=system,
        processes=processes,
        concurrency=concurrency,
        jobs=jobs,
        enqueue_s=enqueue_s,
        seconds=timeline.seconds,
        first_done_s=timeline.first_done_s,
        steady_per_s=timeline.steady_per_s,
        worker_cpu_s=worker_cpu,
        server_cpu_s=server_s,
        command=shlex.join(commands[0]),
        claims=claims,
    )


def _prefixed(args: argparse.Namespace, index: int) -> list[str]:
    if not args.worker_prefix:
        return []
    return shlex.split(args.worker_prefix.replace("{i}", str(index)))


def throughput(args: argparse.Namespace, admin_dsn: str, log_dir: Path, report: Report) -> None:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for system in systems:
        if system not in ALL_SYSTEMS:
            raise SystemExit(f"unknown system {system!r}: choose from {', '.join(ALL_SYSTEMS)}")
        module = {"listener-asyncio": "listener", "pgqueuer-asyncio": "pgqueuer"}.get(system, system)
        if module != "listener" and competitor_missing(module):
            report.skipped.append(system)
            print(f"  {system} is not installed: skipped.  To compare, run:\n    {INSTALL_HINT}", flush=True)
    systems = [s for s in systems if s not in report.skipped]
    for processes in args.process_counts:
        for system in systems:
            print(f"(b) {system}: {args.jobs:,} no-op jobs, {processes} worker process(es) ...", flush=True)
            result = drain(args, admin_dsn, system, processes, log_dir)
            print(
                f"    {result.seconds:.2f} s  {result.per_s:,.0f} jobs/s"
                f"  (first done {result.first_done_s:.2f} s, steady {result.steady_per_s:,.0f}/s)",
                flush=True,
            )
            report.throughput.append(result)


def steps(args: argparse.Namespace, admin_dsn: str, log_dir: Path, report: Report) -> None:
    runs, conc = args.step_runs, args.concurrency
    print(f"(c) {runs:,} two-step workflows, {args.step_processes} worker process(es) ...", flush=True)
    with scratch_database(admin_dsn, "bench_steps", keep=args.keep_dbs) as dsn:
        enqueue_listener(dsn, runs, "bench_workflows:two_steps")
        config = listener_config(log_dir / "steps.yaml", conc)
        base = [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config), "worker"]
        commands = [_prefixed(args, i) + base for i in range(args.step_processes)]
        checkpoint(dsn)
        cpu_before = server_cpu()
        began = time.perf_counter()
        workers = Workers(commands, child_env(dsn), log_dir, "steps")
        try:
            timeline = wait_drained(dsn, LISTENER_REMAINING, runs, workers, began, args.timeout)
            worker_cpu = workers.cpu_seconds() - timeline.worker_cpu_at_first_s
            server_s = server_cpu_since(cpu_before)
        finally:
            workers.stop()
        verify_listener(dsn, runs)
        with psycopg.connect(dsn, autocommit=True) as conn:
            n_steps = conn.execute(f"SELECT count(*) FROM {SCHEMA}.steps").fetchone()
            effects = conn.execute("SELECT count(*) FROM public.bench_effects").fetchone()
        if n_steps != (2 * runs,) or effects != (runs,):
            raise SystemExit(f"steps: {n_steps} step records and {effects} effects for {runs} runs")
        claims = count_claims(dsn)
    report.steps = Steps(
        runs=runs,
        processes=args.step_processes,
        concurrency=conc,
        seconds=timeline.seconds,
        first_done_s=timeline.first_done_s,
        steady_runs_per_s=timeline.steady_per_s,
        worker_cpu_s=worker_cpu,
        server_cpu_s=server_s,
        command=shlex.join(commands[0]),
        claims=claims,
    )
    print(f"    {timeline.seconds:.2f} s  {report.steps.runs_per_s:,.0f} runs/s", flush=True)


# -------------------------------------------------------------------------------------------------------
# (a) latency


LATENCY_TABLE = "bench_latency"
LATENCY_CONFIG = f"""\
slot: bench_latency
publication: bench_latency
state_schema: {SCHEMA}
rules:
  - name: bench_latency
    table: public.{LATENCY_TABLE}
    on: [insert]
    workflow: bench_workflows:record_latency
"""


def percentiles(values: list[float]) -> Percentiles:
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return Percentiles(rank(50), rank(95), rank(99), ordered[-1], sum(ordered) / len(ordered))


def _read_starts(path: Path) -> dict[int, tuple[float, float]]:
    out: dict[int, tuple[float, float]] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].lstrip("-").isdigit():
                out[int(parts[0])] = (float(parts[1]), float(parts[2]))
    return out


def latency(args: argparse.Namespace, admin_dsn: str, log_dir: Path, report: Report) -> None:
    rate, duration = args.rate, args.duration
    total = round(rate * duration)
    print(f"(a) pickup latency: {total:,} single-row commits at {rate:g}/s ...", flush=True)
    starts_file = log_dir / "latency-starts.txt"
    with scratch_database(admin_dsn, "bench_latency", keep=args.keep_dbs) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE public.{LATENCY_TABLE} (id bigint PRIMARY KEY, note text NOT NULL)")
        config = log_dir / "latency.yaml"
        config.write_text(LATENCY_CONFIG)
        command = [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config), "run"]
        env = child_env(dsn, **{bench_workflows.LATENCY_FILE_ENV: str(starts_file)})
        service = Workers([_prefixed(args, 0) + command], env, log_dir, "latency")
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                _wait_pipeline_ready(conn, starts_file, service)
                acks, late_max = _write_paced(conn, rate, total)
                deadline = time.monotonic() + 60
                while len([k for k in _read_starts(starts_file) if k > 0]) < total:
                    service.check_alive()
                    if time.monotonic() > deadline:
                        raise SystemExit("latency: not every row's workflow started within 60 s")
                    time.sleep(0.05)
        finally:
            service.stop()
        with psycopg.connect(dsn, autocommit=True) as conn:
            server_times = {
                int(r[0]): (float(r[1]), float(r[2]), float(r[3]))
                for r in conn.execute(
                    f"SELECT (e.payload->'new'->>'id')::bigint, extract(epoch FROM e.commit_time),"
                    f" extract(epoch FROM e.created_at), extract(epoch FROM r.started_at)"
                    f" FROM {SCHEMA}.events e JOIN {SCHEMA}.runs r ON r.event_key = e.idempotency_key"
                    f" WHERE (e.payload->'new'->>'id')::bigint > 0"
                ).fetchall()
            }
    starts = _read_starts(starts_file)
    first_sent = acks[1][0]
    kept = [i for i in range(1, total + 1) if acks[i][0] - first_sent >= args.warmup]
    from_commit = [(starts[i][1] - starts[i][0]) * 1000 for i in kept]
    from_ack = [(starts[i][1] - acks[i][1]) * 1000 for i in kept]
    to_ingest = [(server_times[i][1] - server_times[i][0]) * 1000 for i in kept]
    to_claim = [(server_times[i][2] - server_times[i][1]) * 1000 for i in kept]
    to_start = [(starts[i][1] - server_times[i][2]) * 1000 for i in kept]
    achieved = (total - 1) / (acks[total][0] - first_sent)
    result = Latency(
        target_rate=rate,
        achieved_rate=achieved,
        duration_s=acks[total][1] - first_sent,
        warmup_s=args.warmup,
        rows_written=total,
        measured=len(kept),
        from_commit_ms=percentiles(from_commit),
        from_ack_ms=percentiles(from_ack),
        commit_to_ingest_tx_ms=percentiles(to_ingest),
        ingest_tx_to_claim_ms=percentiles(to_claim),
        claim_to_start_ms=percentiles(to_start),
        writer_late_max_ms=late_max * 1000,
        command=shlex.join(command),
    )
    result.goals = {
        "p50 <= 5 ms": result.from_commit_ms.p50 <= 5.0,
        "p99 <= 25 ms": result.from_commit_ms.p99 <= 25.0,
    }
    report.latency = result
    p = result.from_commit_ms
    print(f"    p50 {p.p50:.2f} ms  p99 {p.p99:.2f} ms  (achieved {achieved:.1f} rows/s)", flush=True)


def _wait_pipeline_ready(conn: psycopg.Connection[Any], starts_file: Path, service: Workers) -> None:
    """Insert probe rows (negative ids) until one's workflow starts: the slot exists and workers run."""
    deadline = time.monotonic() + 120
    probe = 0
    while not any(k < 0 for k in _read_starts(starts_file)):
        service.check_alive()
        if time.monotonic() > deadline:
            raise SystemExit("latency: `listener run` did not start a workflow within 120 s")
        probe -= 1
        conn.execute(f"INSERT INTO public.{LATENCY_TABLE} (id, note) VALUES (%s, 'probe')", [probe])
        time.sleep(0.5)
    time.sleep(1.0)  # let the late probes drain


def _write_paced(
    conn: psycopg.Connection[Any], rate: float, total: int
) -> tuple[dict[int, tuple[float, float]], float]:
    """Row i is due at start + (i-1)/rate on the monotonic clock; returns id -> (sent, acked) wall clock."""
    insert = f"INSERT INTO public.{LATENCY_TABLE} (id, note) VALUES (%s, 'x')".encode()
    acks: dict[int, tuple[float, float]] = {}
    late_max = 0.0
    start = time.monotonic() + 0.1
    for i in range(1, total + 1):
        due = start + (i - 1) / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            late_max = max(late_max, now - due)
        sent = time.time()
        conn.execute(insert, [i])  # autocommit: one transaction per row
        acks[i] = (sent, time.time())
    return acks, late_max


# -------------------------------------------------------------------------------------------------------
# Report


def _ms(p: Percentiles) -> str:
    return f"{p.p50:7.2f} {p.p95:7.2f} {p.p99:7.2f} {p.max:7.2f} {p.mean:7.2f}"


def render(report: Report) -> str:
    out: list[str] = []
    m = report.machine
    pg = m["postgresql"].split(" on ")[0]
    out.append(f"listener    {m['listener']}")
    out.append(f"machine     {m['cores']} cores, {m['ram_gb']} GB RAM, {m['cpu_model']}")
    out.append(
        f"PostgreSQL  {pg} (fsync={m['fsync']}, synchronous_commit={m['synchronous_commit']},"
        f" shared_buffers={m['shared_buffers']})"
    )
    out.append(f"python      {m['python']} / {m['os']}")
    out.append("packages    " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()))
    out.append(f"command     {report.command}")
    lat = report.latency
    if lat is not None:
        out.append("")
        out.append(
            f"(a) pickup latency, source commit -> workflow start: {lat.rows_written:,} single-row commits,"
            f" target {lat.target_rate:g}/s, achieved {lat.achieved_rate:.1f}/s over {lat.duration_s:.1f} s;"
        )
        out.append(
            f"    {lat.measured:,} measured (rows written in the first {lat.warmup_s:g} s dropped:"
            " warm-up);"
            f" writer at most {lat.writer_late_max_ms:.1f} ms behind schedule"
        )
        out.append(f"    {'ms':38s}     p50     p95     p99     max    mean")
        out.append(f"    {'from the commit timestamp (server)':38s} {_ms(lat.from_commit_ms)}")
        out.append(f"    {'from COMMIT returned to the writer':38s} {_ms(lat.from_ack_ms)}")
        out.append(f"    {'  commit -> ingest transaction began':38s} {_ms(lat.commit_to_ingest_tx_ms)}")
        out.append(f"    {'  ingest transaction -> claim':38s} {_ms(lat.ingest_tx_to_claim_ms)}")
        out.append(f"    {'  claim -> workflow function starts':38s} {_ms(lat.claim_to_start_ms)}")
        out.append("    goal p50 <= 5 ms: " + ("met" if lat.goals["p50 <= 5 ms"] else "NOT met"))
        out.append("    goal p99 <= 25 ms: " + ("met" if lat.goals["p99 <= 25 ms"] else "NOT met"))
        out.append(f"    service: {lat.command}")
    if report.throughput or report.skipped:
        out.append("")
        jobs = report.throughput[0].jobs if report.throughput else 0
        out.append(
            f"(b) no-op throughput: {jobs:,} jobs enqueued first, timed from worker spawn to last done"
        )
        head = (
            f"    {'system':16s} {'procs':>5s} {'concurrency':>18s} {'jobs':>7s} {'seconds':>8s}"
            f" {'jobs/s':>8s}"
            f" {'1st done':>9s} {'steady/s':>9s} {'worker CPU':>11s} {'server CPU':>11s} {'enqueue/s':>10s}"
        )
        out.append(head)
        for d in report.throughput:
            server_ms = "-" if d.server_cpu_s is None else f"{d.server_cpu_s / d.jobs * 1000:.3f} ms"
            out.append(
                f"    {d.system:16s} {d.processes:5d} {d.concurrency:>18s} {d.jobs:7,d} {d.seconds:8.2f}"
                f" {d.per_s:8,.0f} {d.first_done_s:8.2f}s {d.steady_per_s:9,.0f}"
                f" {d.worker_cpu_s / d.jobs * 1000:8.3f} ms {server_ms:>11s} {d.jobs / d.enqueue_s:10,.0f}"
            )
        out.append(
            "    (CPU columns, per job: worker CPU from the first job done to the last, all processes;"
        )
        out.append("     server CPU: the server's processes during the drain, the bench's poll included)")
        for d in report.throughput:
            if d.claims:
                out.append(
                    f"    {d.system} p{d.processes}: {d.claims:,} claim transactions,"
                    f" {d.jobs / d.claims:.2f} runs per claim"
                )
        for s in report.skipped:
            out.append(f"    {s}: not installed, skipped ({INSTALL_HINT})")
        for d in report.throughput:
            out.append(f"    {d.system} p{d.processes}: {d.command}")
        for key, ok in report.goals.items():
            out.append(f"    goal {key}: {'met' if ok else 'NOT met'}")
    st = report.steps
    if st is not None:
        out.append("")
        out.append(
            f"(c) two-step workflows (memoized no-op step + transactional insert step): {st.runs:,} runs,"
            f" {st.processes} worker process(es), concurrency {st.concurrency}"
        )
        out.append(
            f"    {st.seconds:.2f} s: {st.runs_per_s:,.0f} runs/s, {2 * st.runs_per_s:,.0f} steps/s"
            f" (steady {st.steady_runs_per_s:,.0f} runs/s; first done {st.first_done_s:.2f} s;"
            f" worker CPU {st.worker_cpu_s / st.runs * 1000:.2f} ms/run"
            + (
                ""
                if st.server_cpu_s is None
                else f", server CPU {st.server_cpu_s / st.runs * 1000:.2f} ms/run"
            )
            + ")"
        )
        if st.claims:
            out.append(f"    {st.claims:,} claim transactions, {st.runs / st.claims:.2f} runs per claim")
        out.append(f"    {st.command}")
    return "\n".join(out)


def throughput_goals(report: Report) -> None:
    for processes in sorted({d.processes for d in report.throughput}):
        ours = next(
            (d for d in report.throughput if d.system == "listener" and d.processes == processes), None
        )
        if ours is None:
            continue
        for d in report.throughput:
            if d.processes == processes and not d.system.startswith("listener"):
                report.goals[f"listener ahead of {d.system}, {processes} process(es)"] = d.per_s < ours.per_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("part", choices=["latency", "throughput", "steps", "all"])
    parser.add_argument("--dsn", help="a scratch server (default: a fresh embedded PostgreSQL)")
    parser.add_argument("--rate", type=float, default=200.0, help="(a) single-row commits per second")
    parser.add_argument("--duration", type=float, default=20.0, help="(a) seconds of writing")
    parser.add_argument("--warmup", type=float, default=1.0, help="(a) seconds of rows not measured")
    parser.add_argument("--jobs", type=int, default=20_000, help="(b) no-op jobs per system and round")
    parser.add_argument("--processes", default="1,2", help="(b) worker process counts, e.g. 1,2")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="(b) which systems, e.g. listener")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="listener worker.concurrency and procrastinate --concurrency",
    )
    parser.add_argument(
        "--pgq-batch-size", type=int, default=10, help="(b) pgq run --batch-size (its default)"
    )
    parser.add_argument("--step-runs", type=int, default=10_000, help="(c) two-step workflows")
    parser.add_argument("--step-processes", type=int, default=1, help="(c) worker processes")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for one drain")
    parser.add_argument(
        "--worker-prefix", metavar="CMD", help="wrap listener processes, e.g. 'py-spy record -o w{i}.svg --'"
    )
    parser.add_argument("--keep-dbs", action="store_true", help="do not drop the bench_* databases")
    parser.add_argument("--logs", metavar="DIR", help="keep worker logs and configs in DIR")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    args.process_counts = [int(p) for p in args.processes.split(",") if p.strip()]
    parts = ["latency", "throughput", "steps"] if args.part == "all" else [args.part]
    log_dir = (
        Path(args.logs).resolve() if args.logs else Path(tempfile.mkdtemp(prefix="listener-bench-logs-"))
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        with server(args) as admin_dsn:
            report = Report(machine=machine_facts(admin_dsn), command=shlex.join([sys.executable, *sys.argv]))
            if conninfo_to_dict(admin_dsn).get("host") not in (None, "127.0.0.1", "localhost", "::1"):
                print("note: a remote server: (a) compares its commit clock with ours", file=sys.stderr)
            if "latency" in parts:
                latency(args, admin_dsn, log_dir, report)
            if "throughput" in parts:
                throughput(args, admin_dsn, log_dir, report)
                throughput_goals(report)
            if "steps" in parts:
                steps(args, admin_dsn, log_dir, report)
    finally:
        if not args.logs:
            shutil.rmtree(log_dir, ignore_errors=True)
    print()
    print(render(report))
    if args.json:
        data = asdict(report)
        for d, row in zip(report.throughput, data["throughput"], strict=True):
            row["per_s"] = d.per_s
        if report.steps is not None:
            data["steps"]["runs_per_s"] = report.steps.runs_per_s
        print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
