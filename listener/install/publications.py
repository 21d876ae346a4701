"""The publications the rules need: the tables and operations to publish, the pushdown plan (row
filters and column lists, PostgreSQL 15+, planned by :mod:`listener.rules.pushdown`) probed against
the server, and the statements that create or correct the publications.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from listener.defaults import PROBE_LOCK_TIMEOUT_MS
from listener.errors import INSUFFICIENT_PRIVILEGE, UNDEFINED_TABLE, PrerequisiteError, from_driver
from listener.pg.conninfo import Conn
from listener.rules import pushdown
from listener.rules.catalog import TableInfo, read_tables, rule_tables
from listener.rules.compile import OPERATIONS, RuleSet
from listener.rules.config import Config, qualified_name
from listener.rules.pushdown import PublicationPlan, Refusal, TablePlan, publish_list

# The constants of a row filter are parsed once, when the publication is created, under that session's
# settings: `at > '2024-01-01'` would otherwise mean midnight in the session's time zone, while
# listener.rules.predicate evaluates it in UTC, and 'a\b' a backspace with standard_conforming_strings off.
# Every session pins those (listener.pg.conninfo.SESSION_SETTINGS); filters are also printed (pg_get_expr)
# under them.  Built-in names resolve in pg_catalog only.
FILTER_SETTINGS = ("SET LOCAL search_path = pg_catalog, pg_temp",)


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
        raise from_driver(
            exc,
            "cannot try the planned row filters and column lists on the server",
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
        # SQL that listener.rules.predicate deparsed from the rule's parsed `when:`, not text from elsewhere.
        parts.append(sql.SQL("WHERE ({})").format(sql.SQL(row_filter)))
    return sql.SQL(" ").join(parts)


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


def publication_tables(conn: Conn, publication: str) -> set[str]:
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", [publication]
    ).fetchall()
    return {qualified_name(s, t) for s, t in rows}


def publication_problems(
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
    have = publication_tables(conn, name)
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


def publication_access(conn: Conn, name: str, tables: Sequence[TablePlan]) -> PublicationAccess:
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


def statements_text(conn: Conn, name: str, tables: Sequence[TablePlan], publish: str, *, exists: bool) -> str:
    """:func:`publication_statements` as lines a DBA can paste into psql."""
    statements = publication_statements(conn, name, tables, publish, exists=exists)
    return "\n".join(f"{statement.as_string(conn)};" for statement in statements)


def _columns(columns: Sequence[str] | None) -> str:
    return "all columns" if columns is None else f"columns ({', '.join(columns)})"


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
            access = publication_access(conn, name, tables)
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
    problems = publication_problems(conn, name, tables, publish, planned)
    if problems is None and not tables and name != planned.plan.publication:
        return None  # the filtered publication, while no table has a row filter
    if problems == []:
        return None
    what = "does not exist" if problems is None else "does not match the rules: " + "; ".join(problems)
    raise PrerequisiteError(
        f"publication {name!r} {what}; {access.why_not}",
        hint=statements_text(conn, name, tables, publish, exists=problems is not None),
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
    access = publication_access(conn, own, tables)
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
    problems = publication_problems(conn, publication, tables, publish, planned) if planned else None
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
        raise from_driver(
            exc,
            "cannot publish the rule tables",
            fixes={UNDEFINED_TABLE: "create the table or fix the rule's `table:` (see `listener check`)"},
        ) from exc
    except pgerrors.InsufficientPrivilege as exc:
        raise from_driver(
            exc,
            "cannot create or alter the publication",
            fixes={
                INSUFFICIENT_PRIVILEGE: "`listener check` prints the SQL to run as the owner of the rule "
                "tables"
            },
        ) from exc
