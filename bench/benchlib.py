"""What the benchmark scripts share: the facts about the machine and server that go beside every figure."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
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
