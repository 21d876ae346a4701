"""`check` on managed services: the fix lines say where each service keeps the setting (ALTER SYSTEM is
refused there) and how it grants replication.  A service is recognised by a setting or role it defines;
the test servers get those as placeholders."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

from listener import install as setup
from listener.errors import PrerequisiteError
from listener.pg import managed
from tests.integration.test_setup import replica_server  # noqa: F401  (a wal_level=replica server)
from tests.support import _wait_for, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]


def by_name(results: list[setup.CheckResult]) -> dict[str, setup.CheckResult]:
    return {r.name: r for r in results}


@pytest.mark.parametrize(
    ("setting", "service"),
    [
        ("rds.logical_replication", managed.RDS),
        ("cloudsql.logical_decoding", managed.CLOUD_SQL),
        ("azure.extensions", managed.AZURE),
    ],
)
def test_the_wal_level_fix_names_the_services_own_setting(
    replica_server: str,  # noqa: F811
    setting: str,
    service: managed.Service,
) -> None:
    name = f"m_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(replica_server, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
        placeholder = pgsql.SQL("ALTER DATABASE {} SET {} = 'off'")
        conn.execute(placeholder.format(pgsql.Identifier(name), pgsql.Identifier(setting)))
    dsn = make_conninfo(replica_server, dbname=name)
    try:
        result = by_name(setup.check(make_config([]), dsn, dsn))["wal_level"]
        assert not result.ok and result.fix == service.logical
        assert "ALTER SYSTEM" not in service.logical
    finally:
        with psycopg.connect(replica_server, autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP DATABASE {} WITH (FORCE)").format(pgsql.Identifier(name)))


def test_a_self_hosted_server_gets_alter_system(replica_server: str) -> None:  # noqa: F811
    result = by_name(setup.check(make_config([]), replica_server, replica_server))["wal_level"]
    assert result.fix == "ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL"


@pytest.fixture
def rds_like(dsn: str, sql: Conn) -> Iterator[tuple[str, str]]:
    """The test database dressed as RDS (its setting and its rds_replication role), and a role without
    REPLICATION: (that role's DSN, its name)."""
    sql.execute(f"ALTER DATABASE \"{sql.info.dbname}\" SET rds.logical_replication = 'on'")
    role, password = f"app_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    exists = sql.execute("SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication'").fetchone()
    if exists is None:
        sql.execute("CREATE ROLE rds_replication NOLOGIN")
    sql.execute(pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(pgsql.Identifier(role), password))
    try:
        yield make_conninfo(dsn, user=role, password=password), role
    finally:
        sql.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(role)))
        if exists is None:
            sql.execute("DROP ROLE rds_replication")


@pytest.mark.bare_database
def test_on_rds_replication_comes_from_the_rds_replication_role(
    dsn: str, sql: Conn, rds_like: tuple[str, str]
) -> None:
    role_dsn, role = rds_like
    result = by_name(setup.check(make_config([]), role_dsn, role_dsn))["replication privilege"]
    assert not result.ok and result.fix == f'GRANT "rds_replication" TO "{role}";'
    sql.execute(result.fix.encode())
    assert by_name(setup.check(make_config([]), role_dsn, role_dsn))["replication privilege"].ok
    sql.execute(pgsql.SQL("REVOKE rds_replication FROM {}").format(pgsql.Identifier(role)))


async def test_a_lost_slot_is_refused_with_the_gap_never_silently_recreated(dsn: str, sql: Conn) -> None:
    """A failover that does not carry the slot, or a service removing it, must not make init start a new
    slot at the current position as if nothing had happened in between."""
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    config = make_config([{"name": "o", "table": "orders", "on": "insert", "workflow": "w:f"}])
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO orders VALUES (1)")
        await wait_caught_up(run, dsn)
    active = "SELECT active FROM pg_replication_slots WHERE slot_name = 'listener_test'"
    await _wait_for(lambda: sql.execute(active).fetchone() == (False,), "the walsender to let the slot go")
    sql.execute("SELECT pg_drop_replication_slot('listener_test')")
    with pytest.raises(PrerequisiteError) as refused:
        setup.init(config, dsn, dsn)
    forget = "DELETE FROM \"listener\".checkpoints WHERE slot_name = 'listener_test';"
    assert "does not exist, but listener's checkpoint on it is at LSN" in refused.value.message
    hint = refused.value.hint
    assert hint is not None and hint.startswith(f"to go on from now, accepting that gap: {forget}")
    assert sql.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)  # none made
    lost = by_name(setup.check(config, dsn, dsn))["checkpoint"]
    assert not lost.ok and lost.fix == refused.value.hint
    sql.execute(forget)
    assert setup.init(config, dsn, dsn) == ["created replication slot listener_test"]


def test_drop_with_the_state_database_forgets_the_checkpoint(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    config = make_config([{"name": "o", "table": "orders", "on": "insert", "workflow": "w:f"}])
    setup.init(config, dsn, dsn)
    sql.execute("INSERT INTO listener.checkpoints (slot_name, lsn) VALUES ('listener_test', '0/1234')")
    assert setup.drop(config, dsn, dsn)[-1] == "forgot the checkpoint of slot listener_test (at 0/1234)"
    assert "created replication slot listener_test" in setup.init(config, dsn, dsn)
