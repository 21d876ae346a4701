"""`listener check`, `init`, `drop` against real servers, and the errors a user can cause."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from listener import install as setup
from listener.errors import DatabaseError, PrerequisiteError, SlotInUseError
from listener.pg.embedded import EmbeddedPostgres
from listener.pg.replication import ReplicationSession
from tests.support import make_config

Conn = psycopg.Connection[tuple[object, ...]]
RULE = {
    "name": "r1",
    "table": "public.orders",
    "on": ["insert", "update"],
    "workflow": "listener_examples.tickets:triage",
}


def by_name(results: list[setup.CheckResult]) -> dict[str, setup.CheckResult]:
    return {r.name: r for r in results}


@pytest.mark.bare_database
def test_check_on_a_ready_database_passes(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
    results = by_name(setup.check(make_config([RULE]), dsn, dsn))
    assert results["wal_level"].ok
    assert results["replication privilege"].ok
    assert results["replication slot"].ok and "will be created" in results["replication slot"].detail
    assert results["table public.orders"].ok
    # not initialised yet: the fix is `listener init`
    assert not results["state schema"].ok and results["state schema"].fix == "listener init"


def test_check_names_a_missing_table_and_its_rule(dsn: str) -> None:
    results = by_name(setup.check(make_config([RULE]), dsn, dsn))
    missing = results["table public.orders"]
    assert not missing.ok
    assert "public.orders does not exist" in missing.detail and "rule r1" in missing.detail
    assert missing.fix is not None and "rule r1" in missing.fix


def test_check_refuses_a_table_whose_updates_the_publication_would_break(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE orders (id int, total numeric)")  # no primary key
    result = by_name(setup.check(make_config([RULE]), dsn, dsn))["table public.orders"]
    assert not result.ok
    assert "no primary key" in result.detail and "UPDATE and DELETE" in result.detail
    assert result.fix is not None and result.fix.startswith("ALTER TABLE public.orders REPLICA IDENTITY FULL")


def test_insert_only_rules_publish_only_inserts(dsn: str, sql: Conn) -> None:
    """A table without a primary key can be watched for inserts without breaking the app's UPDATEs."""
    sql.execute("CREATE TABLE orders (id int, total numeric)")
    rule = {**RULE, "on": ["insert"]}
    assert by_name(setup.check(make_config([rule]), dsn, dsn))["table public.orders"].ok
    setup.init(make_config([rule]), dsn, dsn)
    sql.execute("INSERT INTO orders VALUES (1, 2)")
    sql.execute("UPDATE orders SET total = 3")  # would fail if the publication published updates
    row = sql.execute(
        "SELECT pubinsert, pubupdate, pubdelete FROM pg_publication WHERE pubname = 'listener_test'"
    ).fetchone()
    assert row == (True, False, False)


@pytest.mark.bare_database
def test_init_is_idempotent_and_publishes_exactly_the_rule_tables(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)")
    config = make_config([RULE])
    first = setup.init(config, dsn, dsn)
    assert any("applied migration 0001_initial" in line for line in first)
    assert any("created publication listener_test" in line for line in first)
    assert "created replication slot listener_test" in first
    second = setup.init(config, dsn, dsn)
    assert not any("migration" in line or "created" in line for line in second)
    tables = sql.execute("SELECT schemaname, tablename FROM pg_publication_tables").fetchall()
    assert tables == [("public", "orders")]  # never listener's own schema, never other tables
    slots = sql.execute("SELECT slot_name, plugin FROM pg_replication_slots").fetchall()
    assert slots == [("listener_test", "pgoutput")]
    results = by_name(setup.check(config, dsn, dsn))
    assert all(r.ok for r in results.values()), results


def test_init_follows_rule_changes(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)")
    setup.init(make_config([RULE]), dsn, dsn)
    moved = {**RULE, "table": "other", "on": ["delete"]}
    setup.init(make_config([moved]), dsn, dsn)
    assert sql.execute("SELECT tablename FROM pg_publication_tables").fetchall() == [("other",)]
    main = "SELECT pubinsert, pubdelete FROM pg_publication WHERE pubname = 'listener_test'"
    assert sql.execute(main).fetchone() == (False, True)


def test_drop_removes_slot_and_publication(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    config = make_config([RULE])
    setup.init(config, dsn, dsn)
    assert setup.drop(config, dsn) == [
        "dropped replication slot listener_test",
        "dropped publication listener_test",
        "dropped publication listener_test_filtered",  # the pushdown one (see test_pushdown.py)
    ]
    assert sql.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
    assert sql.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    assert setup.drop(config, dsn) == []


async def test_a_slot_in_use_is_named_with_its_process(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    config = make_config([RULE])
    setup.init(config, dsn, dsn)
    holder = await ReplicationSession.connect(dsn, slot="listener_test")
    await holder.start(publication="listener_test", start_lsn=0)
    try:
        second = await ReplicationSession.connect(dsn, slot="listener_test")
        with pytest.raises(SlotInUseError) as info:
            await second.start(publication="listener_test", start_lsn=0)
        await second.close()
        assert "replication slot 'listener_test' is in use" in str(info.value)
        assert info.value.hint is not None and "active_pid" in info.value.hint
        with pytest.raises(SlotInUseError, match="in use by PID"):
            setup.drop(config, dsn)
    finally:
        await holder.close()


def test_a_wrong_dsn_says_what_and_how_to_fix() -> None:
    with pytest.raises(DatabaseError) as info:
        setup.check(
            make_config([RULE]), "postgresql://nobody@127.0.0.1:1/nowhere", "postgresql://x@127.0.0.1:1/y"
        )
    assert "cannot connect to the database" in str(info.value)
    assert info.value.hint is not None and "--dsn" in info.value.hint


@pytest.fixture(scope="module")
def replica_server() -> Iterator[str]:
    """A server with wal_level=replica: what many existing databases run with."""
    data = Path(tempfile.mkdtemp(prefix="listener-test-replica-"))
    data.chmod(0o755)
    server = EmbeddedPostgres(data / "pgdata", settings={"wal_level": "replica", "fsync": "off"})
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def test_wrong_wal_level_is_reported_with_the_fix(replica_server: str) -> None:
    with psycopg.connect(replica_server, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY)")
    config = make_config([RULE])
    result = by_name(setup.check(config, replica_server, replica_server))["wal_level"]
    assert not result.ok and "'replica'" in result.detail
    assert result.fix == "ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL"
    with pytest.raises(PrerequisiteError, match="wal_level"):
        setup.init(config, replica_server, replica_server)


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "listener", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_cli_config_typo_names_file_line_and_suggestion(tmp_path: Path, dsn: str) -> None:
    bad = tmp_path / "listener.yaml"
    bad.write_text(
        "rules:\n  - name: r1\n    tabel: orders\n    on: [insert]\n"
        "    workflow: listener_examples.tickets:triage\n"
    )
    proc = _cli("--dsn", dsn, "-c", str(bad), "check")
    assert proc.returncode == 2
    assert f"{bad}:3" in proc.stderr and "tabel" in proc.stderr and "did you mean 'table'" in proc.stderr


def test_cli_check_exits_non_zero_and_prints_fixes(tmp_path: Path, dsn: str) -> None:
    config = tmp_path / "listener.yaml"
    config.write_text(
        "rules:\n  - name: r1\n    table: missing_table\n    on: insert\n"
        "    workflow: listener_examples.tickets:triage\n"
    )
    proc = _cli("--dsn", dsn, "-c", str(config), "check")
    assert proc.returncode == 1, proc.stderr
    assert (
        f"✗ table public.missing_table: table public.missing_table does not exist (rule r1 at {config}:3)"
        in (proc.stdout)
    )
    assert "    fix: create the table, or correct `table:` of rule r1 in the config" in proc.stdout
    assert "1 problem(s)" in proc.stderr


def test_cli_wrong_dsn_exits_with_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "listener.yaml"
    config.write_text("rules: []\n")
    proc = _cli("--dsn", "postgresql://nobody@127.0.0.1:1/nowhere", "-c", str(config), "check")
    assert proc.returncode == 3  # a runtime failure (the database cannot be reached), not a failed check
    assert "cannot connect to the database" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
