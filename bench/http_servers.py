"""Which ASGI server `listener run` embeds for ``http:``: uvicorn or granian, measured (not a test).

Each server runs listener's own application (``listener.http.app``; ``GET /healthz``) the way the service
would run it: in one process, on one uvloop event loop, started from Python (uvicorn's ``Server.serve``,
granian's ``server.embed.Server``).  ``wrk`` (Debian's package) loads each for ``--duration`` seconds with
``--connections`` keep-alive connections from ``--threads`` threads, on the same machine; the servers take
turns, ``--rounds`` times.  Reported per run: requests/s, latency p50 / p99 (wrk's), and the server
process's CPU seconds per 10,000 requests.

    python bench/http_servers.py                      # both, 3 rounds of 10 s
    python bench/http_servers.py --servers uvicorn    # one

granian is not a dependency of listener: ``pip install granian`` to measure it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
from benchlib import add_wrk_options, cpu_model, free_port, wait_listening, wrk_url

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("uvicorn", "granian")

# The server process: listener's app on a port it was given, one uvloop loop, until killed.
_SERVE = """
import asyncio, sys
import uvloop
from listener.http.app import make_app

server, port = sys.argv[1], int(sys.argv[2])
app = make_app(lambda: None)

async def main() -> None:
    if server == "uvicorn":
        import uvicorn
        config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", lifespan="off", ws="none",
                                log_config=None, access_log=False, server_header=False)
        await uvicorn.Server(config).serve()
    else:
        from granian.constants import Interfaces
        from granian.server.embed import Server
        await Server(app, address="127.0.0.1", port=port, interface=Interfaces.ASGI, websockets=False,
                     log_enabled=False).serve()

uvloop.run(main())
"""


def measure(server: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", _SERVE, server, str(port)], env=env)
    try:
        wait_listening(port, process)
        handle = psutil.Process(process.pid)
        before = handle.cpu_times()
        wrk = wrk_url(args, f"http://127.0.0.1:{port}/healthz")
        after = handle.cpu_times()
    finally:
        process.kill()
        process.wait()
    result: dict[str, Any] = {"server": server, **wrk}
    cpu = (after.user + after.system) - (before.user + before.system)
    result["server_cpu_s_per_10k"] = cpu / max(result["requests"], 1.0) * 10_000
    return result


def versions() -> str:
    found = []
    for name in ("uvicorn", "httptools", "granian", "uvloop"):
        try:
            module = __import__(name)
            found.append(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: uvicorn, granian")
    parser.add_argument("--rounds", type=int, default=3, help="turns each server takes")
    add_wrk_options(parser)
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for server in servers:
        if server not in SERVERS:
            parser.error(f"unknown server {server!r}: choose from {', '.join(SERVERS)}")
    results = []
    for round_ in range(1, args.rounds + 1):
        for server in servers:
            result = measure(server, args)
            result["round"] = round_
            results.append(result)
            p50, p99 = result.get("p50_ms", float("nan")), result.get("p99_ms", float("nan"))
            cpu, refused = result["server_cpu_s_per_10k"], result["non_2xx"]
            print(
                f"round {round_} {server:8} {result['requests_per_s']:>10,.0f} requests/s"
                f" p50 {p50:.2f} ms p99 {p99:.2f} ms  server CPU {cpu:.2f} s per 10k, non-2xx {refused:.0f}",
                flush=True,
            )
    print()
    print(
        f"machine     {os.cpu_count()} cores, {psutil.virtual_memory().total / 1e9:.1f} GB RAM, {cpu_model()}"
    )
    print(f"python      {platform.python_version()} / {platform.platform()}")
    print(f"packages    {versions()}")
    print(
        f"load        wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency (same machine)"
    )
    print(f"command     {' '.join([sys.executable, *sys.argv])}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
