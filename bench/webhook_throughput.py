"""Durable webhook requests per second, and their latency (not a test).

Two systems take turns on the same machine, each on a fresh database of a fresh embedded PostgreSQL (fsync
on), loaded by ``wrk`` (Debian's package) with POSTs of small JSON bodies, each body unique (so each is a
new delivery), ``--connections`` keep-alive connections for ``--duration`` seconds:

* **listener**: `listener run --no-workers` with one ``webhooks:`` entry (``verify: none``: wrk cannot sign,
  see below) and one rule; each 200 means the request's event and run are committed (group-committed
  with the requests that arrived meanwhile).
* **baseline**: the same ASGI server (uvicorn on uvloop, one process) answering each request after one
  plain ``INSERT`` of the body on an asyncpg pool, autocommit, no batching: the obvious hand-written
  receiver.

After each run the rows are counted: the 2xx answers wrk saw must all be in the database.  HMAC
verification is not in the loop (wrk's Lua has no HMAC); ``--verify-cost`` times the ``standard`` preset
on one request to say what it would add.

    python bench/webhook_throughput.py                  # 3 rounds of 10 s each
    python bench/webhook_throughput.py --systems listener --rounds 1
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from benchlib import add_wrk_options, cpu_model, free_port, server, wait_listening, wrk_url
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("listener", "baseline")

# wrk: a POST with a body no other request has (thread number and counter)
_LUA = """
local counter = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function request()
  counter = counter + 1
  local body = '{"type":"invoice.paid","thread":' .. tid .. ',"n":' .. counter .. ',"amount":1200}'
  return wrk.format("POST", "/hooks/load", {["Content-Type"] = "application/json"}, body)
end
"""

# the baseline receiver: uvicorn, one INSERT per request
_BASELINE = """
import asyncio, sys
import asyncpg, uvicorn, uvloop
from listener.pg.conninfo import asyncpg_params

dsn, port = sys.argv[1], int(sys.argv[2])

async def main() -> None:
    pool = await asyncpg.create_pool(min_size=16, max_size=16, **asyncpg_params(dsn, {}))

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await pool.execute("INSERT INTO baseline (body) VALUES ($1::jsonb)", body.decode())
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status":"accepted"}'})

    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", lifespan="off", ws="none",
                            log_config=None, access_log=False, server_header=False)
    await uvicorn.Server(config).serve()

uvloop.run(main())
"""


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until ``url`` answers 200 (listener's /readyz: ingest streams)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the system did not start (exit {process.poll()})")
        time.sleep(0.1)


def measure(system: str, admin: str, args: argparse.Namespace, work: Path, round_: int) -> dict[str, Any]:
    name = f"bench_webhook_{system}_{round_}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(admin, dbname=name)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = (work / f"{name}.log").open("wb")
    if system == "listener":
        config = work / f"{name}.yaml"
        config.write_text(
            json.dumps(
                {
                    "slot": name,
                    "publication": name,
                    "http": {"listen": f"127.0.0.1:{port}"},
                    "webhooks": [{"name": "load", "path": "/hooks/load", "verify": "none"}],
                    "rules": [
                        {"name": "load", "webhook": "load", "workflow": "listener_examples.tickets:triage"}
                    ],
                }
            )
        )
        command = [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(config), "run", "--no-workers"]
        ready, count = f"http://127.0.0.1:{port}/readyz", "SELECT count(*) FROM listener.events"
    else:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE baseline (id bigserial PRIMARY KEY, body jsonb NOT NULL)")
        command = [sys.executable, "-c", _BASELINE, dsn, str(port)]
        ready, count = "", "SELECT count(*) FROM baseline"
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        if system == "listener":
            wait_ready(ready, process)
        else:
            wait_listening(port, process)
        handle = psutil.Process(process.pid)
        before = handle.cpu_times()
        script = work / "post.lua"
        script.write_text(_LUA)
        load = wrk_url(args, f"http://127.0.0.1:{port}", script)
        result: dict[str, Any] = {"system": system, "round": round_, **load}
        after = handle.cpu_times()
    finally:
        process.terminate()
        process.wait(60)
        log.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(count).fetchone()
    assert row is not None
    result["stored"] = int(row[0])
    result["answered_2xx"] = int(result["requests"] - result["non_2xx"])
    cpu = (after.user + after.system) - (before.user + before.system)
    result["process_cpu_ms_per_request"] = cpu / max(result["requests"], 1) * 1000
    with psycopg.connect(admin, autocommit=True) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", [name]):
            conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return result


def verify_cost() -> float:
    """Microseconds the ``standard`` preset takes to verify one small signed request."""
    from standardwebhooks.webhooks import Webhook

    from listener.http.verify import verifier

    secret = "whsec_" + base64.b64encode(b"x" * 32).decode()
    body = b'{"type":"invoice.paid","n":1,"amount":1200}'
    now = datetime.now(UTC)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign("msg_1", now, body),
    }
    check = verifier("standard", [secret], 300)
    began = time.perf_counter()
    for _ in range(10_000):
        check(body, headers, now.timestamp())
    return (time.perf_counter() - began) / 10_000 * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", help="a scratch server (default: a fresh embedded PostgreSQL)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: listener, baseline")
    parser.add_argument("--rounds", type=int, default=3, help="turns each system takes")
    add_wrk_options(parser)
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if any(s not in SYSTEMS for s in systems):
        parser.error(f"--systems: choose from {', '.join(SYSTEMS)}")
    results = []
    work = Path(tempfile.mkdtemp(prefix="listener-bench-webhook-"))
    with server(args.dsn, prefix="listener-bench-webhook-") as (admin, _):
        with psycopg.connect(admin, autocommit=True) as conn:
            version = conn.execute("SELECT version()").fetchone()
            settings = conn.execute(
                "SELECT current_setting('fsync'), current_setting('synchronous_commit')"
            ).fetchone()
        for round_ in range(1, args.rounds + 1):
            for system in systems:
                result = measure(system, admin, args, work, round_)
                results.append(result)
                p50, p99 = result.get("p50_ms", float("nan")), result.get("p99_ms", float("nan"))
                cpu = result["process_cpu_ms_per_request"]
                print(
                    f"round {round_} {system:8} {result['requests_per_s']:>9,.0f} requests/s"
                    f" p50 {p50:.2f} ms p99 {p99:.2f} ms  2xx {result['answered_2xx']:,}"
                    f" stored {result['stored']:,} non-2xx {result['non_2xx']:.0f} CPU {cpu:.3f} ms/request",
                    flush=True,
                )
    shutil.rmtree(work, ignore_errors=True)
    fsync, synchronous = settings if settings else ("?", "?")
    load = f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency"
    print()
    print(
        f"verify      the standard preset: {verify_cost():.1f} µs per small request (not in the loop above)"
    )
    print(
        f"machine     {os.cpu_count()} cores, {psutil.virtual_memory().total / 1e9:.1f} GB RAM, {cpu_model()}"
    )
    print(f"PostgreSQL  {version[0] if version else '?'} (fsync={fsync}, synchronous_commit={synchronous})")
    print(f"python      {platform.python_version()} / {platform.platform()}")
    print(f"load        {load}, unique JSON bodies (same machine)")
    print(f"command     {' '.join([sys.executable, *sys.argv])}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
