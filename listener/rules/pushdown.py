"""Pushdown: the part of the rules the server applies itself, so rows no rule wants never leave it.

PostgreSQL 15+ publications take a row filter (``WHERE``) and a column list per table.  Both are planned
here from the compiled rules, purely; :mod:`listener.install` creates the publications (``listener init``),
compares them (``listener check``) and ingest streams them.  listener's own evaluator still applies every
rule afterwards: pushdown only removes rows and columns no rule can use.

Why the plan is shaped like this (each point checked on a real server, see tests/integration/
test_pushdown.py):

* A row filter in a publication that publishes UPDATE or DELETE *transforms* changes: an UPDATE whose old
  row fails the filter and whose new row passes is sent as an INSERT (the reverse as a DELETE), and the
  filter may only use replica identity columns.  A rule would then see an insert that was an update.  So a
  table gets a row filter only when all its rules listen to insert (and perhaps truncate), and it is then
  published by a second publication, ``<publication>_filtered``, that publishes only those.
* One row filter per table: the OR of its insert rules' filters, and only when every one has a pushable
  ``when:`` (a rule without one wants every row).
* A table is in exactly one of the two publications: in two, PostgreSQL ORs their filters (none wins)
  and refuses differing column lists.
* PostgreSQL 14 has neither row filters nor column lists, but the second publication still keeps the
  tables whose rules listen only to insert (and truncate) out of the main one's update/delete: a table
  without a primary key watched for inserts would otherwise refuse the application's UPDATEs.
* A column list is the union of what the rules use (``payload:``, ``when:``, ``key:``, ``changed:``) plus
  the replica identity (PostgreSQL requires it where updates/deletes are published; it is also the default
  flow-control key), and only when every rule of the table names its columns.  Never for a REPLICA
  IDENTITY FULL table published for update/delete: every column is identity there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from listener.pg.publications import FILTERED_SUFFIX, filtered_publication
from listener.pg.versions import major
from listener.rules.catalog import TableInfo
from listener.rules.compile import OPERATIONS, CompiledRule, RuleSet
from listener.rules.config import qualified_name

MIN_SERVER_VERSION = 150000  # publication row filters and column lists: PostgreSQL 15
ROW_OPERATIONS = frozenset({"insert", "update", "delete"})
FILTERED_OPERATIONS = frozenset({"insert", "truncate"})  # what a table with a row filter may listen to


def publish_list(operations: Iterable[str]) -> str:
    """``publish = '...'`` for these operations, in PostgreSQL's order (at least insert)."""
    wanted = set(operations)
    return ", ".join([op for op in OPERATIONS if op in wanted] or ["insert"])


@dataclass(frozen=True, slots=True)
class Refusal:
    """What the server said when it was asked to accept a table's planned row filter or column list."""

    row_filter: str | None = None
    columns: str | None = None


@dataclass(frozen=True, slots=True)
class TablePlan:
    """One rule table: which publication carries it, with which row filter and column list, and for each
    of its rules why a filter or a column list was not pushed down (absent: pushed, or nothing to push)."""

    schema: str
    table: str
    operations: frozenset[str]  # what its rules listen to
    row_filter: str | None = None  # the OR of its rules' filters, over bare column names
    rule_filters: tuple[tuple[str, str], ...] = ()  # (rule, its own part of the OR)
    columns: tuple[str, ...] | None = None  # the column list, in table order; None: all columns
    insert_only: bool = False  # in the second publication without a row filter (PostgreSQL 14)
    filter_reasons: tuple[tuple[str, str], ...] = ()  # (rule, why no row filter)
    columns_reasons: tuple[tuple[str, str], ...] = ()  # (rule, why no column list)

    @property
    def name(self) -> str:
        return qualified_name(self.schema, self.table)

    @property
    def filtered(self) -> bool:
        """Whether the table belongs to the filtered publication (it has a row filter, or on PostgreSQL 14
        its rules listen only to insert)."""
        return self.row_filter is not None or self.insert_only

    def filter_reason(self, rule: str) -> str | None:
        return dict(self.filter_reasons).get(rule)

    def columns_reason(self, rule: str) -> str | None:
        return dict(self.columns_reasons).get(rule)

    def rule_filter(self, rule: str) -> str | None:
        return dict(self.rule_filters).get(rule)


@dataclass(frozen=True, slots=True)
class PublicationPlan:
    """Both publications: ``publication`` (the config's) and ``filtered``, the insert-only one."""

    publication: str
    filtered: str | None
    server_version: int
    tables: tuple[TablePlan, ...] = ()
    unsupported: str | None = None  # why nothing is pushed down at all (an old server)
    _by_name: dict[tuple[str, str], TablePlan] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({(t.schema, t.table): t for t in self.tables})

    def table(self, schema: str, table: str) -> TablePlan | None:
        return self._by_name.get((schema, table))

    @property
    def main_tables(self) -> tuple[TablePlan, ...]:
        return tuple(t for t in self.tables if not t.filtered)

    @property
    def filtered_tables(self) -> tuple[TablePlan, ...]:
        return tuple(t for t in self.tables if t.filtered)

    @property
    def main_operations(self) -> frozenset[str]:
        """What the main publication publishes: every operation a rule of one of its tables listens to."""
        return frozenset(op for t in self.main_tables for op in t.operations)

    @property
    def main_publish(self) -> str:
        return publish_list(self.main_operations)

    @property
    def filtered_publish(self) -> str:
        return publish_list(op for t in self.filtered_tables for op in t.operations)

    def publication_of(self, table: TablePlan) -> str:
        return self.filtered if table.filtered and self.filtered is not None else self.publication


def plan_publications(
    rules: RuleSet,
    tables: Mapping[str, TableInfo | None],
    server_version: int,
    *,
    publication: str,
    refused: Mapping[tuple[str, str], Refusal] | None = None,
) -> PublicationPlan:
    """Plan both publications for ``rules`` (compiled against the catalog, see ``RuleSet.from_config``).

    ``tables`` is the catalog info by table name as rules write it (``public.orders``); a table missing
    there gets no pushdown.  ``refused`` holds what the server refused when asked (see
    ``setup.probe_pushdown``): those tables fall back, with the server's reason."""
    if server_version < MIN_SERVER_VERSION:
        why = f"PostgreSQL {major(server_version)} has no publication row filters or column lists (15+)"
        plain = []
        for schema, name in rules.tables:
            operations = rules.operations_for(schema, name)
            insert_only = "insert" in operations and operations <= FILTERED_OPERATIONS
            plain.append(TablePlan(schema, name, operations, insert_only=insert_only))
        filtered = filtered_publication(publication)
        return PublicationPlan(publication, filtered, server_version, tuple(plain), unsupported=why)
    refused = refused or {}
    filters = [
        _plan_filter(schema, name, _table_rules(rules, schema, name), tables, refused.get((schema, name)))
        for schema, name in rules.tables
    ]
    # Column lists depend on where each table went: the main publication publishes the union of its
    # tables' operations, so a table there is published for update/delete when any of them is.
    main_ops = frozenset(op for t in filters if not t.filtered for op in t.operations)
    planned = tuple(
        _plan_columns(
            t, _table_rules(rules, t.schema, t.table), tables, main_ops, refused.get((t.schema, t.table))
        )
        for t in filters
    )
    return PublicationPlan(publication, filtered_publication(publication), server_version, planned)


def _table_rules(rules: RuleSet, schema: str, table: str) -> list[CompiledRule]:
    return [r for r in rules.rules if r.source == "table" and (r.schema, r.table) == (schema, table)]


def _transform_reason(rule: CompiledRule) -> tuple[str, str]:
    """(own, others') reason why a rule on update/delete keeps its table from having a row filter."""
    op = "update" if "update" in rule.operations else "delete"
    becomes = "an INSERT" if op == "update" else "a DELETE"
    why = f"PostgreSQL would turn a filtered UPDATE into {becomes}"
    return f"{op} rules: {why}", f"rule {rule.name} listens to {op} on the same table: {why}"


def _plan_filter(
    schema: str,
    name: str,
    table_rules: list[CompiledRule],
    tables: Mapping[str, TableInfo | None],
    refusal: Refusal | None,
) -> TablePlan:
    operations = frozenset(op for r in table_rules for op in r.operations)
    plan = TablePlan(schema, name, operations)
    inserts = [r for r in table_rules if "insert" in r.operations]
    row_rules = [r for r in table_rules if r.operations & ROW_OPERATIONS]
    if tables.get(qualified_name(schema, name)) is None:
        reasons = tuple((r.name, f"{plan.name} does not exist") for r in row_rules)
        return TablePlan(schema, name, operations, filter_reasons=reasons)
    own: dict[str, str] = {}  # a rule's own reason
    blockers: list[str] = []  # the reasons other rules of the table read, the most fundamental first
    for r in table_rules:
        if r.operations & {"update", "delete"}:
            own[r.name], theirs = _transform_reason(r)
            blockers.append(theirs)
    parts: list[tuple[str, str]] = []
    for r in inserts:
        if r.predicate is None:
            own.setdefault(r.name, "no `when:`: every insert matches")
            blockers.append(f"rule {r.name} on the same table has no `when:` and takes every insert")
            continue
        sql, why = r.predicate.row_filter()
        if sql is not None:
            why = _may_raise(sql) or ""
            sql = None if why else sql
        if sql is None:
            own.setdefault(r.name, f"`when:` cannot be a row filter: {why}")
            blockers.append(f"rule {r.name}'s `when:` cannot be a row filter ({why})")
            continue
        parts.append((r.name, sql))
    if refusal is not None and refusal.row_filter is not None:
        blockers.insert(0, f"PostgreSQL refused the row filter: {refusal.row_filter}")
    if not inserts:
        return TablePlan(schema, name, operations, filter_reasons=tuple(own.items()))
    if blockers:
        reasons = tuple((r.name, own.get(r.name, blockers[0])) for r in row_rules)
        return TablePlan(schema, name, operations, filter_reasons=reasons)
    distinct = list(dict.fromkeys(sql for _, sql in parts))
    row_filter = distinct[0] if len(distinct) == 1 else " OR ".join(f"({sql})" for sql in distinct)
    return TablePlan(schema, name, operations, row_filter=row_filter, rule_filters=tuple(parts))


def _plan_columns(
    plan: TablePlan,
    table_rules: list[CompiledRule],
    tables: Mapping[str, TableInfo | None],
    main_ops: frozenset[str],
    refusal: Refusal | None,
) -> TablePlan:
    info = tables.get(plan.name)
    row_rules = [r for r in table_rules if r.operations & ROW_OPERATIONS]
    if info is None or not row_rules:
        return plan
    own: dict[str, str] = {}
    blockers: list[str] = []
    for r in row_rules:
        if not r.payload:
            own[r.name] = "no `payload:`: the workflow gets whole rows"
            blockers.append(f"rule {r.name} on the same table has no `payload:` and needs whole rows")
    published_ops = plan.operations if plan.filtered else main_ops
    if info.full_old_row and published_ops & {"update", "delete"}:
        blockers.insert(
            0,
            f"{plan.name} has REPLICA IDENTITY FULL and is published for update/delete: "
            "every column is part of the identity",
        )
    wanted = set(info.key_columns)
    for r in row_rules:
        wanted.update(column for _, _, column in r.payload)
        wanted.update(column for _, column in r.key_fields)
        wanted.update(r.key_columns if r.gated and not r.key_fields else ())  # the default key
        wanted.update(r.changed)
        if r.predicate is not None:
            wanted.update(column for _, column in r.predicate.references)
    columns = tuple(c for c in info.columns if c in wanted)
    if len(columns) == len(info.columns):
        blockers.append("the rules use every column")
    if refusal is not None and refusal.columns is not None:
        blockers.insert(0, f"PostgreSQL refused the column list: {refusal.columns}")
    if blockers:
        return replace(plan, columns_reasons=tuple((r.name, own.get(r.name, blockers[0])) for r in row_rules))
    return replace(plan, columns=columns)


# ---------------------------------------------------------------------------------------------------------
# What `listener check` says about a rule.


def describe_rule(rule: CompiledRule, plan: PublicationPlan | None) -> str:
    """What a rule matches and, for a table rule, what of it the server applies, e.g.
    ``insert on public.orders when new.amount > 100 → workflows.orders:big (priority 0); pushed down:
    row filter (amount > 100), columns (id, amount)``."""
    target = f" → {rule.workflow} (priority {rule.priority})"
    if rule.source == "message":
        return f"message prefix {rule.topic!r}{target}"
    if rule.source == "channel":
        return f"NOTIFY channel {rule.topic!r} (at most once: lost while listener is down){target}"
    if rule.source in ("webhook", "queue"):
        when = f" when {rule.predicate.text}" if rule.predicate is not None else ""
        return f"{rule.source} {rule.topic!r}{when}{target}"
    ops = ", ".join(op for op in OPERATIONS if op in rule.operations)
    what = f"{ops} on {qualified_name(rule.schema, rule.table)}"
    if rule.predicate is not None:
        what += f" when {rule.predicate.text}"
    if rule.changed:
        what += f" if changed ({', '.join(rule.changed)})"
    return f"{what}{target}; pushed down: {pushdown_summary(rule, plan)}"


def pushdown_summary(rule: CompiledRule, plan: PublicationPlan | None) -> str:
    """``row filter (...)``, ``columns (...)``, both, or ``no (why)``."""
    if plan is not None and plan.unsupported is not None:
        return f"no ({plan.unsupported})"
    table = plan.table(rule.schema, rule.table) if plan is not None else None
    if table is None:
        return "no (the rules of this table could not all be compiled)"
    if not rule.operations & ROW_OPERATIONS:
        return "nothing to push (a truncate carries no rows)"
    pushed: list[str] = []
    missing: list[str] = []
    own = table.rule_filter(rule.name)
    if own is not None:
        others = [name for name, sql in table.rule_filters if name != rule.name and sql != own]
        also = f", OR-ed with {_rules_of(others)}" if others else ""
        pushed.append(f"row filter ({own}{also})")
    elif (why := table.filter_reason(rule.name)) is not None:
        missing.append(why)
    if table.columns is not None:
        pushed.append(f"columns ({', '.join(table.columns)})")
    elif (why := table.columns_reason(rule.name)) is not None:
        missing.append(f"columns: {why}")
    if not pushed:
        return f"no ({'; '.join(missing)})"
    if missing:
        return f"{', '.join(pushed)}; not pushed: {'; '.join(missing)}"
    return ", ".join(pushed)


def _rules_of(names: list[str]) -> str:
    """``rule a's`` / ``rules a's and b's``."""
    owned = [f"{name}'s" for name in names]
    if len(owned) == 1:
        return f"rule {owned[0]}"
    return f"rules {', '.join(owned[:-1])} and {owned[-1]}"


__all__ = [
    "FILTERED_SUFFIX",
    "MIN_SERVER_VERSION",
    "PublicationPlan",
    "Refusal",
    "TablePlan",
    "describe_rule",
    "filtered_publication",
    "plan_publications",
    "publish_list",
    "pushdown_summary",
]


_RAISING_OPERATORS = frozenset({"+", "-", "*", "/", "%", "^", "||"})


def _may_raise(sql: str) -> str | None:
    """Why a row filter could raise an error while the server decodes a row (arithmetic: overflow or
    division by zero; a cast or function applied to a column: invalid input), else None.

    Such a filter must stay in listener: raised inside the walsender, the error would fail decoding at
    that row on every reconnect, forever -- the evaluator instead stops once, naming rule and LSN."""
    import pglast
    from pglast import ast, visitors

    try:
        tree = pglast.parse_sql(f"SELECT {sql}")
    except pglast.parser.ParseError:  # pragma: no cover - the filter was deparsed by pglast
        return "it does not parse"
    found: list[str] = []

    class Visitor(visitors.Visitor):
        def visit_A_Expr(self, _ancestors: object, node: ast.A_Expr) -> None:
            names = [getattr(n, "sval", "") for n in node.name or ()]
            if names and names[-1] in _RAISING_OPERATORS:
                found.append(f"the operator {names[-1]} can raise (overflow, division by zero)")

        def visit_TypeCast(self, _ancestors: object, node: ast.TypeCast) -> None:
            if not isinstance(node.arg, ast.A_Const):
                found.append("a cast of a column can raise on a value it cannot convert")

        def visit_FuncCall(self, _ancestors: object, node: ast.FuncCall) -> None:
            found.append("a function call can raise on a value")

    Visitor()(tree)
    if found:
        return f"{found[0]}; a row filter that raises would stop decoding at that row for good"
    return None
