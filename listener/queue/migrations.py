"""The state schema's migrations: the numbered files in ``sql/`` (shipped as ``listener.sql``), applied in
order under an advisory lock, each in its own transaction, recorded in ``schema_migrations``: safe to run
twice and from two processes at once.  Also the schema's version and the checkpoint row as `listener
check`, `init` and `drop` read them (psycopg, before any pool exists).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

from listener.pg.lsn import parse_lsn
from listener.queue import queries

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The numbered migrations in version order; a gap or duplicate number is a packaging bug."""
    found: list[Migration] = []
    for entry in resources.files("listener.sql").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"migration numbers must be 1..n without gaps, found {migration.version}")
    return found


def migrate(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> list[Migration]:
    """Bring ``schema`` up to date; return the migrations applied now (empty when already current)."""
    applied: list[Migration] = []
    ident = sql.Identifier(schema)
    with conn.transaction():
        conn.execute(queries.get("migrate_lock"), [schema])
        # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists: a role
        # that owns its schema, made for it by a DBA, may lack it.
        if not conn.execute(queries.get("schema_exists"), [schema]).fetchone():
            conn.execute(queries.query("create_schema").compose(schema=ident))
        conn.execute(queries.query("create_schema_migrations").compose(schema=ident))
        row = conn.execute(queries.query("schema_version").compose(schema=ident)).fetchone()
        current = int(row[0]) if row else 0  # type: ignore[call-overload]
        for migration in load_migrations():
            if migration.version <= current:
                continue
            conn.execute(queries.query("set_search_path").compose(schema=ident))
            conn.execute(migration.sql.encode())
            conn.execute(
                queries.query("record_migration").compose(schema=ident), [migration.version, migration.name]
            )
            applied.append(migration)
    return applied


def schema_version(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> int | None:
    """The applied migration version, or None when the schema was never initialised."""
    row = conn.execute(queries.get("regclass"), [f"{_quote_ident(schema)}.schema_migrations"]).fetchone()
    if row is None or row[0] is None:
        return None
    row = conn.execute(queries.query("schema_version").compose(schema=sql.Identifier(schema))).fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def checkpoint(conn: psycopg.Connection[tuple[object, ...]], schema: str, slot: str) -> int | None:
    """The checkpoint of ``slot`` (None: none, or no state schema yet)."""
    if schema_version(conn, schema) is None:
        return None
    row = conn.execute(queries.query("checkpoint").compose(schema=sql.Identifier(schema)), [slot]).fetchone()
    return parse_lsn(str(row[0])) if row is not None else None


def forget_checkpoint(conn: psycopg.Connection[tuple[object, ...]], schema: str, slot: str) -> int | None:
    """Delete the checkpoint of ``slot`` (its slot is gone for good); return what it was."""
    if schema_version(conn, schema) is None:
        return None
    statement = queries.query("forget_checkpoint").compose(schema=sql.Identifier(schema))
    row = conn.execute(statement, [slot]).fetchone()
    return parse_lsn(str(row[0])) if row is not None else None


def forget_checkpoint_sql(schema: str, slot: str) -> str:
    """The ``DELETE`` of ``slot``'s checkpoint, for a user to run when accepting a gap (printed in fixes)."""
    statement = sql.SQL("DELETE FROM {}.checkpoints WHERE slot_name = {};")
    return statement.format(sql.Identifier(schema), sql.Literal(slot)).as_string()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
