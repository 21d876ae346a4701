"""``GET /metrics`` of a real `listener run` (with a worker process beside it), parsed by prometheus-client's
own parser: what ingest wrote, what the workers of both processes ran (their counts summed), the slot and
the queue as read at scrape time; and every metric the Grafana dashboard graphs is one the service serves.
And ``/readyz`` is 503 while ingest lags more than ``http: ready_max_lag_s``."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from listener import metrics
from listener.queue.store import StateStore
from tests.support import http_service, write_config

Conn = psycopg.Connection[tuple[object, ...]]
ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "dashboards" / "listener.json"
PAUSE = "tests.sample_workflows:pause_step"
POISON = "tests.sample_workflows:poison"
HELD = "tests.sample_workflows:two_steps"
NOOP = "tests.sample_workflows:noop"
RULES: list[dict[str, object]] = [
    {"name": "live", "table": "items", "on": ["insert"], "workflow": PAUSE},
    {"name": "bad", "table": "bads", "on": ["insert"], "workflow": POISON},
    {"name": "held", "table": "helds", "on": ["insert"], "workflow": HELD},
    {"name": "hooked", "webhook": "hook", "workflow": PAUSE},
]
WAIT_S = 90.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str) -> Samples:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse(answer.read().decode())


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and wanted <= set(ls)]
    assert found, f"no sample {name}{labels}"
    return sum(found)


def wait(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def statuses(sql: Conn) -> dict[tuple[str, str], int]:
    """Runs by (workflow, status), but the schedule's."""
    rows = sql.execute(
        "SELECT workflow, status, count(*) FROM listener.runs WHERE workflow <> %s GROUP BY 1, 2", [NOOP]
    ).fetchall()
    return {(str(w), str(s)): int(str(n)) for w, s, n in rows}


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as answer:
        return int(answer.code)


def ready(base: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as answer:
        return answer.code, json.loads(answer.read())


def test_metrics_of_a_service_and_its_worker_process(dsn: str, sql: Conn, tmp_path: Path) -> None:
    # a limit on the WAL a slot may hold: the slot's distance from invalidation is served too
    sql.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'")
    sql.execute("SELECT pg_reload_conf()")
    try:
        served = serve_and_scrape(dsn, sql, tmp_path)
    finally:
        sql.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        sql.execute("SELECT pg_reload_conf()")
    graphed = dashboard_metrics()
    assert graphed, "the dashboard graphs nothing"
    missing = {name for name in graphed if not served_as(name, served)}
    assert not missing, f"the dashboard graphs metrics the service does not serve: {sorted(missing)}"


def serve_and_scrape(dsn: str, sql: Conn, tmp_path: Path) -> set[str]:
    """Run the service, check what /metrics says along the way; the names of the samples it served."""
    for table in ("items", "bads", "helds"):
        sql.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, text text)")
    sql.execute("CREATE TABLE effects (run_id text, summary text, step_key text)")
    path = tmp_path / "listener.yaml"
    write_config(
        path,
        RULES,
        http={"listen": "127.0.0.1:0"},
        webhooks=[{"name": "hook", "path": "/hooks/in", "verify": "none"}],
        schedules=[{"name": "tick", "every": "2s", "workflow": NOOP}],
        worker={"processes": 1, "concurrency": 1, "poll_interval_s": 0.2},
    )
    hold = tmp_path / "hold"
    env = {**os.environ, "LISTENER_DSN": dsn, "LISTENER_TEST_PAUSE_S": "0.3", "LISTENER_TEST_HOLD": str(hold)}
    with http_service(["run", "-c", str(path)], env, tmp_path / "run.log") as (run, base):
        wait(lambda: ready(base)[0] == 200, "/readyz 200")
        for i in range(8):  # one transaction each
            sql.execute("INSERT INTO items VALUES (%s, 'x')", [i])
        sql.execute("INSERT INTO bads VALUES (1, 'x')")
        assert post(f"{base}/hooks/in", b'{"n": 1}') == 200
        assert post(f"{base}/hooks/in", b'{"n": ') == 400
        wait(lambda: statuses(sql) == {(PAUSE, "done"): 9, (POISON, "dead"): 1}, "9 runs done, 1 dead")
        workers = sql.execute(
            "SELECT count(DISTINCT worker) FROM listener.attempts WHERE workflow = %s", [PAUSE]
        )
        assert workers.fetchone() == (2,)  # both processes ran some: /metrics sums them

        m = scrape(base)
        assert value(m, "listener_events_total", source="cdc", rule="live") == 8
        assert value(m, "listener_events_total", source="cdc", rule="bad") == 1
        assert value(m, "listener_events_total", source="webhook", rule="hooked") == 1
        assert value(m, "listener_webhook_requests_total", webhook="hook", code="200") == 1
        assert value(m, "listener_webhook_requests_total", webhook="hook", code="400") == 1
        assert value(m, "listener_ingest_batches_total", writer="stream") >= 2
        assert value(m, "listener_ingest_commit_to_durable_seconds_count") >= 1
        assert value(m, "listener_run_duration_seconds_count", workflow=PAUSE, outcome="done") == 9
        assert value(m, "listener_run_duration_seconds_sum", workflow=PAUSE) >= 9 * 0.3
        assert value(m, "listener_run_start_delay_seconds_count", workflow=PAUSE) == 9
        assert value(m, "listener_step_duration_seconds_count", workflow=PAUSE) == 9
        assert value(m, "listener_run_duration_seconds_count", workflow=POISON, outcome="failed") == 1
        assert value(m, "listener_run_duration_seconds_count", workflow=POISON, outcome="dead") == 1
        assert value(m, "listener_runs_dead_total", workflow=POISON) == 1
        # read at scrape time
        assert value(m, "listener_leader") == 1 and value(m, "listener_slot_active") == 1
        assert value(m, "listener_database_up", database="source") == 1
        assert value(m, "listener_database_up", database="state") == 1
        assert value(m, "listener_slot_retained_wal_bytes") >= 0
        assert value(m, "listener_checkpoint_lag_bytes") >= 0
        assert value(m, "listener_slot_confirmed_lag_bytes") >= 0
        assert value(m, "listener_slot_lost") == 0
        assert not [k for k in m if k[0] == "listener_queue_runs" and ("workflow", NOOP) not in k[1]]
        assert value(m, "listener_schedule_ticks_total", schedule="tick", outcome="fired") >= 1
        assert value(m, "process_resident_memory_bytes") > 0

        # runs held inside their workflow (one per process), the others waiting behind them
        hold.touch()
        for i in range(4):
            sql.execute("INSERT INTO helds VALUES (%s, 'x')", [i])
        wait(lambda: statuses(sql).get((HELD, "running")) == 2, "two held runs")
        time.sleep(1.1)  # a new reading (METRICS_MIN_INTERVAL_S), the oldest pending one second old
        m = scrape(base)
        assert value(m, "listener_queue_runs", workflow=HELD, state="running") == 2
        assert value(m, "listener_queue_runs", workflow=HELD, state="pending") == 2
        assert value(m, "listener_queue_oldest_pending_age_seconds", workflow=HELD) >= 1
        hold.unlink()
        wait(lambda: statuses(sql).get((HELD, "done")) == 4, "the held runs done")

        served = {name for name, _ in m} | {name for name, _ in scrape(base)}
        assert value(m, "listener_slot_wal_keep_bytes") == 1 << 30
        assert value(m, "listener_slot_safe_wal_bytes") > 0
        assert value(m, "listener_slot_near_invalidation") == 0
        run.send_signal(signal.SIGTERM)
        assert run.wait(WAIT_S) == 0
    return served


def dashboard_metrics() -> set[str]:
    """The metric names in the dashboard's PromQL expressions."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    return {name for expr in exprs for name in re.findall(r"\b(listener_[a-z_]+|process_[a-z_]+)\b", expr)}


def served_as(name: str, served: set[str]) -> bool:
    """Whether ``name`` is served (a histogram's or counter's series by their own names)."""
    return name in served or any(name == s.removesuffix("_total") for s in served)


def test_readyz_says_when_ingest_lags_more_than_allowed(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, text text)")
    path = tmp_path / "listener.yaml"
    rules = [{"name": "live", "table": "items", "on": ["insert"], "workflow": PAUSE}]
    write_config(
        path, rules, http={"listen": "127.0.0.1:0", "ready_max_lag_s": 0.000001}, worker={"processes": 0}
    )
    env = {**os.environ, "LISTENER_DSN": dsn, "LISTENER_TEST_PAUSE_S": "0"}
    with http_service(["run", "-c", str(path)], env, tmp_path / "run.log") as (run, base):
        wait(lambda: ready(base)[0] == 200, "/readyz 200 (no lag measured yet)")
        sql.execute("INSERT INTO items VALUES (1, 'x')")
        wait(lambda: ready(base)[0] == 503, "/readyz 503")
        status, body = ready(base)
        assert status == 503 and re.fullmatch(
            r"ingest lags \d+s behind the source \(more than http: ready_max_lag_s: 1e-06\)", body["reason"]
        ), body
        run.send_signal(signal.SIGTERM)
        assert run.wait(WAIT_S) == 0


async def test_a_source_that_does_not_answer_is_served_as_down_not_as_a_hung_scrape(dsn: str) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    store = await StateStore.connect(dsn, schema="listener", slot="metrics_test")
    scrape_ = metrics.Scrape(
        slot="metrics_test", source_dsn=f"host=127.0.0.1 port={port} dbname=x", pool=store.pool
    )
    try:
        started = time.monotonic()
        await scrape_.refresh()
        body, content_type = metrics.exposition(scrape_, None)
    finally:
        scrape_.close()
        await store.close()
    assert time.monotonic() - started < 10
    samples = parse(body.decode())
    assert value(samples, "listener_database_up", database="source") == 0
    assert value(samples, "listener_database_up", database="state") == 1
    assert not [name for name, _ in samples if name.startswith("listener_slot_")]
    assert content_type.startswith("text/plain")


def test_a_worker_on_its_own_serves_its_runs_and_the_queue(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, text text)")
    path = tmp_path / "listener.yaml"
    rules = [{"name": "live", "table": "items", "on": ["insert"], "workflow": PAUSE}]
    write_config(path, rules, worker={"processes": 0, "poll_interval_s": 0.2})
    env = {**os.environ, "LISTENER_DSN": dsn, "LISTENER_TEST_PAUSE_S": "0"}
    ingest_log = tmp_path / "run.log"
    with ingest_log.open("wb") as out:
        ingest = subprocess.Popen(
            [sys.executable, "-m", "listener", "run", "--no-workers", "-c", str(path)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        worker_args = ["worker", "-c", str(path), "--http", "127.0.0.1:0"]
        with http_service(worker_args, env, tmp_path / "worker.log") as (worker, base):
            assert ready(base) == (200, {"status": "ready"})
            wait(lambda: ingest_log.read_text().count("listener run: leader") == 1, "ingest streaming")
            for i in range(3):
                sql.execute("INSERT INTO items VALUES (%s, 'x')", [i])
            wait(lambda: statuses(sql) == {(PAUSE, "done"): 3}, "3 runs done")
            m = scrape(base)
            assert value(m, "listener_run_duration_seconds_count", workflow=PAUSE, outcome="done") == 3
            assert value(m, "listener_step_duration_seconds_count", workflow=PAUSE) == 3
            assert value(m, "listener_database_up", database="state") == 1
            assert not [name for name, _ in m if name.startswith(("listener_slot_", "listener_leader"))]
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(WAIT_S) == 0
    finally:
        ingest.send_signal(signal.SIGTERM)
        assert ingest.wait(WAIT_S) == 0, ingest_log.read_text()
