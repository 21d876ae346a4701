"""What the benchmark scripts share: the facts about the machine and server that go beside every figure."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import psycopg

from listener.ingest.expand import Expander
from listener.pg.embedded import EmbeddedPostgres
from listener.pg.types import TypeRegistry
from listener.queue.store import StateStore


@contextlib.contextmanager
def server(
    dsn: str | None, *, prefix: str, keep: bool = False, settings: Mapping[str, str] | None = None
) -> Iterator[tuple[str, Path | None]]:
    """(DSN, data directory): the server named by ``dsn``, or else a fresh embedded PostgreSQL with default
    durable settings in a temporary directory, stopped and removed afterwards (kept with ``keep``).
    ``settings``: extra server settings of the embedded server (e.g. ``shared_preload_libraries``)."""
    if dsn:
        yield dsn, None
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    tmp.chmod(0o755)  # the server runs as another OS user when we are root
    data = tmp / "pgdata"
    pg = EmbeddedPostgres(data, settings=settings or {})
    try:
        print(f"starting embedded PostgreSQL in {data} ...", flush=True)
        yield pg.start(), data
    finally:
        pg.stop()
        if keep:
            print(f"data directory kept: {data}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def machine_facts(dsn: str, settings: tuple[str, ...] = ("fsync", "synchronous_commit")) -> dict[str, Any]:
    """Cores, RAM, CPU, OS, Python, the PostgreSQL version and the given server settings."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute("SELECT version()").fetchone()
        values = {name: conn.execute("SELECT current_setting(%s)", [name]).fetchone() for name in settings}
    assert version is not None
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": version[0],
        **{name: row[0] if row else None for name, row in values.items()},
    }


async def expand_all(dsn: str, store: StateStore, types: TypeRegistry) -> tuple[float, int]:
    """Expand every stored chunk into events and runs, as if workers kept up (no `expand_ahead` bound):
    (seconds, changes expanded).  User types are resolved in the source database ``dsn``."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as catalog:

        async def resolve(oids: Sequence[int]) -> None:
            await types.resolve(catalog, oids)

        expander = Expander(store, types, resolve, ahead=2**62)
        began = time.perf_counter()
        await expander.expand_available()
        return time.perf_counter() - began, expander.stats.changes


# -------------------------------------------------------------------------------------------------------
# HTTP load: a free port, waiting for a server, and wrk (Debian's package) with its report parsed


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until something accepts connections on ``port``; SystemExit when ``process`` ends first."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start (exit {process.poll()})")
        time.sleep(0.05)


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(
    wrk: str, url: str, *, threads: int, connections: int, duration: int, script: Path | None = None
) -> dict[str, float]:
    """``wrk --latency`` on ``url``: requests/s, requests, p50/p99 (ms), non-2xx answers, socket errors."""
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    command += ["-s", str(script)] if script is not None else []
    done = subprocess.run([*command, url], capture_output=True, text=True, check=True)
    text = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    if rate is None or total is None:
        raise SystemExit(f"unexpected wrk output:\n{text}{done.stderr}")
    out = {"requests_per_s": float(rate.group(1)), "requests": float(total.group(1))}
    for name, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE):
        out[f"p{name}_ms"] = float(value) * _WRK_UNITS[unit]
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = float(refused.group(1)) if refused else 0.0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = float(sum(int(g) for g in errors.groups())) if errors else 0.0
    return out


def add_wrk_options(parser: argparse.ArgumentParser) -> None:
    """--duration, --connections, --threads, --wrk (checked at parse time: wrk must exist)."""
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run (wrk -d)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (wrk -c)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (wrk -t)")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="the wrk binary")


def wrk_url(args: argparse.Namespace, url: str, script: Path | None = None) -> dict[str, float]:
    """:func:`run_wrk` with the options of :func:`add_wrk_options`."""
    if shutil.which(args.wrk) is None:
        raise SystemExit("wrk is needed: apt-get install wrk (or --wrk PATH)")
    return run_wrk(
        args.wrk,
        url,
        threads=args.threads,
        connections=args.connections,
        duration=args.duration,
        script=script,
    )
