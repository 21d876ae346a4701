"""Prerequisites (`listener check`), setup (`listener init`) and teardown (`listener drop`).

Each check names what is wrong and the exact SQL or config change that fixes it.  ``init`` applies the
state schema migrations, creates (or corrects) the publications for exactly the rule tables — publishing
only the operations the rules use, so an application table without a primary key keeps accepting
UPDATE/DELETE when no rule asks for them — and creates the logical slot.  All of it is safe to run twice.

Pushdown (PostgreSQL 15+, planned by :mod:`listener.pushdown`): the tables whose rules share a row filter
are published by a second publication, ``<publication>_filtered``, with that filter; tables whose rules
name their columns get a column list.  ``init`` creates the second publication even while no table needs
it, and empties rather than drops it when none does any more: the server decodes the WAL from the slot's
confirmed position with the catalog of that time, so a publication dropped in between would lose the
changes it carried there, and one created in between fails decoding before PostgreSQL 18.  ``drop``
removes both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from listener.errors import ConfigError, DatabaseError, PrerequisiteError, SlotInUseError
from listener.pg import conninfo, managed, versions
from listener.pg.lsn import format_lsn
from listener.queue import store
from listener.rules import pushdown
from listener.rules.catalog import TableInfo, read_tables, rule_tables
from listener.rules.compile import OPERATIONS, CompiledRule, RuleSet, compile_rule
from listener.rules.config import Config, qualified_name
from listener.rules.pushdown import PublicationPlan, Refusal, TablePlan, describe_rule, publish_list

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]

PROBE_LOCK_TIMEOUT_MS = 10_000  # trying a row filter locks its table briefly; wait at most this long
# The constants of a row filter are parsed once, when the publication is created, under that session's
# settings: `at > '2024-01-01'` would otherwise mean midnight in the session's time zone, while
# listener.predicate evaluates it in UTC, and 'a\b' a backspace with standard_conforming_strings off.
# Every session pins those (listener.conninfo.SESSION_SETTINGS); filters are also printed (pg_get_expr)
# under them.  Built-in names resolve in pg_catalog only.
FILTER_SETTINGS = ("SET LOCAL search_path = pg_catalog, pg_temp",)


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    warning: bool = False  # ok, but worth knowing


# ---------------------------------------------------------------------------------------------------------
# The rules against the catalog, and the publications they need


@dataclass(frozen=True, slots=True)
class Pushdown:
    """The publications the rules need on this server, and how the server prints each planned row filter
    (``pg_get_expr``: what ``pg_publication_rel`` holds once ``init`` set it, to compare like with like).
    ``complete``: every rule compiled (otherwise the tables of the failing rules are not planned)."""

    plan: PublicationPlan
    printed: Mapping[tuple[str, str], str] = field(default_factory=dict)
    complete: bool = True


def read_catalog(conn: Conn, config: Config) -> tuple[dict[str, TableInfo | None], str]:
    """Catalog info of every rule table (None: no such table) and the database's collation."""
    return read_tables(conn, rule_tables(config.rules))


def compile_rules(conn: Conn, config: Config) -> tuple[RuleSet, dict[str, TableInfo | None]]:
    """The rules checked against their tables (``ConfigError`` for the first bad one), and the tables."""
    tables, collation = read_catalog(conn, config)
    return RuleSet.from_config(config, tables, collation), tables


def plan_pushdown(
    conn: Conn, config: Config, rules: RuleSet, tables: Mapping[str, TableInfo | None]
) -> Pushdown:
    """Plan both publications for ``rules``, then let the server try each planned row filter and column
    list (in a transaction that is rolled back): what it refuses falls back, with its reason."""
    version = conn.info.server_version
    plan = pushdown.plan_publications(rules, tables, version, publication=config.publication)
    refused, printed = probe_pushdown(conn, plan)
    if refused:
        plan = pushdown.plan_publications(
            rules, tables, version, publication=config.publication, refused=refused
        )
    return Pushdown(plan, printed)


_PRINTED_FILTER = """
SELECT pg_get_expr(pr.prqual, pr.prrelid)
FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
WHERE p.pubname = %s
"""
# What the server refuses in a row filter or column list: feature not supported (a mutable function, a
# user-defined type or operator), data exceptions, syntax errors and access rule violations (a generated
# column before PostgreSQL 18, a missing privilege).  Anything else (a lock timeout, a lost connection) is
# an error of `check`/`init` itself.
_REFUSAL_CLASSES = ("0A", "22", "42")


def probe_pushdown(
    conn: Conn, plan: PublicationPlan
) -> tuple[dict[tuple[str, str], Refusal], dict[tuple[str, str], str]]:
    """Create a throwaway publication per planned row filter and column list, inside a transaction that
    is rolled back: (what the server refused, by table; how it prints each filter it accepted)."""
    refused: dict[tuple[str, str], Refusal] = {}
    printed: dict[tuple[str, str], str] = {}
    candidates = [t for t in plan.tables if t.row_filter is not None or t.columns is not None]
    if not candidates:
        return refused, printed
    try:
        with conn.transaction(force_rollback=True):
            _pin_filter_settings(conn)
            timeout = sql.Literal(f"{PROBE_LOCK_TIMEOUT_MS}ms")
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(timeout))
            for index, table in enumerate(candidates):
                name = f"listener_probe_{os.getpid()}_{index}"
                filter_error = columns_error = None
                if table.row_filter is not None:
                    item = _table_item(table.schema, table.table, None, table.row_filter)
                    filter_error = _try_publication(conn, f"{name}_f", item, "insert")
                    if filter_error is None:
                        row = conn.execute(_PRINTED_FILTER, [f"{name}_f"]).fetchone()
                        if row is not None and row[0] is not None:
                            printed[(table.schema, table.table)] = str(row[0])
                if table.columns is not None:
                    item = _table_item(table.schema, table.table, table.columns, None)
                    publish = plan.filtered_publish if table.filtered else plan.main_publish
                    columns_error = _try_publication(conn, f"{name}_c", item, publish)
                if filter_error is not None or columns_error is not None:
                    refused[(table.schema, table.table)] = Refusal(filter_error, columns_error)
    except psycopg.Error as exc:
        raise DatabaseError(
            f"cannot try the planned row filters and column lists on the server: {str(exc).strip()}",
            hint="a long transaction or VACUUM may hold a rule table's lock: try again (see pg_locks)",
        ) from exc
    return refused, printed


def _pin_filter_settings(conn: Conn) -> None:
    """For the rest of the current transaction: the settings row filters are parsed under."""
    for statement in FILTER_SETTINGS:
        conn.execute(statement)


def _try_publication(conn: Conn, name: str, item: sql.Composable, publish: str) -> str | None:
    """None when the server accepts a publication of ``item``, else its reason.  In a savepoint, so the
    enclosing transaction goes on either way."""
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {})").format(
                    sql.Identifier(name), item, sql.Literal(publish)
                )
            )
    except psycopg.Error as exc:
        if not (exc.sqlstate or "").startswith(_REFUSAL_CLASSES):
            raise
        primary = exc.diag.message_primary or str(exc).strip()
        detail = exc.diag.message_detail
        return f"{primary} ({detail.rstrip('.')})" if detail else primary
    return None


def _table_item(
    schema: str, table: str, columns: Sequence[str] | None, row_filter: str | None
) -> sql.Composable:
    """``schema.table (col, ...) WHERE (filter)``: one entry of a publication's table list."""
    parts: list[sql.Composable] = [sql.Identifier(schema, table)]
    if columns is not None:
        parts.append(sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns)))
    if row_filter is not None:
        # SQL that listener.predicate deparsed from the rule's parsed `when:`, not text from elsewhere.
        parts.append(sql.SQL("WHERE ({})").format(sql.SQL(row_filter)))
    return sql.SQL(" ").join(parts)


# ---------------------------------------------------------------------------------------------------------
# `listener check`


def check(config: Config, source_dsn: str, state_dsn: str) -> list[CheckResult]:
    """Run every prerequisite check, and compile and describe every rule; never raises for a failed check
    (only for no connection, or a rule table locked by others for longer than PROBE_LOCK_TIMEOUT_MS)."""
    structural = RuleSet(config.rules)
    results: list[CheckResult] = []
    add = results.append
    with conninfo.connection(source_dsn) as conn:
        service = managed.detect(conn)
        results.extend(_check_server(conn.info.server_version))
        wal_level = conn.execute("SHOW wal_level").fetchone()[0]  # type: ignore[index]
        add(
            CheckResult("wal_level", True, "wal_level = logical")
            if wal_level == "logical"
            else CheckResult(
                "wal_level",
                False,
                f"wal_level is {wal_level!r}; logical replication needs 'logical'",
                service.logical,
            )
        )
        add(_check_replication(conn, service))
        results.extend(_check_slot(conn, config, service))
        slot_exists = bool(
            conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [config.slot]).fetchone()
        )
        rule_results, planned = _check_rules(conn, config)
        results.extend(_check_tables(conn, config, structural, planned))
        results.extend(rule_results)
        results.extend(_check_publications(conn, structural, planned))
    with conninfo.connection(state_dsn, what="the state database") as conn:
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
                    _state_schema_fix(conn, config.state_schema),
                )
            )
        checkpoint = store.checkpoint(conn, config.state_schema, config.slot)
        if checkpoint is not None and not slot_exists:
            lost = lost_slot(conn, config.slot, checkpoint, config.state_schema)
            add(CheckResult("checkpoint", False, lost.message, lost.hint))
    return results


_SCHEMA_ACCESS = """
SELECT current_user, current_database(), n.oid IS NOT NULL,
       coalesce(has_schema_privilege(n.oid, 'CREATE') AND has_schema_privilege(n.oid, 'USAGE'), false),
       has_database_privilege(current_database(), 'CREATE')
FROM (SELECT 1) AS one LEFT JOIN pg_namespace n ON n.nspname = %s
"""


def _state_schema_fix(conn: Conn, schema: str) -> str:
    """`listener init` when the role may create (or add to) the state schema, else the SQL a DBA runs:
    listener needs its own schema, never rights on the application's."""
    row = conn.execute(_SCHEMA_ACCESS, [schema]).fetchone()
    assert row is not None
    role, database, exists, may_add, may_create = row
    who, ident = sql.Identifier(role).as_string(conn), sql.Identifier(schema).as_string(conn)
    if exists and not may_add:
        return f"GRANT USAGE, CREATE ON SCHEMA {ident} TO {who};  -- then `listener init`"
    if not exists and not may_create:
        return (
            f"CREATE SCHEMA {ident} AUTHORIZATION {who};  -- then `listener init`; or give listener its own "
            f"state database (`state_dsn:`), since role {role} lacks CREATE on database {database}"
        )
    return "listener init"


def _check_server(server_version: int) -> list[CheckResult]:
    """The server's version, and one line for each feature it lacks: what listener does instead."""
    release = versions.major(server_version)
    if server_version >= 100000:
        release += f".{server_version % 10000}"
    if server_version < versions.MIN_SERVER_VERSION:
        return [
            CheckResult(
                "server",
                False,
                f"PostgreSQL {release} is not supported: listener needs PostgreSQL "
                f"{versions.major(versions.MIN_SERVER_VERSION)} or newer",
                "upgrade PostgreSQL",
            )
        ]
    lacking = versions.missing(server_version)
    every = "" if lacking else ": listener uses every feature it knows of"
    return [
        CheckResult("server", True, f"PostgreSQL {release}{every}"),
        *(CheckResult("server", True, versions.describe(f, server_version), warning=True) for f in lacking),
    ]


def _check_rules(conn: Conn, config: Config) -> tuple[list[CheckResult], Pushdown]:
    """One result per rule: what it matches and what of it the server applies, or why it does not
    compile, with the fix.  Each rule is compiled on its own, so one bad rule hides no other; the tables
    of bad rules are left out of the plan (their filters depend on every rule of the table)."""
    tables, collation = read_catalog(conn, config)
    limited = frozenset(limit.workflow for limit in config.limits)
    compiled: dict[str, CompiledRule] = {}
    failed: dict[str, ConfigError] = {}
    for rule in config.rules:
        try:
            compiled[rule.name] = compile_rule(
                rule, limited, tables.get(rule.table or ""), collation=collation, locate=config.field_place
            )
        except ConfigError as exc:
            failed[rule.name] = exc
    broken = {rule.table for rule in config.rules if rule.name in failed and rule.table is not None}
    sound = RuleSet(
        [rule for rule in config.rules if rule.name not in failed and rule.table not in broken],
        config.limits,
        tables=tables,
        collation=collation,
        locate=config.field_place,
    )
    planned = plan_pushdown(conn, config, sound, tables)
    out: list[CheckResult] = []
    for rule in config.rules:
        error = failed.get(rule.name)
        if error is None:
            out.append(
                CheckResult(f"rule {rule.name}", True, describe_rule(compiled[rule.name], planned.plan))
            )
        else:
            out.append(CheckResult(f"rule {rule.name}", False, _rule_error_text(error), error.hint))
    return out, Pushdown(planned.plan, planned.printed, complete=not failed)


def _rule_error_text(exc: ConfigError) -> str:
    """A rule's compile error for its check line, ``file:line: what`` (the line names the rule)."""
    place = (f"{exc.file}:{exc.line}" if exc.line is not None else exc.file) if exc.file else None
    prefix = ", ".join([*([place] if place else []), *([f"rule {exc.rule!r}"] if exc.rule else [])])
    text = exc.message.removeprefix(f"{prefix}: ") if prefix else exc.message
    return f"{place}: {text}" if place else text


_REPLICATION = """
SELECT current_user, rolreplication OR rolsuper,
       coalesce(pg_has_role(current_user, (SELECT oid FROM pg_roles WHERE rolname = %s), 'MEMBER'), false)
FROM pg_roles WHERE rolname = current_user
"""


def _check_replication(conn: Conn, service: managed.Service) -> CheckResult:
    """The REPLICATION attribute, or on a service that grants replication by a role, that role."""
    row = conn.execute(_REPLICATION, [service.replication_role]).fetchone()
    assert row is not None
    role, attribute, member = row
    if attribute or member:
        return CheckResult("replication privilege", True, f"role {role} may replicate")
    who = sql.Identifier(role).as_string(conn)
    if service.replication_role is not None:
        return CheckResult(
            "replication privilege",
            False,
            f"role {role} is not a member of {service.replication_role}, which grants replication on "
            f"{service.name}",
            f"GRANT {sql.Identifier(service.replication_role).as_string(conn)} TO {who};",
        )
    return CheckResult(
        "replication privilege",
        False,
        f"role {role} lacks the REPLICATION attribute",
        f"ALTER ROLE {who} REPLICATION;",
    )


def _check_slot(conn: Conn, config: Config, service: managed.Service) -> list[CheckResult]:
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
                service.set_parameter("max_replication_slots", limit + 4)
                + "; or drop an unused slot with pg_drop_replication_slot(name)",
            )
        ]
    return [
        CheckResult("replication slot", True, f"slot {config.slot!r} will be created ({used}/{limit} used)")
    ]


def _check_tables(conn: Conn, config: Config, rules: RuleSet, planned: Pushdown) -> list[CheckResult]:
    out: list[CheckResult] = []
    # What the main publication publishes for every table in it (tables left out of the plan count
    # with their rules' operations): a table with a row filter is in the insert-only filtered one.
    main_ops = planned.plan.main_operations.union(
        *(rules.operations_for(s, t) for s, t in rules.tables if planned.plan.table(s, t) is None)
    )
    for schema, table in rules.tables:
        name = qualified_name(schema, table)
        rule_names = ", ".join(r.name for r in rules.rules if (r.schema, r.table) == (schema, table))
        row = conn.execute(
            """
            SELECT c.relkind::text, c.relreplident::text,
                   EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                   has_schema_privilege(n.oid, 'USAGE'), has_table_privilege(c.oid, 'SELECT'), current_user
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
        relkind, ident, has_pk, usage, select, role = row
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
        placed = planned.plan.table(schema, table)
        publish_all = (placed.operations if placed is not None and placed.filtered else main_ops) & {
            "update",
            "delete",
        }
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
        if not (usage and select):
            # Publishing the table needs its owner (see the publication's line); listener itself only
            # reads it: the catalog, and the rows for `listener backfill`.
            who = sql.Identifier(role).as_string(conn)
            grants = [f"GRANT USAGE ON SCHEMA {sql.Identifier(schema).as_string(conn)} TO {who};"]
            grants = grants if not usage else []
            if not select:
                grants.append(f"GRANT SELECT ON {sql.Identifier(schema, table).as_string(conn)} TO {who};")
            problems.append(
                CheckResult(
                    f"table {name}", False, f"role {role} may not read {name} (listener needs SELECT)",
                    "\n".join(grants),
                )
            )  # fmt: skip
        out.extend(problems or [CheckResult(f"table {name}", True, f"{name} exists")])
    return out


_PUBLICATION_RELS = """
SELECT n.nspname, c.relname, pg_get_expr(pr.prqual, pr.prrelid),
       CASE WHEN pr.prattrs IS NOT NULL THEN
           ARRAY(SELECT a.attname::text FROM pg_attribute a
                 WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs::int2[]) ORDER BY a.attnum)
       END
FROM pg_publication_rel pr
JOIN pg_publication p ON p.oid = pr.prpubid
JOIN pg_class c ON c.oid = pr.prrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE p.pubname = %s
"""


def _publication_tables(conn: Conn, publication: str) -> set[str]:
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", [publication]
    ).fetchall()
    return {qualified_name(s, t) for s, t in rows}


def _check_publications(conn: Conn, rules: RuleSet, planned: Pushdown) -> list[CheckResult]:
    """Each publication against the plan: its tables, operations, row filters and column lists."""
    plan = planned.plan
    if not planned.complete:
        # Some rules do not compile: their tables' filters are unknown; compare only which tables are in.
        if not conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [plan.publication]).fetchone():
            return [
                CheckResult(
                    "publication",
                    True,
                    f"publication {plan.publication!r} will be created by init",
                    warning=True,
                )
            ]
        wanted = {qualified_name(s, t) for s, t in rules.tables}
        have = _publication_tables(conn, plan.publication)
        if plan.filtered is not None:
            have |= _publication_tables(conn, plan.filtered)
        if have != wanted:
            return [
                CheckResult(
                    "publication",
                    False,
                    f"the publications have tables {sorted(have)}, the rules need {sorted(wanted)}",
                    "listener init",
                )
            ]
        return [
            CheckResult(
                "publication",
                True,
                "the publications cover the rule tables (row filters and column lists are compared once "
                "every rule compiles)",
                warning=True,
            )
        ]
    out = [
        _check_publication(
            conn, "publication", plan.publication, plan.main_tables, plan.main_publish, planned
        )
    ]
    if plan.filtered is not None:
        out.append(
            _check_publication(
                conn,
                "filtered publication",
                plan.filtered,
                plan.filtered_tables,
                plan.filtered_publish,
                planned,
            )
        )
    return out


def _check_publication(
    conn: Conn, label: str, name: str, tables: Sequence[TablePlan], publish: str, planned: Pushdown
) -> CheckResult:
    problems = _publication_problems(conn, name, tables, publish, planned)
    access = _publication_access(conn, name, tables)
    if problems is None:
        if access.ours:
            return CheckResult(label, True, f"publication {name!r} will be created by init", warning=True)
        if not tables and name != planned.plan.publication:
            return CheckResult(label, True, f"publication {name!r} is not needed: no table has a row filter")
        return CheckResult(
            label,
            False,
            f"publication {name!r} does not exist, and {access.why_not}",
            _statements_text(conn, name, tables, publish, exists=False),
        )
    if problems:
        detail = f"publication {name!r}: " + "; ".join(problems)
        if access.ours:
            return CheckResult(label, False, detail, "listener init")
        fix = _statements_text(conn, name, tables, publish, exists=True)
        return CheckResult(label, False, f"{detail}; {access.why_not}", fix)
    return CheckResult(
        label, True, f"publication {name!r} matches the rules: {len(tables)} table(s), {publish}"
    )


def _publication_problems(
    conn: Conn, name: str, tables: Sequence[TablePlan], publish: str, planned: Pushdown
) -> list[str] | None:
    """How publication ``name`` differs from ``tables`` and ``publish`` (empty: it matches; None: there is
    no such publication)."""
    row = conn.execute(
        "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = %s", [name]
    ).fetchone()
    if row is None:
        return None
    problems: list[str] = []
    have = _publication_tables(conn, name)
    wanted = {t.name for t in tables}
    if have != wanted:
        problems.append(f"tables {sorted(have)} (the rules need {sorted(wanted)})")
    have_publish = publish_list(op for op, on in zip(OPERATIONS, row, strict=True) if on)
    if have_publish != publish:
        problems.append(f"publishes {have_publish} (the rules need {publish})")
    if planned.plan.unsupported is None:
        with conn.transaction():
            _pin_filter_settings(conn)  # print the filters as the probe did
            rels = conn.execute(_PUBLICATION_RELS, [name]).fetchall()
        actual = {(s, t): (f, cols) for s, t, f, cols in rels}
        for t in tables:
            if (t.schema, t.table) not in actual:
                continue  # reported above
            have_filter, have_columns = actual[(t.schema, t.table)]
            want_filter = planned.printed.get((t.schema, t.table), t.row_filter) if t.row_filter else None
            if have_filter != want_filter:
                want = want_filter or "none"
                problems.append(f"{t.name} has row filter {have_filter or 'none'} (the rules need {want})")
            have_list = tuple(have_columns) if have_columns is not None else None
            if have_list != t.columns:
                problems.append(
                    f"{t.name} publishes {_columns(have_list)} (the rules need {_columns(t.columns)})"
                )
    return problems


@dataclass(frozen=True, slots=True)
class PublicationAccess:
    """Whether the current role may create (or alter) a publication of some tables, and if not, why."""

    ours: bool
    verb: str = "create"  # or "alter"
    reason: str = ""  # "role app lacks CREATE on database app and does not own shop.orders"

    @property
    def why_not(self) -> str:
        return (
            f"listener may not {self.verb} it: {self.reason}; run the SQL below as the owner of the tables "
            "(or a superuser); listener only verifies it"
        )


_ACCESS = """
SELECT current_user, current_database(), has_database_privilege(current_database(), 'CREATE'),
       (SELECT pg_has_role(pubowner, 'USAGE') FROM pg_publication WHERE pubname = %(name)s),
       (SELECT pubowner::regrole::text FROM pg_publication WHERE pubname = %(name)s),
       ARRAY(SELECT format('%%s.%%s', n.nspname, c.relname)
             FROM unnest(%(schemas)s::text[], %(tables)s::text[]) AS w (schema, name)
             JOIN pg_namespace n ON n.nspname = w.schema
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.name
             WHERE NOT pg_has_role(c.relowner, 'USAGE') ORDER BY 1)
"""


def _publication_access(conn: Conn, name: str, tables: Sequence[TablePlan]) -> PublicationAccess:
    """Creating a publication needs CREATE on the database; altering one, owning it; both, owning every
    table put in it (https://www.postgresql.org/docs/current/sql-createpublication.html)."""
    row = conn.execute(
        _ACCESS, {"name": name, "schemas": [t.schema for t in tables], "tables": [t.table for t in tables]}
    ).fetchone()
    assert row is not None
    role, database, may_create, owns, owner, not_owned = row
    reasons = []
    if owner is None and not may_create:
        reasons.append(f"lacks CREATE on database {database}")
    if owner is not None and not owns:
        reasons.append(f"does not own it (its owner is {owner})")
    if not_owned:
        reasons.append(f"does not own {', '.join(not_owned)}")
    if not reasons:
        return PublicationAccess(True)
    return PublicationAccess(False, "alter" if owner else "create", f"role {role} {' and '.join(reasons)}")


def publication_statements(
    conn: Conn, name: str, tables: Sequence[TablePlan], publish: str, *, exists: bool
) -> list[sql.Composed]:
    """The SQL that makes publication ``name`` hold exactly ``tables`` and publish ``publish``."""
    ident = sql.Identifier(name)
    items = sql.SQL(", ").join(_table_item(t.schema, t.table, t.columns, t.row_filter) for t in tables)
    with_publish = sql.SQL("WITH (publish = {})").format(sql.Literal(publish))
    if not exists:
        if tables:
            return [sql.SQL("CREATE PUBLICATION {} FOR TABLE {} {}").format(ident, items, with_publish)]
        return [sql.SQL("CREATE PUBLICATION {} {}").format(ident, with_publish)]
    if tables:
        statements = [sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(ident, items)]
    else:
        statements = [
            sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(ident, sql.Identifier(s, t))
            for s, t in conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", [name]
            ).fetchall()
        ]
    statements.append(sql.SQL("ALTER PUBLICATION {} SET (publish = {})").format(ident, sql.Literal(publish)))
    return statements


def _statements_text(
    conn: Conn, name: str, tables: Sequence[TablePlan], publish: str, *, exists: bool
) -> str:
    """:func:`publication_statements` as lines a DBA can paste into psql."""
    statements = publication_statements(conn, name, tables, publish, exists=exists)
    return "\n".join(f"{statement.as_string(conn)};" for statement in statements)


def _columns(columns: Sequence[str] | None) -> str:
    return "all columns" if columns is None else f"columns ({', '.join(columns)})"


# ---------------------------------------------------------------------------------------------------------
# `listener init` and `listener drop`


def init(config: Config, source_dsn: str, state_dsn: str, *, keep: Config | None = None) -> list[str]:
    """Apply migrations, create/correct the publications, create the slot.  Returns what was done.

    The rules are compiled against the catalog first: a bad rule (``ConfigError``) changes nothing.
    ``keep``: a config whose rules still apply for a while (a reload before its marker): the publications
    then carry what either set of rules needs.  A reload is safe as: init(new, keep=old), write the
    marker, init(new) -- the narrowing lands in the WAL after the marker, where only the new rules match.
    A publication listener does not own is never altered: it must match ``config``'s rules (with
    ``keep`` too, so that a reload is refused before its marker), else ``PrerequisiteError`` gives the SQL
    that fixes it."""
    done: list[str] = []
    with conninfo.connection(source_dsn) as source:
        rules, tables = compile_rules(source, config)
        exact = wide = plan_pushdown(source, config, rules, tables)
        if keep is not None:
            rules, tables = _compile_union(source, config, keep)
            wide = plan_pushdown(source, config, rules, tables)
        with conninfo.connection(state_dsn, what="the state database") as conn:
            try:
                for m in store.migrate(conn, config.state_schema):
                    done.append(f"applied migration {m.version:04d}_{m.name}")
            except pgerrors.InsufficientPrivilege as exc:
                raise PrerequisiteError(
                    f"cannot create the state schema {config.state_schema}: {exc.diag.message_primary}",
                    hint=_state_schema_fix(conn, config.state_schema),
                ) from exc
            checkpoint = store.checkpoint(conn, config.state_schema, config.slot)
        done.extend(ensure_publications(source, wide, exact=exact))
        done.extend(ensure_slot(source, config.slot, checkpoint=checkpoint, schema=config.state_schema))
    return done


def _compile_union(conn: Conn, config: Config, keep: Config) -> tuple[RuleSet, dict[str, TableInfo | None]]:
    """The rules of both configs, for a publication that serves both."""
    both = [*config.rules, *keep.rules]
    tables, collation = read_tables(conn, rule_tables(both))
    rules = RuleSet(both, [*config.limits, *keep.limits], tables=tables, collation=collation)
    return rules, tables


def ensure_publications(conn: Conn, planned: Pushdown, *, exact: Pushdown | None = None) -> list[str]:
    """Create or correct both publications of ``planned`` in one transaction: a table moving from one to
    the other is never in both, nor in neither, at any point of the WAL.  One listener may not alter must
    match ``exact`` (default: ``planned``)."""
    exact = exact or planned
    plan, strict = planned.plan, exact.plan
    wanted = [
        (plan.publication, plan.main_tables, plan.main_publish, strict.main_tables, strict.main_publish)
    ]
    if plan.filtered is not None:
        wanted.append(
            (plan.filtered, plan.filtered_tables, plan.filtered_publish, strict.filtered_tables,
             strict.filtered_publish)
        )  # fmt: skip
    done: list[str] = []
    with _publication_errors(), conn.transaction():
        _pin_filter_settings(conn)
        for name, tables, publish, exact_tables, exact_publish in wanted:
            access = _publication_access(conn, name, tables)
            if access.ours:
                line = _set_publication(conn, name, tables, publish, planned)
            else:
                line = _verify_publication(conn, name, exact_tables, exact_publish, exact, access)
            done.extend([line] if line else [])
    return done


def _verify_publication(
    conn: Conn,
    name: str,
    tables: Sequence[TablePlan],
    publish: str,
    planned: Pushdown,
    access: PublicationAccess,
) -> str | None:
    """A publication listener may not create or alter: None when it matches (or, empty, is not needed),
    else ``PrerequisiteError`` with the SQL that makes it match."""
    problems = _publication_problems(conn, name, tables, publish, planned)
    if problems is None and not tables and name != planned.plan.publication:
        return None  # the filtered publication, while no table has a row filter
    if problems == []:
        return None
    what = "does not exist" if problems is None else "does not match the rules: " + "; ".join(problems)
    raise PrerequisiteError(
        f"publication {name!r} {what}; {access.why_not}",
        hint=_statements_text(conn, name, tables, publish, exists=problems is not None),
    )


def ensure_publication(conn: Conn, publication: str, rules: RuleSet, *, all_ops: bool = False) -> list[str]:
    """One publication of the rule tables without pushdown (``listener tail`` shows every change)."""
    tables = [TablePlan(s, t, rules.operations_for(s, t)) for s, t in rules.tables]
    publish = publish_list(OPERATIONS if all_ops else rules.operations)
    with _publication_errors(), conn.transaction():
        line = _set_publication(conn, publication, tables, publish, None)
        return [line] if line else []


def tail_publications(conn: Conn, own: str, config: Config, rules: RuleSet) -> tuple[list[str], str | None]:
    """The publications ``listener tail`` streams, and why they are not its own (None: they are).

    Its own, ``own``, carries every operation of the rule tables; a role that may not create it (see
    `Least privilege` in README) streams the config's publications instead, as a DBA made them."""
    tables = [TablePlan(s, t, rules.operations_for(s, t)) for s, t in rules.tables]
    access = _publication_access(conn, own, tables)
    if access.ours:
        ensure_publication(conn, own, rules, all_ops=True)
        return [own], None
    names = [config.publication, pushdown.filtered_publication(config.publication)]
    found = [
        str(name)
        for (name,) in conn.execute(
            "SELECT pubname FROM pg_publication WHERE pubname = ANY (%s) ORDER BY pubname <> %s",
            [names, config.publication],
        ).fetchall()
    ]
    if not found:
        raise PrerequisiteError(
            f"listener tail cannot make a publication of its own ({access.reason}), "
            f"and publication {config.publication!r} does not exist either",
            hint="run `listener check` and have the SQL it prints run",
        )
    return found, access.reason


def _set_publication(
    conn: Conn, publication: str, tables: Sequence[TablePlan], publish: str, planned: Pushdown | None
) -> str | None:
    """Create or alter ``publication`` (ours) to hold ``tables``; None when it already does (compared with
    ``planned``'s printed filters; never compared without it)."""
    problems = _publication_problems(conn, publication, tables, publish, planned) if planned else None
    if problems == []:
        return None
    exists = problems is not None or bool(
        conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [publication]).fetchone()
    )
    for statement in publication_statements(conn, publication, tables, publish, exists=exists):
        conn.execute(statement)
    pushed = "; ".join(
        t.name
        + (f" ({', '.join(t.columns)})" if t.columns is not None else "")
        + (f" WHERE ({t.row_filter})" if t.row_filter is not None else "")
        for t in tables
        if t.columns is not None or t.row_filter is not None
    )
    details = f": {pushed}" if pushed else ""
    if not exists:
        return f"created publication {publication} ({publish}) for {len(tables)} table(s){details}"
    return f"publication {publication} set to {len(tables)} table(s) ({publish}){details}"


@contextmanager
def _publication_errors() -> Iterator[None]:
    try:
        yield
    except pgerrors.UndefinedTable as exc:
        raise PrerequisiteError(
            f"cannot publish the rule tables: {exc.diag.message_primary}",
            hint="create the table or fix the rule's `table:` (see `listener check`)",
        ) from exc
    except pgerrors.InsufficientPrivilege as exc:
        raise PrerequisiteError(
            f"cannot create or alter the publication: {exc.diag.message_primary}",
            hint="`listener check` prints the SQL to run as the owner of the rule tables",
        ) from exc


def ensure_slot(
    conn: Conn, slot: str, *, checkpoint: int | None = None, schema: str = "listener"
) -> list[str]:
    """Create the logical slot, unless it exists.  ``checkpoint``: where the state database says ingest
    stands on this slot; when the slot is gone, a new one would start at the server's current position and
    the changes in between would never be streamed, so that is refused, naming them."""
    if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone():
        return []
    if checkpoint is not None:
        raise lost_slot(conn, slot, checkpoint, schema)
    try:
        if conn.info.server_version >= versions.FAILOVER_SLOTS:
            # kept on standbys that synchronize slots (sync_replication_slots): it survives a failover
            conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput', failover => true)", [slot]
            )
        else:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
    except pgerrors.DuplicateObject:
        return []  # created concurrently
    except pgerrors.ObjectNotInPrerequisiteState as exc:
        raise PrerequisiteError(
            f"cannot create replication slot {slot!r}: {exc.diag.message_primary}",
            hint=managed.detect(conn).logical,
        ) from exc
    except pgerrors.ConfigurationLimitExceeded as exc:
        raise PrerequisiteError(
            f"cannot create replication slot {slot!r}: {exc.diag.message_primary}",
            hint=managed.detect(conn).set_parameter("max_replication_slots", "a higher value")
            + "; or drop an unused slot",
        ) from exc
    except pgerrors.InsufficientPrivilege as exc:
        raise PrerequisiteError(
            f"cannot create replication slot {slot!r}: {exc.diag.message_primary}",
            hint=_check_replication(conn, managed.detect(conn)).fix or "see `listener check`",
        ) from exc
    return [f"created replication slot {slot}"]


def lost_slot(conn: Conn, slot: str, checkpoint: int, schema: str) -> PrerequisiteError:
    """The slot is gone while the state database still stands on it."""
    forget = sql.SQL("DELETE FROM {}.checkpoints WHERE slot_name = {};").format(
        sql.Identifier(schema), sql.Literal(slot)
    )
    return PrerequisiteError(
        f"replication slot {slot!r} does not exist, but listener's checkpoint on it is at LSN "
        f"{format_lsn(checkpoint)}: the slot was dropped (by hand, by a failover that did not carry it, or "
        "by a service that removes inactive slots), and the changes committed since that LSN are not in "
        "the WAL any slot keeps",
        hint=f"to go on from now, accepting that gap: {forget.as_string(conn)}  -- in the state database, "
        "then `listener run`, and `listener backfill` the rule tables to re-read their rows",
    )


def drop(config: Config, source_dsn: str, state_dsn: str | None = None) -> list[str]:
    """Drop the slot and both publications (the state schema and its events stay; with ``state_dsn``,
    the slot's checkpoint goes with the slot)."""
    done: list[str] = []
    with conninfo.connection(source_dsn) as conn:
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
        for publication in (config.publication, pushdown.filtered_publication(config.publication)):
            row = conn.execute(
                "SELECT pg_has_role(pubowner, 'USAGE'), pubowner::regrole::text FROM pg_publication"
                " WHERE pubname = %s",
                [publication],
            ).fetchone()
            if row is None:
                continue
            statement = sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication))
            if row[0]:
                conn.execute(statement)
                done.append(f"dropped publication {publication}")
            else:
                done.append(
                    f"left publication {publication}: its owner is {row[1]}, who may remove it with "
                    f"{statement.as_string(conn)};"
                )
    if state_dsn is not None:
        with conninfo.connection(state_dsn, what="the state database") as conn:
            forgotten = store.forget_checkpoint(conn, config.state_schema, config.slot)
        if forgotten is not None:
            done.append(f"forgot the checkpoint of slot {config.slot} (at {format_lsn(forgotten)})")
    return done
