"""A failover to a streaming standby under load, with ``slot_failover: true`` (PostgreSQL 17+): the standby
keeps a synced copy of the slot, the primary is stopped at once (``-m immediate``: a crash), the standby
promoted, and the same `listener run` process goes on against it (a DSN naming both servers, with
``target_session_attrs=read-write``): every committed row has exactly one event and one run, done.

"Committed" is what the writer was told: the primary has ``synchronous_standby_names`` naming the
standby, so a commit returns once the standby has flushed it.  The state schema lives on the watched
database, so it fails over with the rows (physical replication carries both), and
``synchronized_standby_slots`` keeps listener from reading what the standby does not have yet.

Before 17 the same configuration is refused at start, once, with the setting's place and the fix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from listener.pg import versions
from listener.pg.embedded import PASSFILE, PORT_FILE, EmbeddedPostgres, client_program
from tests.chaos.test_restart import scalar, start, wait
from tests.support import cli

PHYSICAL_SLOT = "standby1"  # the standby's slot on the primary, and its application_name
CONFIG = """
slot: failover
publication: failover
slot_failover: true
worker:
  processes: 0
  poll_interval_s: 0.5
rules:
  - {name: items_in, table: items, on: [insert], workflow: listener_examples.onboarding:welcome}
"""
ROWS_EACH_SIDE = 300  # rows committed before the failover, and again after it


@pytest.fixture
def servers() -> Iterator[tuple[EmbeddedPostgres, Path]]:
    """A primary of this test's own (it is crashed; fsync on), and where its standby's data goes."""
    top = Path(tempfile.mkdtemp(prefix="listener-failover-pg-"))
    top.chmod(0o755)
    primary = EmbeddedPostgres(top / "primary")
    primary.start()
    try:
        yield primary, top / "standby"
    finally:
        for data in (top / "standby", top / "primary"):
            if (data / "postmaster.pid").exists():
                with contextlib.suppress(Exception):
                    EmbeddedPostgres(data).shutdown()
        shutil.rmtree(top, ignore_errors=True)


def password(pg: EmbeddedPostgres) -> str:
    return pg.passfile.read_text().strip().rsplit(":", 1)[1]


def make_standby(primary: EmbeddedPostgres, data: Path) -> EmbeddedPostgres:
    """``pg_basebackup -R`` of ``primary`` through its physical slot, started as a hot standby that
    synchronizes failover slots (the settings `listener check --standby` asks for)."""
    conninfo = f"host=127.0.0.1 port={primary.port} user=postgres password={password(primary)}"
    data.mkdir(mode=0o700)
    # As root, the server's own OS user must own the standby's files; pg_basebackup (a client) runs as this
    # process's user, which can execute it wherever it is installed (a private checkout, say), and the
    # files are handed over after.
    user = primary._user
    # listener's own files in the data directory are private to it, and the server cannot read them for
    # the backup: they are set aside meanwhile (the standby gets a copy of the password file)
    aside = data.parent / "aside"
    aside.mkdir(mode=0o700)
    private = [name for name in (PASSFILE, PORT_FILE) if (primary.data_dir / name).exists()]
    for name in private:
        (primary.data_dir / name).rename(aside / name)
    try:
        backup = subprocess.run(
            [str(client_program("pg_basebackup", primary.bin)), "-D", str(data), "-d", conninfo, "-X",
             "stream", "-S", PHYSICAL_SLOT, "-R", "-c", "fast"],
            capture_output=True, text=True, cwd="/",
        )  # fmt: skip
    finally:
        for name in private:
            (aside / name).rename(primary.data_dir / name)
    assert backup.returncode == 0, backup.stderr
    if user is not None:
        for path in [data, *data.rglob("*")]:
            os.lchown(path, user.pw_uid, user.pw_gid)
    shutil.copy2(primary.passfile, data / PASSFILE)  # EmbeddedPostgres refuses a directory without it
    with (data / "postgresql.auto.conf").open("a") as conf:
        # slot synchronization needs a dbname in primary_conninfo; application_name names it for
        # synchronous_standby_names
        conf.write(f"primary_conninfo = '{conninfo} dbname=postgres application_name={PHYSICAL_SLOT}'\n")
    standby = EmbeddedPostgres(
        data, settings={"hot_standby_feedback": "on", "sync_replication_slots": "on", "fsync": "on"}
    )
    standby.start()
    return standby


def crash(pg: EmbeddedPostgres) -> None:
    pg._run("pg_ctl", "-D", str(pg.data_dir), "-m", "immediate", "-w", "stop", what="crash")


def both(primary: EmbeddedPostgres, standby: EmbeddedPostgres) -> str:
    """One DSN for both servers: libpq (and asyncpg) connect to whichever accepts writes."""
    return (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres"
        f"?passfile={primary.passfile}&target_session_attrs=read-write&connect_timeout=5"
    )


class Writer(threading.Thread):
    """Inserts rows one per transaction; ``acked`` are the ids whose COMMIT returned (on the standby too,
    under synchronous replication)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="writer", daemon=True)
        self.dsn = dsn
        self.stopping = threading.Event()
        self.acked: list[int] = []
        self.errors = 0

    def run(self) -> None:
        next_id = 1
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    while not self.stopping.is_set():
                        conn.execute("INSERT INTO items VALUES (%s)", [next_id])
                        self.acked.append(next_id)
                        next_id += 1
                        time.sleep(0.005)
            except psycopg.OperationalError:
                self.errors += 1
                next_id += 1  # a commit cut off may or may not have happened: never reuse its id
                time.sleep(0.2)


@pytest.mark.slow
def test_the_service_follows_a_promoted_standby_losing_and_duplicating_nothing(
    servers: tuple[EmbeddedPostgres, Path], tmp_path: Path
) -> None:
    primary, standby_data = servers
    dsn = primary.dsn()
    config = tmp_path / "listener.yaml"
    config.write_text(CONFIG)
    run_log = tmp_path / "run.log"
    with psycopg.connect(dsn, autocommit=True) as conn:
        server_version = conn.info.server_version
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    if server_version < versions.FAILOVER_SLOTS:
        service = start(dsn, config, run_log, "run")
        assert service.wait(120) == 2, run_log.read_text()  # a configuration error, at start
        text = run_log.read_text()
        assert text.count(f"{config}:4: slot_failover: true needs PostgreSQL 17 or newer") == 1, text
        assert scalar(dsn, "SELECT count(*) FROM pg_replication_slots") == 0
        return
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", [PHYSICAL_SLOT])
    standby = make_standby(primary, standby_data)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # commits wait for the standby; logical walsenders send only what it has flushed
        conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{PHYSICAL_SLOT}'")
        conn.execute(f"ALTER SYSTEM SET synchronized_standby_slots = '{PHYSICAL_SLOT}'")
        conn.execute("SELECT pg_reload_conf()")
    logs = [run_log]
    sync_state = f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{PHYSICAL_SLOT}'"
    wait(lambda: scalar(dsn, sync_state) == "sync", "the standby to be synchronous", logs)
    service = start(both(primary, standby), config, run_log, "-v", "run")
    writer = Writer(both(primary, standby))
    try:
        active = "SELECT active FROM pg_replication_slots WHERE slot_name = 'failover'"
        wait(lambda: scalar(dsn, active) is True, "streaming", logs)
        writer.start()
        synced = (
            "SELECT synced AND NOT temporary AND failover FROM pg_replication_slots"
            " WHERE slot_name = 'failover'"
        )
        wait(lambda: scalar(standby.dsn(), synced) is True, "the slot synced to the standby", logs)
        wait(lambda: len(writer.acked) >= ROWS_EACH_SIDE, "rows before the failover", logs)
        _check_sees_a_ready_standby(dsn, standby.dsn(), config)
        crash(primary)
        before = len(writer.acked)
        # where the standby's copy of the slot and listener's checkpoint stand when the primary is gone
        positions = scalar(
            standby.dsn(),
            "SELECT json_build_object('slot', (SELECT confirmed_flush_lsn FROM pg_replication_slots"
            " WHERE slot_name = 'failover'), 'checkpoint', (SELECT lsn FROM listener.checkpoints))",
        )
        print("at the failover:", positions, "acked:", before)  # shown when the test fails
        with psycopg.connect(standby.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT pg_promote(true, 60)").fetchone() == (True,)
        new = standby.dsn()
        wait(lambda: len(writer.acked) >= before + ROWS_EACH_SIDE, "rows after the failover", logs)
        writer.stopping.set()
        writer.join(30)
        assert writer.errors >= 1  # the writer did see the primary go
        rows = scalar(new, "SELECT count(*) FROM items")
        done = "SELECT count(*) FROM listener.runs WHERE status = 'done'"
        wait(lambda: scalar(new, done) == rows, f"{rows} runs done on the new primary", logs)
        assert service.poll() is None, run_log.read_text()[-3000:]
        with psycopg.connect(new, autocommit=True) as conn:
            have = {r[0] for r in conn.execute("SELECT id FROM items").fetchall()}
            assert set(writer.acked) <= have  # 0 lost rows: synchronous replication held its promise
            per_row = conn.execute(
                """
                SELECT i.id, count(e.idempotency_key), count(r.id)
                FROM items i
                LEFT JOIN listener.events e ON (e.payload -> 'new' ->> 'id')::int = i.id
                LEFT JOIN listener.runs r ON r.event_key = e.idempotency_key
                GROUP BY i.id HAVING count(e.idempotency_key) <> 1 OR count(r.id) <> 1
                """
            ).fetchall()
            assert per_row == []  # each row one event and one run: 0 lost, 0 duplicated
            assert conn.execute("SELECT count(*) FROM listener.events").fetchone() == (rows,)
            assert conn.execute("SELECT count(*) FROM listener.runs").fetchone() == (rows,)
            # it read on from the synced copy of the slot: no new slot was made
            assert conn.execute(
                "SELECT synced, failover FROM pg_replication_slots WHERE slot_name = 'failover'"
            ).fetchone() == (True, True)
    finally:
        writer.stopping.set()
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(30)
            except subprocess.TimeoutExpired:
                service.kill()


def _check_sees_a_ready_standby(dsn: str, standby_dsn: str, config: Path) -> None:
    """`listener check --standby` against the real pair: every failover line passes."""
    lines = cli(dsn, config, "check", "--standby", standby_dsn).output.splitlines()
    for name in ("failover", "synchronized_standby_slots", "synchronous replication",
                 "standby sync_replication_slots", "standby hot_standby_feedback", "standby wal_level",
                 "standby primary_slot_name", "standby primary_conninfo", "standby slot"):  # fmt: skip
        assert any(line.startswith(f"✓ {name}: ") for line in lines), "\n".join(lines)
