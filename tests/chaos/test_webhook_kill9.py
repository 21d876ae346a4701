"""kill -9 `listener run` while providers POST webhooks: every request answered 2xx has its event, exactly
once; a request cut off gets its event, once, when the provider delivers it again."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from standardwebhooks.webhooks import Webhook

from tests.support import http_service, write_config

Conn = psycopg.Connection[tuple[object, ...]]
SECRET = "whsec_a2lsbC1uaW5lLXRlc3Qta2V5LW9mLTMyLWJ5dGVzIQ=="
WEBHOOKS = [{"name": "svix", "path": "/hooks/svix", "verify": "standard", "secret_env": "T_SECRET"}]
RULES = [{"name": "hook", "webhook": "svix", "workflow": "listener_examples.tickets:triage"}]
CLIENTS = 12
KILL_AFTER_S = 1.5


def deliver(base: str, n: int) -> int | None:
    """POST delivery ``n``; its status, or None when the connection failed (the service died)."""
    body = json.dumps({"type": "invoice.paid", "n": n}).encode()
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": f"msg_{n}",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(f"msg_{n}", now, body),
    }
    request = urllib.request.Request(f"{base}/hooks/svix", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as answer:
        return int(answer.code)
    except OSError:
        return None


def events_per_delivery(sql: Conn) -> dict[int, int]:
    rows = sql.execute(
        "SELECT (payload->'data'->>'n')::int, count(*) FROM listener.events WHERE source = 'webhook'"
        " GROUP BY 1"
    ).fetchall()
    return {int(str(n)): int(str(c)) for n, c in rows}


def test_kill9_under_webhook_load_loses_no_acknowledged_delivery(dsn: str, sql: Conn, tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    write_config(path, RULES, http={"listen": "127.0.0.1:0"}, webhooks=WEBHOOKS)
    env = {**os.environ, "LISTENER_DSN": dsn, "T_SECRET": SECRET}
    args = ["run", "--no-workers", "-c", str(path)]
    answers: dict[int, int | None] = {}

    def client(first: int, base: str) -> dict[int, int | None]:
        """Deliveries first, first + CLIENTS, ... until the service is gone."""
        mine: dict[int, int | None] = {}
        for n in range(first, 10**9, CLIENTS):
            mine[n] = deliver(base, n)
            if mine[n] is None:
                return mine
        return mine

    with http_service(args, env, tmp_path / "first.log") as (process, base):
        while deliver(base, -1) != 200:  # ready: ingest streams
            time.sleep(0.05)
        killer = threading.Timer(KILL_AFTER_S, os.kill, (process.pid, signal.SIGKILL))
        killer.start()
        with ThreadPoolExecutor(CLIENTS) as pool:
            for mine in pool.map(lambda c: client(c, base), range(CLIENTS)):
                answers.update(mine)
        killer.join()
        assert process.wait(30) == -signal.SIGKILL
    acknowledged = {n for n, status in answers.items() if status == 200}
    assert len(acknowledged) > 50 and None in answers.values(), answers  # killed in the middle of the load
    assert set(answers.values()) <= {200, 503, None}, answers
    stored = events_per_delivery(sql)
    assert all(stored.get(n) == 1 for n in acknowledged), {n: stored.get(n) for n in acknowledged}
    assert all(count == 1 for count in stored.values())
    # the providers deliver again, everything: each delivery has its one event
    with http_service(args, env, tmp_path / "second.log") as (process, base):
        while deliver(base, -1) != 200:
            time.sleep(0.05)
        with ThreadPoolExecutor(CLIENTS) as pool:
            again = list(pool.map(lambda n: deliver(base, n), sorted(answers)))
        process.terminate()
        assert process.wait(30) == 0
    assert again == [200] * len(answers)
    assert events_per_delivery(sql) == {n: 1 for n in [-1, *answers]}
