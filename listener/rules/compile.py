"""Rules compiled for matching: which rules fire for a change, and what each makes of it.  Pure and
synchronous.

Matching by (table, operation) is a dictionary lookup prepared once at load time; the ingest loop caches
the result per relation OID.  A rule's ``when:`` is compiled by :mod:`listener.rules.predicate` against the
table's columns read from the catalog (:mod:`listener.rules.catalog`), its ``changed:`` and ``payload:`` are
checked against them too: a mistake is a ``ConfigError`` naming the rule, file:line and the fix, raised
before anything streams.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from listener.errors import ConfigError
from listener.rules.catalog import TableInfo, read_tables_async, rule_tables
from listener.rules.config import Config, Rule, WorkflowLimit, key_fields
from listener.rules.config.names import QUEUE_ROOTS, WEBHOOK_ROOTS, request_key_fields, request_ref
from listener.rules.predicate import ColumnType, MissingValue, PredicateError

if TYPE_CHECKING:
    from listener.rules.predicate import Predicate

OPERATIONS = ("insert", "update", "delete", "truncate")

Locate = Callable[[str, str], tuple[str | None, int | None]]  # (rule, key) -> (file, line)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    schema: str
    table: str
    operations: frozenset[str]
    workflow: str
    # flow control: gated runs are claimed under the limits of their workflow and key
    gated: bool = False
    key_limit: int | None = None
    ordered: bool = False
    # ("new" | "old", column) of the key template; () = PK.  A webhook rule's: (request part, path), as
    # listener.rules.config.names.request_ref reads them
    key_fields: tuple[tuple[str, str], ...] = ()
    # without a key template: the columns of the default key, the table's row key (TableInfo.row_key);
    # () when unknown (no catalog), then the replica identity columns the server sends are used
    key_columns: tuple[str, ...] = ()
    priority: int = 0
    predicate: Predicate | None = None  # when:
    changed: tuple[str, ...] = ()  # changed: (updates match only if one of these changed)
    # payload: (output name, "new" | "old", column); a webhook rule's: (output name, request part, path)
    payload: tuple[tuple[str, str, str], ...] = ()
    source: str = "table"  # table, message, channel, webhook, queue or schedule
    topic: str = ""  # the message prefix, the channel, the webhook's or queue's name of a non-table rule

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def filters(self) -> bool:
        """Whether a change of the right table and operation may still not match (when:, changed:)."""
        return self.predicate is not None or bool(self.changed)

    @property
    def needs_values(self) -> bool:
        """Whether matching or shaping this rule's events looks at the row at ingest time; otherwise its
        events may be stored compactly (raw) and expanded later."""
        return self.gated or self.filters or bool(self.payload)


def _error(locate: Locate | None, rule: str, key: str, message: str, hint: str) -> ConfigError:
    file, line = locate(rule, key) if locate is not None else (None, None)
    return ConfigError(message, file=file, line=line, rule=rule, hint=hint)


def _column_hint(table: TableInfo, column: str) -> str:
    close = difflib.get_close_matches(column, list(table.columns), n=1)
    columns = ", ".join(table.columns)
    return (
        f"did you mean {close[0]!r}? ({table.name} has {columns})" if close else f"{table.name} has {columns}"
    )


# What a webhook rule's `when:` sees of a request (listener.http.webhooks builds the values).
WEBHOOK_COLUMNS = {
    "body": ColumnType("body", 3802, "jsonb", "U"),  # the body, parsed (JSON, or a form as an object)
    "headers": ColumnType("headers", 3802, "jsonb", "U"),  # {"lower-case name": "value", ...}
    "query": ColumnType("query", 3802, "jsonb", "U"),  # {"name": "value", ...}
    "method": ColumnType("method", 25, "text", "S"),
    "path": ColumnType("path", 25, "text", "S"),
}


# What a queue rule's `when:` sees of a broker message (listener.ingest.queues builds the values).
QUEUE_COLUMNS = {
    "body": ColumnType("body", 3802, "jsonb", "U"),  # the body, read as the queue's `format:` says
    "headers": ColumnType("headers", 3802, "jsonb", "U"),  # {"name": "value", ...}
    "key": ColumnType("key", 25, "text", "S"),  # the message key (Kafka), else NULL
    "topic": ColumnType("topic", 25, "text", "S"),  # the Kafka topic, the Redis stream, the NATS subject
}


def _parts_predicate(rule: Rule, locate: Locate | None) -> Predicate | None:
    """A webhook or queue rule's ``when:``, over the parts of the request or message."""
    if rule.when is None:
        return None
    from listener.rules.predicate import compile_predicate

    columns, sees = (
        (QUEUE_COLUMNS, "a queue rule sees body, headers (jsonb), key, topic (text)")
        if rule.queue is not None
        else (WEBHOOK_COLUMNS, "a webhook rule sees body, headers, query (jsonb), method, path (text)")
    )
    try:
        return compile_predicate(rule.when, columns)
    except PredicateError as exc:
        hint = f"{_predicate_hint(exc)}; {sees}"
        raise _error(locate, rule.name, "when", f"when: {exc.message}", hint) from exc


def _request_part(ref: str, roots: tuple[str, ...]) -> tuple[str, str]:
    part = request_ref(ref, roots)
    assert part is not None, ref  # checked when the config was read
    return part


def compile_rule(
    rule: Rule,
    limited: frozenset[str] = frozenset(),
    table: TableInfo | None = None,
    *,
    collation: str = "C",
    locate: Locate | None = None,
    structural: bool = False,
) -> CompiledRule:
    """One rule, checked against its table's catalog info.  ``structural``: without that info, only what
    the rule listens to (for setup, which needs tables and operations, not predicates)."""
    name = rule.name
    # a workflow with `limits:` is claimed under them, whatever the rule's source
    gated = rule.gated or rule.workflow in limited
    if rule.source in ("webhook", "queue"):
        topic = rule.webhook if rule.webhook is not None else rule.queue
        roots = WEBHOOK_ROOTS if rule.webhook is not None else QUEUE_ROOTS
        assert topic is not None
        return CompiledRule(
            name, "", "", frozenset(), rule.workflow, priority=rule.priority, source=rule.source,
            topic=topic, predicate=_parts_predicate(rule, locate), gated=gated,
            key_limit=rule.key_concurrency if not rule.ordered else 1, ordered=rule.ordered,
            key_fields=tuple(request_key_fields(rule.key, roots) or ()) if rule.key else (),
            payload=tuple((out, *_request_part(ref, roots)) for out, ref in (rule.payload or {}).items()),
        )  # fmt: skip
    if rule.source != "table":
        topic = rule.message if rule.message is not None else rule.channel
        assert topic is not None
        return CompiledRule(
            name, "", "", frozenset(), rule.workflow, priority=rule.priority, source=rule.source, topic=topic,
            gated=gated,
        )  # fmt: skip
    needs_catalog = rule.when is not None or rule.changed or rule.payload
    if needs_catalog and table is None and structural:
        return CompiledRule(
            name, rule.schema_name, rule.table_name, frozenset(rule.operations), rule.workflow,
            gated=rule.gated or rule.workflow in limited, priority=rule.priority,
        )  # fmt: skip
    if needs_catalog and table is None:
        raise _error(
            locate, name, "table", f"table {rule.table} does not exist, so `when:`/`changed:`/`payload:` "
            "cannot be checked", f"create {rule.table}, or fix `table:`"
        )  # fmt: skip
    if table is not None and rule.gated and not rule.key:
        _check_row_key(rule, table, locate)
    predicate = None
    if rule.when is not None:
        assert table is not None
        from listener.rules.predicate import compile_predicate

        try:
            predicate = compile_predicate(rule.when, table.columns, collation=collation)
        except PredicateError as exc:
            raise _error(locate, name, "when", f"when: {exc.message}", _predicate_hint(exc)) from exc
    for column in rule.changed or ():
        assert table is not None
        if column not in table.columns:
            raise _error(
                locate,
                name,
                "changed",
                f"changed: no column {column!r} in {table.name}",
                _column_hint(table, column),
            )
    if table is not None:
        _check_old_values(rule, table, predicate, locate)
    payload: list[tuple[str, str, str]] = []
    for out, ref in (rule.payload or {}).items():
        assert table is not None
        side, _, column = ref.partition(".")
        if column not in table.columns:
            raise _error(
                locate, name, "payload", f"payload.{out}: no column {column!r} in {table.name}",
                _column_hint(table, column),
            )  # fmt: skip
        payload.append((out, side, column))
    return CompiledRule(
        name,
        rule.schema_name,
        rule.table_name,
        frozenset(rule.operations),
        rule.workflow,
        gated=gated,
        key_limit=rule.key_concurrency if not rule.ordered else 1,
        ordered=rule.ordered,
        key_fields=tuple(key_fields(rule.key)) if rule.key else (),
        key_columns=table.row_key if table is not None and not rule.key else (),
        priority=rule.priority,
        predicate=predicate,
        changed=tuple(rule.changed or ()),
        payload=tuple(payload),
    )


def _check_row_key(rule: Rule, table: TableInfo, locate: Locate | None) -> None:
    """``ordered:`` / ``key_concurrency:`` without ``key:`` key runs by the row's primary key: a table with
    none (nor a unique index that identifies a row) cannot be keyed -- refused, with the fix.  (Never by
    REPLICA IDENTITY FULL's columns: every change of a row would have a key of its own.)"""
    if table.row_key:
        return
    setting = "ordered" if rule.ordered else "key_concurrency"
    first = next(iter(table.columns), "id")
    raise _error(
        locate,
        rule.name,
        setting,
        f"{setting}: runs are keyed by the row's primary key by default, but {table.name} has no primary key "
        "(nor a unique index over NOT NULL columns without WHERE or expressions)",
        f"ALTER TABLE {table.name} ADD PRIMARY KEY (...); "
        f'or give the rule a key, e.g. key: "{{new.{first}}}"',
    )


def _check_old_values(
    rule: Rule, table: TableInfo, predicate: Predicate | None, locate: Locate | None
) -> None:
    """Old values beyond the replica identity exist only with REPLICA IDENTITY FULL: a rule that reads
    them on a table without it would see NULL where the server sent nothing -- refused, with the fix."""
    if table.full_old_row or not set(rule.operations) & {"update", "delete"}:
        return
    needs: list[tuple[str, str]] = []  # (config key, column)
    if predicate is not None:
        needs += [("when", c) for side, c in sorted(predicate.references) if side == "old"]
    if "update" in rule.operations:
        needs += [("changed", c) for c in rule.changed or ()]
    needs += [
        ("payload", ref.partition(".")[2]) for ref in (rule.payload or {}).values() if ref.startswith("old.")
    ]
    for key, column in needs:
        if column in table.key_columns:
            continue
        identity = {"d": "DEFAULT", "i": "USING INDEX", "n": "NOTHING"}.get(table.identity, table.identity)
        keys = ", ".join(table.key_columns) or "none"
        raise _error(
            locate,
            rule.name,
            key,
            f"{key}: needs the old value of {column!r}, but {table.name} has REPLICA IDENTITY {identity}: "
            f"its updates and deletes carry old values only for the identity columns ({keys})",
            f"ALTER TABLE {table.name} REPLICA IDENTITY FULL;",
        )


def _predicate_hint(exc: PredicateError) -> str:
    return exc.hint or "see README 'Rule predicates' for what `when:` supports"


def changed_matches(
    rule: CompiledRule, new: Mapping[str, bytes | None] | None, old: Mapping[str, bytes | None] | None
) -> bool:
    """An update passes ``changed:`` when one of its columns has a new value.  The rows map column names
    to the values the server sent: a column missing from ``new`` was not sent (an unchanged TOAST value)
    and counts as unchanged; one missing from ``old`` raises :class:`MissingValue` (never a guess)."""
    for column in rule.changed:
        if new is None or column not in new:
            continue
        if old is None or column not in old:
            raise MissingValue("old", column)
        if new[column] != old[column]:
            return True
    return False


class RuleSet:
    """All rules of a config, indexed by (schema, table) and operation, and by message prefix / channel."""

    def __init__(
        self,
        rules: Iterable[Rule],
        limits: Iterable[WorkflowLimit] = (),
        *,
        tables: Mapping[str, TableInfo | None] | None = None,
        collation: str = "C",
        locate: Locate | None = None,
    ) -> None:
        limited = frozenset(limit.workflow for limit in limits)
        # Without catalog info the set is structural: tables and operations, no predicates (setup's view).
        self.structural = tables is None
        found = tables or {}
        self.rules = tuple(
            compile_rule(
                r,
                limited,
                found.get(r.table or ""),
                collation=collation,
                locate=locate,
                structural=self.structural,
            )
            for r in rules
        )
        index: dict[tuple[str, str], dict[str, list[CompiledRule]]] = {}
        self.messages: dict[str, tuple[CompiledRule, ...]] = {}
        self.channels: dict[str, tuple[CompiledRule, ...]] = {}
        self.webhooks: dict[str, tuple[CompiledRule, ...]] = {}  # by the `webhooks:` entry's name
        self.queues: dict[str, tuple[CompiledRule, ...]] = {}  # by the `queues:` entry's name
        for rule in self.rules:
            if rule.source == "webhook":
                self.webhooks[rule.topic] = (*self.webhooks.get(rule.topic, ()), rule)
                continue
            if rule.source == "queue":
                self.queues[rule.topic] = (*self.queues.get(rule.topic, ()), rule)
                continue
            if rule.source == "message":
                self.messages[rule.topic] = (*self.messages.get(rule.topic, ()), rule)
                continue
            if rule.source == "channel":
                self.channels[rule.topic] = (*self.channels.get(rule.topic, ()), rule)
                continue
            by_op = index.setdefault((rule.schema, rule.table), {op: [] for op in OPERATIONS})
            for op in rule.operations:
                by_op[op].append(rule)
        self._index = {
            table: {op: tuple(matched) for op, matched in by_op.items()} for table, by_op in index.items()
        }

    @classmethod
    def from_config(
        cls, config: Config, tables: Mapping[str, TableInfo | None] | None = None, collation: str = "C"
    ) -> RuleSet:
        """The rules and limits of ``config``; errors point into its file."""
        return cls(config.rules, config.limits, tables=tables, collation=collation, locate=config.field_place)

    @property
    def tables(self) -> list[tuple[str, str]]:
        """The distinct (schema, table) pairs the rules watch, in first-mention order."""
        return list(self._index)

    def operations_for(self, schema: str, table: str) -> frozenset[str]:
        by_op = self._index.get((schema, table), {})
        return frozenset(op for op, matched in by_op.items() if matched)

    @property
    def operations(self) -> frozenset[str]:
        """Every operation some rule listens to (what the publication must publish)."""
        return frozenset(op for rule in self.rules for op in rule.operations)

    def for_table(self, schema: str, table: str) -> dict[str, tuple[CompiledRule, ...]]:
        """op -> matching rules for one table (empty tuples for unwatched ops)."""
        return self._index.get((schema, table), {op: () for op in OPERATIONS})

    def compact_rules(self, schema: str, table: str) -> str | None:
        """For a table whose rules all leave the row alone at ingest (see ``needs_values``): the JSON that
        a compact chunk stores, ``{"insert": [[rule, workflow, priority], ...], ...}``.  None otherwise."""
        by_op = self._index.get((schema, table))
        if not by_op or any(rule.needs_values for matched in by_op.values() for rule in matched):
            return None
        plan = {
            op: [[r.name, r.workflow, r.priority] for r in matched]
            for op, matched in by_op.items()
            if matched
        }
        return json.dumps(plan)

    def match(self, schema: str, table: str, op: str) -> tuple[CompiledRule, ...]:
        return self.for_table(schema, table).get(op, ())

    def message_rules(self, prefix: str) -> tuple[CompiledRule, ...]:
        return self.messages.get(prefix, ())


__all__ = ["CompiledRule", "RuleSet", "compile_rule"]


async def compile_rules(config: Config, catalog: psycopg.AsyncConnection[Any]) -> RuleSet:
    """The rules of ``config``, checked against their tables' columns in the source catalog."""
    tables, collation = await read_tables_async(catalog, rule_tables(config.rules))
    return RuleSet.from_config(config, tables, collation)
