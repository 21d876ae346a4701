"""`listener --log-format json run`: every line of standard error is one JSON object with stable field
names, the startup line says what runs where, and routine events (a reload) are INFO, not WARNING."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from tests.support import SLOT, http_service, write_config

Conn = psycopg.Connection[tuple[object, ...]]
ROOT = Path(__file__).parents[2]
RULE = {"name": "live", "table": "items", "on": ["insert"], "workflow": "listener_examples.tickets:triage"}
WAIT_S = 60.0


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as answer:
            return bool(answer.status == 200)
    except urllib.error.HTTPError:
        return False


def test_json_logs_are_one_object_per_line_with_stable_fields(dsn: str, sql: Conn, tmp_path: Path) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    path = tmp_path / "listener.yaml"
    write_config(path, [RULE], http={"listen": "127.0.0.1:0"}, worker={"processes": 1})
    log = tmp_path / "run.log"
    env = {**os.environ, "LISTENER_DSN": dsn}
    with http_service(["--log-format", "json", "-v", "run", "-c", str(path)], env, log) as (run, base):
        deadline = time.monotonic() + WAIT_S
        while not ready(base):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        reload = subprocess.run(
            [sys.executable, "-m", "listener", "reload", "-c", str(path)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_S,
        )  # fmt: skip
        assert reload.returncode == 0, reload.stderr
        # the answer comes once the marker is written; the rules apply when it comes through the slot
        while "rules reloaded" not in log.read_text():
            assert time.monotonic() < deadline + WAIT_S, log.read_text()
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        assert run.wait(WAIT_S) == 0, log.read_text()
    lines: list[dict[str, Any]] = [json.loads(line) for line in log.read_text().splitlines()]  # each one
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines), lines
    by_logger = {line["logger"]: line for line in lines}
    startup = by_logger["listener.startup"]
    assert startup["message"].startswith(
        f"listener run: leader of slot {SLOT!r} (epoch 1); watching 1 rule(s): table public.items on "
    ), startup
    assert "workers in this process and 1 worker process(es); HTTP on http://127.0.0.1:" in startup["message"]
    assert startup["slot"] == SLOT and startup["level"] == "INFO"
    reloaded = [line for line in lines if line["message"].startswith("rules reloaded")]
    assert len(reloaded) == 1 and reloaded[0]["level"] == "INFO", reloaded  # routine: INFO, not WARNING
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", reloaded[0]["lsn"]) and reloaded[0]["slot"] == SLOT
    answered = [line for line in lines if line["message"].startswith("reload (request")]
    assert len(answered) == 1 and answered[0]["level"] == "INFO" and " ok " in answered[0]["message"]
    assert not [line for line in lines if line["level"] in ("ERROR", "CRITICAL")], lines
