"""`listener run` with ``http:``: the server starts and stops with the service, says where it listens in
one line, reports readiness once ingest streams, and a port in use stops the service before anything
starts, with one error line and the fix."""

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
from pathlib import Path

import psycopg

from tests.support import http_service, write_config

Conn = psycopg.Connection[tuple[object, ...]]
ROOT = Path(__file__).parents[2]
RULE = {"name": "live", "table": "items", "on": ["insert"], "workflow": "listener_examples.tickets:triage"}
WAIT_S = 60.0
LISTENING = re.compile(r"HTTP server listening on (http://127\.0\.0\.1:\d+) \(/healthz, /readyz, /metrics\)")


def get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as answer:
        return answer.code, json.loads(answer.read())


def test_listener_run_serves_health_and_readiness_and_stops_cleanly(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    path = tmp_path / "listener.yaml"
    write_config(path, [RULE], http={"listen": "127.0.0.1:0"}, worker={"processes": 0})
    log = tmp_path / "run.log"
    env = {**os.environ, "LISTENER_DSN": dsn}
    with http_service(["run", "-c", str(path)], env, log) as (run, base):
        deadline = time.monotonic() + WAIT_S
        assert get(f"{base}/healthz") == (200, {"status": "ok"})
        while (answer := get(f"{base}/readyz"))[0] != 200:  # ready once ingest streams
            assert answer[0] == 503 and time.monotonic() < deadline, answer
            time.sleep(0.05)
        assert answer == (200, {"status": "ready"})
        # the server is not restarted by a reload: changing it is refused, and it serves on
        write_config(path, [RULE], http={"listen": "127.0.0.1:1"}, worker={"processes": 0})
        reload = subprocess.run(
            [sys.executable, "-m", "listener", "reload", "-c", str(path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
        assert reload.returncode == 2 and "reload cannot change `http:`" in reload.stderr, reload.stderr
        assert get(f"{base}/healthz") == (200, {"status": "ok"})
        run.send_signal(signal.SIGTERM)
        assert run.wait(WAIT_S) == 0, log.read_text()
    text = log.read_text()
    assert len(LISTENING.findall(text)) == 1 and "Traceback" not in text, text
    # the startup line, shown without -v: leader or standby, what is watched, where, and the HTTP address
    startup = [line for line in text.splitlines() if " INFO listener.startup: " in line]
    assert (
        len(startup) == 1 and "listener run: leader of slot 'listener_test' (epoch 1); watching" in startup[0]
    )
    assert f"HTTP on {base}" in startup[0], startup
    port = int(base.rpartition(":")[2])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # the port is let go


def test_a_port_in_use_stops_listener_run_before_it_starts(dsn: str, sql: Conn, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = tmp_path / "listener.yaml"
        write_config(path, [RULE], http={"listen": f"127.0.0.1:{port}"})
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "listener", "run", "-c", str(path)],
            cwd=ROOT,
            env={**os.environ, "LISTENER_DSN": dsn},
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {path}:4: http.listen '127.0.0.1:{port}': the address is already in use"], (
        done.stderr
    )
    assert "fix:" in done.stderr and "Traceback" not in done.stderr
    # nothing was set up: the table of the rule is not published, no slot was made
    assert sql.execute(
        "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
    ).fetchone() == (0,)
    assert time.monotonic() - started < WAIT_S
