"""Webhooks end to end: `listener run` with ``webhooks:``, requests signed by the providers' own libraries
and sent over TCP by a real HTTP client.  What is answered 200 is durable at that moment, once per delivery;
what is refused (signature, timestamp, size, unparseable or unstorable bodies) enqueues nothing."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import stripe
from standardwebhooks.webhooks import Webhook

from tests.support import http_service, write_config

Conn = psycopg.Connection[tuple[object, ...]]
ROOT = Path(__file__).parents[2]
WAIT_S = 60.0
STANDARD_SECRET = "whsec_" + base64.b64encode(b"webhook-test-key-of-32-bytes-ok!").decode()
STRIPE_SECRET = "whsec_test_stripe"
WORKFLOW = "listener_examples.tickets:triage"
WEBHOOKS = [
    {
        "name": "svix",
        "path": "/hooks/svix",
        "verify": "standard",
        "secret_env": "T_STANDARD",
        "max_body": "200kB",
    },
    {"name": "stripe", "path": "/hooks/stripe", "verify": "stripe", "secret_env": "T_STRIPE"},
]
RULES: list[dict[str, Any]] = [
    {"name": "paid", "webhook": "svix", "when": "body->>'type' = 'invoice.paid'", "workflow": WORKFLOW},
    {"name": "charged", "webhook": "stripe", "workflow": WORKFLOW},
    {
        "name": "picked",
        "webhook": "svix",
        "when": "body->>'type' = 'invoice.picked'",
        "workflow": WORKFLOW,
        "key": "{body.data.customer}",
        "key_concurrency": 1,
        "payload": {"customer": "body.data.customer", "amount": "body.data.amount", "shop": "headers.x-shop"},
    },
]


@dataclass
class Service:
    base: str
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def service(dsn: str, sql: Conn, tmp_path: Path) -> Iterator[Service]:
    with start_service(dsn, tmp_path) as running:
        yield running


@contextmanager
def start_service(dsn: str, tmp_path: Path, **http: Any) -> Iterator[Service]:
    path = tmp_path / "listener.yaml"
    write_config(path, RULES, http={"listen": "127.0.0.1:0", **http}, webhooks=WEBHOOKS)
    log = tmp_path / "run.log"
    env = {**os.environ, "LISTENER_DSN": dsn, "T_STANDARD": STANDARD_SECRET, "T_STRIPE": STRIPE_SECRET}
    # no workers: the runs stay pending, to be counted
    with http_service(["run", "--no-workers", "-c", str(path)], env, log) as (process, base):
        deadline = time.monotonic() + WAIT_S
        while post(f"{base}/readyz", b"", {}, method="GET")[0] != 200:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield Service(base, process, log)
        process.terminate()
        process.wait(WAIT_S)
    assert process.returncode == 0, log.read_text()


def post(
    url: str, body: bytes, headers: dict[str, str], method: str = "POST"
) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(
        url, data=body if method == "POST" else None, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as answer:
        return answer.code, json.loads(answer.read()), dict(answer.headers)


def signed(
    body: bytes, msg_id: str, at: float | None = None, secret: str = STANDARD_SECRET
) -> dict[str, str]:
    when = datetime.fromtimestamp(at if at is not None else time.time(), UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body),
        "authorization": "Bearer not-to-be-stored",
    }


def stored(sql: Conn) -> list[tuple[Any, ...]]:
    return sql.execute(
        "SELECT e.idempotency_key, e.source, e.payload, r.status FROM listener.events e"
        " JOIN listener.runs r ON r.event_key = e.idempotency_key ORDER BY e.idempotency_key"
    ).fetchall()


def test_a_signed_delivery_is_durable_when_answered_and_once_however_often_it_comes(
    service: Service, sql: Conn
) -> None:
    body = json.dumps({"type": "invoice.paid", "data": {"amount": 1200, "customer": "cus_7"}}).encode()
    status, answer, _ = post(f"{service.base}/hooks/svix", body, signed(body, "msg_one"))
    assert (status, answer) == (200, {"status": "accepted", "events": 1, "delivery": "msg_one"})
    # durable when answered: read at once, no waiting
    [(key, source, payload, run_status)] = stored(sql)
    assert (key, source, run_status) == ("paid/svix/msg_one/0", "webhook", "pending")
    assert payload["data"] == {"type": "invoice.paid", "data": {"amount": 1200, "customer": "cus_7"}}
    request = payload["request"]
    assert (request["webhook"], request["delivery_id"], request["method"], request["path"]) == (
        "svix",
        "msg_one",
        "POST",
        "/hooks/svix",
    )
    assert "authorization" not in request["headers"] and request["headers"]["webhook-id"] == "msg_one"
    # the provider delivers it again (and again, signed anew): 200, nothing new
    for _ in range(3):
        status, answer, _ = post(f"{service.base}/hooks/svix", body, signed(body, "msg_one"))
        assert status == 200 and answer["events"] == 1
    assert len(stored(sql)) == 1
    # a delivery no rule wants: accepted, nothing stored
    other = json.dumps({"type": "invoice.created"}).encode()
    assert post(f"{service.base}/hooks/svix", other, signed(other, "msg_two"))[:2] == (
        200,
        {"status": "accepted", "events": 0, "delivery": "msg_two"},
    )
    assert len(stored(sql)) == 1


def test_a_rule_s_payload_and_key_pick_from_the_request(service: Service, sql: Conn) -> None:
    body = b'{"type": "invoice.picked", "data": {"customer": "cus_9", "amount": 12.50, "lines": [1, 2]}}'
    headers = {**signed(body, "msg_pick"), "x-shop": "shop-1"}
    status, answer, _ = post(f"{service.base}/hooks/svix", body, headers)
    assert (status, answer["events"]) == (200, 1)
    row = sql.execute(
        "SELECT e.payload, r.gated, r.key, r.key_limit FROM listener.events e"
        " JOIN listener.runs r ON r.event_key = e.idempotency_key WHERE e.rule = 'picked'"
    ).fetchone()
    assert row is not None
    payload, gated, key, key_limit = row
    assert payload["data"] == {"customer": "cus_9", "amount": 12.50, "shop": "shop-1"}  # type: ignore[index]
    assert payload["request"]["delivery_id"] == "msg_pick"  # type: ignore[index]
    assert (gated, key, key_limit) == (True, "picked:cus_9", 1)


def test_stripe_deliveries_are_keyed_by_the_event_id(service: Service, sql: Conn) -> None:
    body = json.dumps({"id": "evt_3PqR", "object": "event", "type": "charge.succeeded"})
    header = stripe.WebhookSignature.generate_signature_header(body, STRIPE_SECRET)
    headers = {"content-type": "application/json", "stripe-signature": header}
    for _ in range(2):
        status, answer, _ = post(f"{service.base}/hooks/stripe", body.encode(), headers)
        assert (status, answer["delivery"]) == (200, "evt_3PqR")
    assert [row[0] for row in stored(sql)] == ["charged/stripe/evt_3PqR/0"]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b'{"type": "invoice.paid"', 400, "is not JSON"),
        (b'{"type": "invoice.paid", "note": "\\u0000"}', 400, "NUL"),
        (b'{"type": "invoice.paid", "note": "\\ud800"}', 400, "surrogate"),
        (b'{"type": "invoice.paid", "n": 1e131072}', 400, "numeric range"),
        (b'{"type": "invoice.paid", "n": NaN}', 400, "not JSON"),
        (b'{"type": "invoice.paid", "note": "\xff"}', 400, "not UTF-8"),
        (b"[" * 100_000, 400, "nests too deeply"),
        (b'{"type": "invoice.paid", "pad": "' + b"x" * 250_000 + b'"}', 413, "larger than 200kB"),
    ],
)
def test_bodies_the_database_could_not_store_are_refused_and_enqueue_nothing(
    service: Service, sql: Conn, body: bytes, status: int, reason: str
) -> None:
    got, answer, _ = post(f"{service.base}/hooks/svix", body, signed(body, "msg_bad"))
    assert got == status and reason in answer["error"], answer
    assert stored(sql) == []
    # and the service is unharmed: a good delivery still goes through
    good = b'{"type": "invoice.paid"}'
    assert post(f"{service.base}/hooks/svix", good, signed(good, "msg_good"))[0] == 200
    assert len(stored(sql)) == 1


def test_signature_timestamp_method_and_path_refusals(service: Service, sql: Conn) -> None:
    body = b'{"type": "invoice.paid"}'
    wrong = "whsec_" + base64.b64encode(b"somebody-else-s-key-of-32-bytes!").decode()
    assert post(f"{service.base}/hooks/svix", body, signed(body, "m1", secret=wrong))[0] == 401
    unsigned = {"content-type": "application/json"}
    status, answer, _ = post(f"{service.base}/hooks/svix", body, unsigned)
    assert status == 401 and answer["error"].startswith("no webhook-id header")
    status, answer, _ = post(f"{service.base}/hooks/svix", body, signed(body, "m2", at=time.time() - 3600))
    assert status == 400 and "old" in answer["error"]
    status, _, headers = post(f"{service.base}/hooks/svix", b"", {}, method="GET")
    assert status == 405 and headers["allow"] == "POST"
    assert post(f"{service.base}/hooks/nothing", body, signed(body, "m3"))[0] == 404
    assert stored(sql) == []


def test_concurrent_deliveries_are_committed_together_and_each_answered(service: Service, sql: Conn) -> None:
    def deliver(n: int) -> int:
        body = json.dumps({"type": "invoice.paid", "n": n}).encode()
        return post(f"{service.base}/hooks/svix", body, signed(body, f"msg_{n}"))[0]

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(deliver, range(200)))
    assert statuses == [200] * 200
    assert len(stored(sql)) == 200
    batches = sql.execute(
        "SELECT count(DISTINCT xmin::text) FROM listener.events WHERE source = 'webhook'"
    ).fetchone()
    assert batches is not None and int(str(batches[0])) < 200  # group-committed: fewer transactions


def deliver(base: str, n: int) -> tuple[int, Any, dict[str, str]]:
    body = json.dumps({"type": "invoice.paid", "n": n}).encode()
    return post(f"{base}/hooks/svix", body, signed(body, f"msg_{n}"))


def test_over_max_backlog_new_events_are_answered_503_until_the_workers_catch_up(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    with start_service(dsn, tmp_path, max_backlog=3) as service:  # no workers: the runs wait
        base = service.base
        assert [deliver(base, n)[0] for n in range(4)] == [
            200
        ] * 4  # counted once a second: may pass a little
        deadline = time.monotonic() + WAIT_S
        while (answer := deliver(base, 100))[0] == 200:
            assert time.monotonic() < deadline, service.log.read_text()
            sql.execute("DELETE FROM listener.runs WHERE id = 'paid/svix/msg_100/0'")
            sql.execute("DELETE FROM listener.events WHERE idempotency_key = 'paid/svix/msg_100/0'")
            time.sleep(0.2)
        status, error, headers = answer
        assert status == 503 and headers["retry-after"] == "5" and "max_backlog" in error["error"], answer
        assert len(stored(sql)) == 4  # refused: nothing stored
        other = json.dumps({"type": "invoice.created"}).encode()  # no rule wants it: still accepted
        assert post(f"{base}/hooks/svix", other, signed(other, "msg_other"))[0] == 200
        sql.execute("UPDATE listener.runs SET status = 'done'")  # the workers caught up
        while deliver(base, 101)[0] != 200:
            assert time.monotonic() < deadline, service.log.read_text()
            time.sleep(0.2)
        assert "more than 3 runs wait in the queue" in service.log.read_text()


def test_a_missing_secret_stops_listener_run_before_it_starts(dsn: str, sql: Conn, tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    write_config(path, RULES, http={"listen": "127.0.0.1:0"}, webhooks=WEBHOOKS)
    env = {k: v for k, v in os.environ.items() if k not in ("T_STANDARD", "T_STRIPE")}
    done = subprocess.run(
        [sys.executable, "-m", "listener", "run", "-c", str(path)],
        cwd=ROOT,
        env={**env, "LISTENER_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 2, done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert f"{path}:" in error and "webhook 'svix': the environment variable T_STANDARD is not set" in error
    assert "export T_STANDARD=" in done.stderr and "Traceback" not in done.stderr


def events_per_delivery(sql: Conn) -> dict[str, int]:
    rows = sql.execute(
        "SELECT payload->'data'->>'n', count(*) FROM listener.events WHERE source = 'webhook' GROUP BY 1"
    ).fetchall()
    return {str(n): int(str(count)) for n, count in rows}


def test_state_connections_cut_under_load_lose_no_acknowledged_delivery(service: Service, sql: Conn) -> None:
    """Every connection of the service to the database (walsender, writers, pools) is terminated three
    times while clients POST: each request is answered 200 or 503, each 200 has its one event, and the
    deliveries sent again afterwards are all accepted, once each."""
    stop = time.monotonic() + 6

    def client(first: int) -> dict[int, int]:
        answers: dict[int, int] = {}
        n = first
        while time.monotonic() < stop:
            answers[n] = deliver(service.base, n)[0]
            n += 8
        return answers

    with ThreadPoolExecutor(9) as pool:
        clients = [pool.submit(client, first) for first in range(8)]
        for _ in range(3):
            time.sleep(1.5)
            sql.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        answers = {n: status for c in clients for n, status in c.result().items()}
    assert set(answers.values()) <= {200, 503}, answers
    assert 503 in answers.values() and list(answers.values()).count(200) > 50, answers
    stored = events_per_delivery(sql)
    assert all(stored.get(str(n)) == 1 for n, status in answers.items() if status == 200)  # durable
    assert all(count == 1 for count in stored.values())
    deadline = time.monotonic() + WAIT_S
    for n in sorted(answers):  # the provider delivers again what was not accepted (and the rest)
        while (status := deliver(service.base, n)[0]) != 200:
            assert status == 503 and time.monotonic() < deadline, status
            time.sleep(0.1)
    stored = events_per_delivery(sql)
    assert stored == {str(n): 1 for n in answers}
