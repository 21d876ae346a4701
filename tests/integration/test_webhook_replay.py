"""A webhook's kept requests (`keep:`) and `listener replay --webhook`: every verified request is kept,
durable before its 200 (matched by a rule or not), without credentials; a replay evaluates the current
rules on them as the live handler does, inserting only new keys (or, with --rerun, a new generation);
requests older than `keep:` are forgotten."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from standardwebhooks.webhooks import Webhook

from tests.support import cli, http_service, write_config

Conn = psycopg.Connection[tuple[object, ...]]
SECRET = "whsec_" + base64.b64encode(b"replay-test-key-of-32-bytes-ok!!").decode()
WORKFLOW = "listener_examples.tickets:triage"
WEBHOOKS = [
    {"name": "svix", "path": "/hooks/svix", "verify": "standard", "secret_env": "T_SECRET", "keep": "1h"}
]
PAID = {"name": "paid", "webhook": "svix", "when": "body->>'type' = 'invoice.paid'", "workflow": WORKFLOW}
CREATED = {
    "name": "created",
    "webhook": "svix",
    "when": "body->>'type' = 'invoice.created'",
    "workflow": WORKFLOW,
}


def post(base: str, payload: dict[str, Any], msg_id: str) -> int:
    body = json.dumps(payload).encode()
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(msg_id, now, body),
        "authorization": "Bearer secret-token",
    }
    request = urllib.request.Request(f"{base}/hooks/svix?page=2", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return int(answer.status)


@contextmanager
def service(dsn: str, path: Path, log: Path) -> Iterator[str]:
    env = {**os.environ, "LISTENER_DSN": dsn, "T_SECRET": SECRET}
    with http_service(["run", "--no-workers", "-c", str(path)], env, log) as (process, base):
        deadline = time.monotonic() + 60
        ready = False
        while not ready:  # 503 (an HTTPError) until ingest streams
            try:
                ready = urllib.request.urlopen(f"{base}/readyz", timeout=10).status == 200
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        yield base
        process.terminate()
        assert process.wait(60) == 0, log.read_text()


def events(sql: Conn) -> dict[str, Any]:
    rows = sql.execute("SELECT idempotency_key, payload FROM listener.events ORDER BY 1").fetchall()
    return {str(key): payload for key, payload in rows}


def test_kept_requests_are_replayed_through_the_current_rules_once(sql: Conn, tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    write_config(path, [PAID], http={"listen": "127.0.0.1:0"}, webhooks=WEBHOOKS)
    with service(sql.info.dsn, path, tmp_path / "run.log") as base:
        assert post(base, {"type": "invoice.paid", "amount": 12.50}, "msg_a") == 200
        assert post(base, {"type": "invoice.created", "amount": 1e3}, "msg_b") == 200  # no rule: kept
        assert post(base, {"type": "invoice.created", "amount": 7}, "msg_b") == 200  # redelivered
    kept = sql.execute(
        "SELECT delivery_id, method, path, query, headers, body FROM listener.webhook_requests ORDER BY 1"
    ).fetchall()
    assert [row[0] for row in kept] == ["msg_a", "msg_b"]
    _, method, where, query, headers, body = kept[1]
    assert (method, where, query) == ("POST", "/hooks/svix", {"page": "2"})
    assert "authorization" not in headers and headers["webhook-id"] == "msg_b"  # type: ignore[operator,index]
    assert body == '{"type": "invoice.created", "amount": 1000.0}'  # the first delivery, as sent
    live = events(sql)
    assert list(live) == ["paid/svix/msg_a/0"]

    # a new rule for what was received before it: replay makes its events, and only those
    write_config(path, [PAID, CREATED], http={"listen": "127.0.0.1:0"}, webhooks=WEBHOOKS)
    dry = cli(sql.info.dsn, path, "replay", "--webhook", "svix", "--since", "1h", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    counts = json.loads(dry.stdout)["rules"]
    assert (counts["paid"]["events"], counts["paid"]["new"], counts["created"]["new"]) == (1, 0, 1)
    assert list(events(sql)) == ["paid/svix/msg_a/0"]  # a dry run writes nothing
    done = cli(sql.info.dsn, path, "replay", "--webhook", "svix", "--since", "1h")
    assert done.exit_code == 0, done.output
    assert "1 new event(s)" in done.stdout
    replayed = events(sql)
    assert list(replayed) == ["created/svix/msg_b/0", "paid/svix/msg_a/0"]
    assert replayed["paid/svix/msg_a/0"] == live["paid/svix/msg_a/0"]
    created = replayed["created/svix/msg_b/0"]
    assert created["data"] == {"type": "invoice.created", "amount": 1000.0}
    assert created["request"]["delivery_id"] == "msg_b" and created["request"]["query"] == {"page": "2"}
    again = cli(sql.info.dsn, path, "replay", "--webhook", "svix", "--since", "1h")
    assert again.exit_code == 0 and "0 new event(s)" in again.stdout, again.output

    # --rerun: one new run of each of the rule's events, also of one that exists
    rerun = cli(
        sql.info.dsn, path, "replay", "--webhook", "svix", "--since", "1h", "--rule", "paid", "--rerun"
    )
    assert rerun.exit_code == 0, rerun.output
    runs = sql.execute(
        "SELECT id FROM listener.runs WHERE event_key = 'paid/svix/msg_a/0' ORDER BY 1"
    ).fetchall()
    assert runs == [("paid/svix/msg_a/0",), ("paid/svix/msg_a/0#1",)]


def test_replay_refusals_say_what_to_do(sql: Conn, tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    unkept = [{**WEBHOOKS[0], "keep": None}]
    write_config(
        path, [PAID], http={"listen": "127.0.0.1:0"}, webhooks=[{k: v for k, v in unkept[0].items() if v}]
    )
    result = cli(sql.info.dsn, path, "replay", "--webhook", "svix", "--since", "1h")
    assert result.exit_code == 2 and "keeps no requests" in result.output and "keep: 7d" in result.output
    result = cli(sql.info.dsn, path, "replay", "--webhook", "svx", "--since", "1h")
    assert result.exit_code == 2 and "no webhook named 'svx'" in result.output and "'svix'" in result.output
    write_config(path, [PAID], http={"listen": "127.0.0.1:0"}, webhooks=WEBHOOKS)
    result = cli(sql.info.dsn, path, "replay", "--webhook", "svix", "--since", "1h", "--rerun")
    assert result.exit_code == 2 and "--rerun needs --rule" in result.output


def test_requests_older_than_keep_are_forgotten(sql: Conn, tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    write_config(path, [PAID], http={"listen": "127.0.0.1:0"}, webhooks=WEBHOOKS)
    old = datetime.now(UTC) - timedelta(hours=2)
    for n, at in enumerate([old, datetime.now(UTC)]):
        sql.execute(
            "INSERT INTO listener.webhook_requests"
            " VALUES ('svix', %s, %s, 'POST', '/hooks/svix', '{}', '{}', '{}')",
            [f"m{n}", at],
        )
    with service(sql.info.dsn, path, tmp_path / "run.log"):
        deadline = time.monotonic() + 30
        while sql.execute("SELECT count(*) FROM listener.webhook_requests").fetchone() != (1,):
            assert time.monotonic() < deadline, "the old request was not forgotten"
            time.sleep(0.1)
    assert sql.execute("SELECT delivery_id FROM listener.webhook_requests").fetchall() == [("m1",)]
