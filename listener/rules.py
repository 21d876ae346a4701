"""Rules compiled for matching: which rules fire for a (table, operation).  Pure and synchronous.

Matching is a dictionary lookup prepared once at load time; the ingest loop caches the result per
relation OID so a change costs one dict access.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from listener.config import Rule, WorkflowLimit, key_fields

OPERATIONS = ("insert", "update", "delete", "truncate")


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
    key_fields: tuple[tuple[str, str], ...] = ()  # ("new" | "old", column) of the key template; () = PK

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def needs_values(self) -> bool:
        """Whether matching or shaping this rule's events looks at the row at ingest time; otherwise its
        events may be stored compactly (raw) and expanded later."""
        return self.gated


class RuleSet:
    """All rules of a config, indexed by (schema, table) and operation."""

    def __init__(self, rules: Iterable[Rule], limits: Iterable[WorkflowLimit] = ()) -> None:
        limited = {limit.workflow for limit in limits}
        self.rules = tuple(
            CompiledRule(
                r.name,
                r.schema_name,
                r.table_name,
                frozenset(r.on),
                r.workflow,
                gated=r.gated or r.workflow in limited,
                key_limit=r.key_concurrency if not r.ordered else 1,
                ordered=r.ordered,
                key_fields=tuple(key_fields(r.key)) if r.key else (),
            )
            for r in rules
        )
        index: dict[tuple[str, str], dict[str, list[CompiledRule]]] = {}
        for rule in self.rules:
            by_op = index.setdefault((rule.schema, rule.table), {op: [] for op in OPERATIONS})
            for op in rule.operations:
                by_op[op].append(rule)
        self._index = {
            table: {op: tuple(matched) for op, matched in by_op.items()} for table, by_op in index.items()
        }

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
        a compact chunk stores, ``{"insert": [[rule, workflow], ...], ...}``.  None otherwise."""
        by_op = self._index.get((schema, table))
        if not by_op or any(rule.needs_values for matched in by_op.values() for rule in matched):
            return None
        plan = {op: [[r.name, r.workflow] for r in matched] for op, matched in by_op.items() if matched}
        return json.dumps(plan)

    def match(self, schema: str, table: str, op: str) -> tuple[CompiledRule, ...]:
        return self.for_table(schema, table).get(op, ())
