"""Prerequisites (`listener check`), setup (`listener init`) and teardown (`listener drop`).

Each check names what is wrong and the exact SQL or config change that fixes it.  ``init`` applies the
state schema migrations, creates (or corrects) the publication for exactly the rule tables — publishing
only the operations the rules use, so an application table without a primary key keeps accepting
UPDATE/DELETE when no rule asks for them — and creates the logical slot.  All of it is safe to run twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from listener import store
from listener.config import Config, qualified_name
from listener.errors import DatabaseError, PrerequisiteError, SlotInUseError
from listener.rules import RuleSet

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    warning: bool = False  # ok, but worth knowing


@contextmanager
def connect(dsn: str, *, what: str = "the database") -> Iterator[Conn]:
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseError(
            f"cannot connect to {what}: {str(exc).strip()}",
            hint="check the DSN (--dsn, LISTENER_DSN or `dsn:` in the config file); "
            "e.g. postgresql://user@host:5432/dbname",
        ) from exc
    try:
        yield conn
    finally:
        conn.close()


def _publish_ops(rules: RuleSet) -> str:
    ops = [op for op in ("insert", "update", "delete", "truncate") if op in rules.operations]
    return ", ".join(ops or ["insert"])


def check(config: Config, source_dsn: str, state_dsn: str) -> list[CheckResult]:
    """Run every prerequisite check; never raises for a failed check (only for no connection)."""
    rules = RuleSet(config.rules)
    results: list[CheckResult] = []
    add = results.append
    with connect(source_dsn) as conn:
        wal_level = conn.execute("SHOW wal_level").fetchone()[0]  # type: ignore[index]
        add(
            CheckResult("wal_level", True, "wal_level = logical")
            if wal_level == "logical"
            else CheckResult(
                "wal_level",
                False,
                f"wal_level is {wal_level!r}; logical replication needs 'logical'",
                "ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL",
            )
        )
        role, can_replicate, superuser = conn.execute(
            "SELECT current_user, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()  # type: ignore[misc]
        add(
            CheckResult("replication privilege", True, f"role {role} may replicate")
            if can_replicate or superuser
            else CheckResult(
                "replication privilege",
                False,
                f"role {role} lacks the REPLICATION attribute",
                f"ALTER ROLE {sql.Identifier(role).as_string(conn)} REPLICATION;",
            )
        )
        results.extend(_check_slot(conn, config))
        results.extend(_check_tables(conn, config, rules))
        results.extend(_check_publication(conn, config, rules))
    with connect(state_dsn, what="the state database") as conn:
        version = store.schema_version(conn, config.state_schema)
        latest = len(store.load_migrations())
        if version == latest:
            add(CheckResult("state schema", True, f"schema {config.state_schema} at version {version}"))
        else:
            have = "missing" if version is None else f"at version {version}"
            add(
                CheckResult(
                    "state schema",
                    False,
                    f"state schema {config.state_schema} is {have}, listener needs version {latest}",
                    "listener init",
                )
            )
    return results


def _check_slot(conn: Conn, config: Config) -> list[CheckResult]:
    row = conn.execute(
        "SELECT plugin, database, active_pid, slot_type FROM pg_replication_slots WHERE slot_name = %s",
        [config.slot],
    ).fetchone()
    if row is not None:
        plugin, database, active_pid, slot_type = row
        current_db = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        if slot_type != "logical" or plugin != "pgoutput" or database != current_db:
            return [
                CheckResult(
                    "replication slot",
                    False,
                    f"slot {config.slot!r} exists but is a {slot_type} slot of plugin {plugin!r} "
                    f"on database {database!r}",
                    f"choose another `slot:` in the config, or "
                    f"SELECT pg_drop_replication_slot('{config.slot}');",
                )
            ]
        if active_pid is not None:
            return [
                CheckResult(
                    "replication slot",
                    True,
                    f"slot {config.slot!r} exists and is in use by PID {active_pid}",
                    "stop the other consumer before `listener run`, or choose another `slot:`",
                    warning=True,
                )
            ]
        return [CheckResult("replication slot", True, f"slot {config.slot!r} exists")]
    used, limit = conn.execute(
        "SELECT (SELECT count(*) FROM pg_replication_slots), current_setting('max_replication_slots')::int"
    ).fetchone()  # type: ignore[misc]
    if used >= limit:
        return [
            CheckResult(
                "replication slot",
                False,
                f"no free replication slot ({used} of max_replication_slots = {limit} in use)",
                f"ALTER SYSTEM SET max_replication_slots = {limit + 4};  -- then restart PostgreSQL; "
                "or drop an unused slot with pg_drop_replication_slot(name)",
            )
        ]
    return [
        CheckResult("replication slot", True, f"slot {config.slot!r} will be created ({used}/{limit} used)")
    ]


def _check_tables(conn: Conn, config: Config, rules: RuleSet) -> list[CheckResult]:
    out: list[CheckResult] = []
    for schema, table in rules.tables:
        name = qualified_name(schema, table)
        rule_names = ", ".join(r.name for r in rules.rules if (r.schema, r.table) == (schema, table))
        row = conn.execute(
            """
            SELECT c.relkind::text, c.relreplident::text,
                   EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                   pg_has_role(c.relowner, 'USAGE')
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = %s
            """,
            [schema, table],
        ).fetchone()
        if row is None:
            where = ", ".join(
                f"rule {r.name} at {config.rule_location(r.name)}" if config.source_path else f"rule {r.name}"
                for r in rules.rules
                if (r.schema, r.table) == (schema, table)
            )
            out.append(
                CheckResult(
                    f"table {name}",
                    False,
                    f"table {name} does not exist ({where})",
                    f"create the table, or correct `table:` of rule {rule_names} in the config",
                )
            )
            continue
        relkind, ident, has_pk, owner = row
        if relkind not in ("r", "p"):
            out.append(
                CheckResult(
                    f"table {name}",
                    False,
                    f"{name} is not a table (relkind {relkind!r})",
                    f"point rule {rule_names} at a table; views are not replicated",
                )
            )
            continue
        problems: list[CheckResult] = []
        ops = rules.operations_for(schema, table)
        publish_all = rules.operations & {"update", "delete"}
        if publish_all and (ident == "n" or (ident == "d" and not has_pk)):
            # The publication publishes UPDATE/DELETE for all its tables: without a replica identity
            # the application's own UPDATE/DELETE on this table would start to fail.
            why = "has REPLICA IDENTITY NOTHING" if ident == "n" else "has no primary key"
            problems.append(
                CheckResult(
                    f"table {name}",
                    False,
                    f"{name} {why}; once published for {'/'.join(sorted(publish_all))}, "
                    "UPDATE and DELETE on it would fail in the application",
                    f"ALTER TABLE {name} REPLICA IDENTITY FULL;  -- or add a primary key",
                )
            )
        elif ops & {"update", "delete"} and ident in ("d", "i"):
            problems.append(
                CheckResult(
                    f"table {name}",
                    True,
                    f"{name}: old values of updates and deletes carry only the replica identity columns",
                    f"ALTER TABLE {name} REPLICA IDENTITY FULL;  -- if workflows need whole old rows",
                    warning=True,
                )
            )
        if not owner:
            problems.append(
                CheckResult(
                    f"table {name}",
                    False,
                    f"the current role does not own {name}; adding it to a publication requires ownership",
                    f"run `listener init` as the owner, or ALTER TABLE {name} OWNER TO <this role>;",
                )
            )
        out.extend(problems or [CheckResult(f"table {name}", True, f"{name} exists")])
    return out


def _check_publication(conn: Conn, config: Config, rules: RuleSet) -> list[CheckResult]:
    wanted = {qualified_name(s, t) for s, t in rules.tables}
    row = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [config.publication]).fetchone()
    if row is None:
        return [
            CheckResult(
                "publication",
                True,
                f"publication {config.publication!r} will be created by init",
                warning=True,
            )
        ]
    have = {
        qualified_name(s, t)
        for s, t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", [config.publication]
        ).fetchall()
    }
    if have != wanted:
        return [
            CheckResult(
                "publication",
                False,
                f"publication {config.publication!r} has tables {sorted(have)}, "
                f"the rules need {sorted(wanted)}",
                "listener init",
            )
        ]
    return [CheckResult("publication", True, f"publication {config.publication!r} covers the rule tables")]


def init(config: Config, source_dsn: str, state_dsn: str) -> list[str]:
    """Apply migrations, create/correct the publication, create the slot.  Returns what was done."""
    rules = RuleSet(config.rules)
    done: list[str] = []
    with connect(state_dsn, what="the state database") as conn:
        for m in store.migrate(conn, config.state_schema):
            done.append(f"applied migration {m.version:04d}_{m.name}")
    with connect(source_dsn) as conn:
        done.extend(ensure_publication(conn, config.publication, rules))
        done.extend(ensure_slot(conn, config.slot))
    return done


def ensure_publication(conn: Conn, publication: str, rules: RuleSet, *, all_ops: bool = False) -> list[str]:
    tables = sql.SQL(", ").join(sql.Identifier(s, t) for s, t in rules.tables)
    publish = "insert, update, delete, truncate" if all_ops else _publish_ops(rules)
    name = sql.Identifier(publication)
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [publication]).fetchone()
    try:
        with conn.transaction():
            if not exists:
                if rules.tables:
                    conn.execute(
                        sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {})").format(
                            name, tables, sql.Literal(publish)
                        )
                    )
                else:
                    conn.execute(
                        sql.SQL("CREATE PUBLICATION {} WITH (publish = {})").format(
                            name, sql.Literal(publish)
                        )
                    )
                return [f"created publication {publication} ({publish}) for {len(rules.tables)} table(s)"]
            if rules.tables:
                conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(name, tables))
            else:
                for s, t in conn.execute(
                    "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                    [publication],
                ).fetchall():
                    conn.execute(
                        sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(name, sql.Identifier(s, t))
                    )
            conn.execute(
                sql.SQL("ALTER PUBLICATION {} SET (publish = {})").format(name, sql.Literal(publish))
            )
    except pgerrors.UndefinedTable as exc:
        raise PrerequisiteError(
            f"cannot publish the rule tables: {exc.diag.message_primary}",
            hint="create the table or fix the rule's `table:` (see `listener check`)",
        ) from exc
    except pgerrors.InsufficientPrivilege as exc:
        raise PrerequisiteError(
            f"cannot create the publication: {exc.diag.message_primary}",
            hint="run `listener init` as the owner of the rule tables with CREATE on the database",
        ) from exc
    return [f"publication {publication} set to {len(rules.tables)} table(s) ({publish})"]


def ensure_slot(conn: Conn, slot: str) -> list[str]:
    if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone():
        return []
    try:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
    except pgerrors.DuplicateObject:
        return []  # created concurrently
    except pgerrors.ObjectNotInPrerequisiteState as exc:
        raise PrerequisiteError(
            f"cannot create replication slot {slot!r}: {exc.diag.message_primary}",
            hint="ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL",
        ) from exc
    except pgerrors.ConfigurationLimitExceeded as exc:
        raise PrerequisiteError(
            f"cannot create replication slot {slot!r}: {exc.diag.message_primary}",
            hint="raise max_replication_slots (then restart) or drop an unused slot",
        ) from exc
    except pgerrors.InsufficientPrivilege as exc:
        raise PrerequisiteError(
            f"cannot create replication slot {slot!r}: {exc.diag.message_primary}",
            hint="ALTER ROLE <this role> REPLICATION;",
        ) from exc
    return [f"created replication slot {slot}"]


def drop(config: Config, source_dsn: str) -> list[str]:
    """Drop the slot and the publication (the state schema and its events stay)."""
    done: list[str] = []
    with connect(source_dsn) as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [config.slot]
        ).fetchone()
        if row is not None:
            if row[0] is not None:
                raise SlotInUseError(
                    f"replication slot {config.slot!r} is in use by PID {row[0]}",
                    hint="stop `listener run` first (or SELECT pg_terminate_backend(pid))",
                )
            conn.execute("SELECT pg_drop_replication_slot(%s)", [config.slot])
            done.append(f"dropped replication slot {config.slot}")
        if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [config.publication]).fetchone():
            conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(config.publication)))
            done.append(f"dropped publication {config.publication}")
    return done
