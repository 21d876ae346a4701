"""``listener check``: every prerequisite (server, rules, replication, slot, tables, publications), each
failure naming what is wrong and the exact SQL or config change that fixes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from listener.errors import ConfigError
from listener.install.failover import check_failover
from listener.install.privileges import CheckResult, check_replication, state_schema_fix
from listener.install.publications import (
    Pushdown,
    plan_pushdown,
    publication_access,
    publication_problems,
    publication_tables,
    read_catalog,
    statements_text,
)
from listener.install.slots import lost_slot
from listener.pg import conninfo, managed, versions
from listener.pg.conninfo import Conn
from listener.queue import migrations
from listener.rules.compile import CompiledRule, RuleSet, compile_rule
from listener.rules.config import Config, qualified_name
from listener.rules.pushdown import TablePlan, describe_rule

# ---------------------------------------------------------------------------------------------------------
# `listener check`


def check(
    config: Config, source_dsn: str, state_dsn: str, *, standby_dsn: str | None = None
) -> list[CheckResult]:
    """Run every prerequisite check, and compile and describe every rule; never raises for a failed check
    (only for no connection, or a rule table locked by others for longer than PROBE_LOCK_TIMEOUT_MS).
    ``standby_dsn``: a standby that should keep the slot (``slot_failover: true``), checked too."""
    structural = RuleSet(config.rules)
    results: list[CheckResult] = []
    add = results.append
    with conninfo.connection(source_dsn) as conn:
        service = managed.detect(conn)
        results.extend(check_server(conn.info.server_version))
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
        add(check_replication(conn, service))
        results.extend(_check_slot(conn, config, service))
        results.extend(check_failover(conn, config, state_dsn=state_dsn, standby_dsn=standby_dsn))
        slot_exists = bool(
            conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [config.slot]).fetchone()
        )
        rule_results, planned = _check_rules(conn, config)
        results.extend(_check_tables(conn, config, structural, planned))
        results.extend(rule_results)
        results.extend(_check_publications(conn, structural, planned))
    with conninfo.connection(state_dsn, what="the state database") as conn:
        version = migrations.schema_version(conn, config.state_schema)
        latest = len(migrations.load_migrations())
        if version == latest:
            add(CheckResult("state schema", True, f"schema {config.state_schema} at version {version}"))
        else:
            have = "missing" if version is None else f"at version {version}"
            add(
                CheckResult(
                    "state schema",
                    False,
                    f"state schema {config.state_schema} is {have}, listener needs version {latest}",
                    state_schema_fix(conn, config.state_schema),
                )
            )
        checkpoint = migrations.checkpoint(conn, config.state_schema, config.slot)
        if checkpoint is not None and not slot_exists:
            lost = lost_slot(conn, config.slot, checkpoint, config.state_schema)
            add(CheckResult("checkpoint", False, lost.message, lost.hint))
    return results


def check_server(server_version: int) -> list[CheckResult]:
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
        have = publication_tables(conn, plan.publication)
        if plan.filtered is not None:
            have |= publication_tables(conn, plan.filtered)
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
    problems = publication_problems(conn, name, tables, publish, planned)
    access = publication_access(conn, name, tables)
    if problems is None:
        if access.ours:
            return CheckResult(label, True, f"publication {name!r} will be created by init", warning=True)
        if not tables and name != planned.plan.publication:
            return CheckResult(label, True, f"publication {name!r} is not needed: no table has a row filter")
        return CheckResult(
            label,
            False,
            f"publication {name!r} does not exist, and {access.why_not}",
            statements_text(conn, name, tables, publish, exists=False),
        )
    if problems:
        detail = f"publication {name!r}: " + "; ".join(problems)
        if access.ours:
            return CheckResult(label, False, detail, "listener init")
        fix = statements_text(conn, name, tables, publish, exists=True)
        return CheckResult(label, False, f"{detail}; {access.why_not}", fix)
    return CheckResult(
        label, True, f"publication {name!r} matches the rules: {len(tables)} table(s), {publish}"
    )
