"""`listener rules test`: evaluate one rule against a sample row, the way ingest would.

The sample's JSON values are turned into the exact text the server would send for the column (through
the database's own input and output functions), then matched by the compiled rule -- the same
``changed:`` and ``when:`` code ingest runs, with ``now()`` taken as the current time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from listener.errors import ConfigError
from listener.pg import conninfo
from listener.rules.catalog import TableInfo, read_tables
from listener.rules.compile import CompiledRule, changed_matches, compile_rule
from listener.rules.config import Config
from listener.rules.predicate import EvaluationError, MissingValue


@dataclass
class RuleTestResult:
    rule: str
    op: str
    matched: bool
    reason: str
    event: dict[str, Any] | None = None  # what the workflow would receive (new/old or payload's data)
    notes: list[str] = field(default_factory=list)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _canonical(conn: Any, table: TableInfo, row: dict[str, Any], side: str) -> dict[str, bytes | None]:
    """The server's text for each sample value, by its column's type (an unknown column is an error)."""
    out: dict[str, bytes | None] = {}
    for column, value in row.items():
        if column not in table.columns:
            raise ConfigError(
                f"--{side}: {table.name} has no column {column!r}",
                hint=f"the columns are {', '.join(table.columns)}",
            )
        text = _text(value)
        if text is None:
            out[column] = None
            continue
        type_name = table.columns[column].type_name
        query = sql.SQL("SELECT ({}::text)::{}::text").format(sql.Literal(text), sql.SQL(type_name))
        try:
            got = conn.execute(query).fetchone()[0]
        except Exception as exc:  # the server's own input function refused it
            conn.rollback() if not conn.autocommit else None
            raise ConfigError(
                f"--{side}: {column} = {value!r} is not a valid {type_name}: {str(exc).strip()}",
                hint=f"give {column} as {type_name} text, e.g. in PostgreSQL's own format",
            ) from None
        out[column] = got.encode()
    return out


def test_rule(
    config: Config,
    dsn: str,
    name: str,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None,
    op: str | None = None,
) -> RuleTestResult:
    rule = next((r for r in config.rules if r.name == name), None)
    if rule is None:
        names = ", ".join(r.name for r in config.rules) or "none"
        raise ConfigError(f"no rule named {name!r}", hint=f"the rules are: {names}")
    if rule.table is None:
        raise ConfigError(f"rule {name!r} is a {rule.source} rule", hint="`rules test` evaluates table rules")
    op = op or (
        "update" if new is not None and old is not None else "insert" if new is not None else "delete"
    )
    if new is None and old is None:
        raise ConfigError(
            "give --new (insert), --old (delete) or both (update)", hint="e.g. --new '{\"id\": 1}'"
        )
    with conninfo.connection(dsn) as conn:
        tables, collation = read_tables(conn, [rule.table])
        table = tables[rule.table]
        compiled = compile_rule(rule, table=table, collation=collation, locate=config.field_place)
        assert table is not None or not (rule.when or rule.changed or rule.payload)
        if table is None:
            raise ConfigError(f"table {rule.table} does not exist", hint="create it or fix `table:`")
        new_row = _canonical(conn, table, new, "new") if new is not None else None
        old_row = _canonical(conn, table, old, "old") if old is not None else None
    return evaluate(compiled, op, new_row, old_row)


def evaluate(
    rule: CompiledRule, op: str, new: dict[str, bytes | None] | None, old: dict[str, bytes | None] | None
) -> RuleTestResult:
    """Match a compiled rule against raw rows, as ingest does for a change."""
    if op not in rule.operations:
        return RuleTestResult(
            rule.name, op, False, f"`on:` has {', '.join(sorted(rule.operations))}, not {op}"
        )
    if rule.changed and op == "update":
        try:
            if not changed_matches(rule, new, old):
                return RuleTestResult(
                    rule.name, op, False, f"changed: none of {', '.join(rule.changed)} changed"
                )
        except MissingValue as exc:
            return RuleTestResult(rule.name, op, False, f"changed: needs {exc}; add it to the sample")
    if rule.predicate is not None:
        try:
            result = rule.predicate.evaluate(new, old, datetime.now(UTC))
        except MissingValue as exc:
            return RuleTestResult(rule.name, op, False, f"when: needs {exc}; add it to the sample")
        except EvaluationError as exc:
            return RuleTestResult(rule.name, op, False, f"when: evaluation fails as in PostgreSQL: {exc}")
        if result is not True:
            word = "NULL" if result is None else "false"
            return RuleTestResult(rule.name, op, False, f"when: is {word}: {rule.predicate.text}")
    event: dict[str, Any]
    if rule.payload:
        event = {
            "data": {out: _shown((new if side == "new" else old), col) for out, side, col in rule.payload}
        }
    else:
        event = {"new": _decoded(new), "old": _decoded(old)}
    return RuleTestResult(rule.name, op, True, "matches", event)


def _decoded(row: dict[str, bytes | None] | None) -> dict[str, str | None] | None:
    return None if row is None else {k: _shown(row, k) for k in row}


def _shown(row: dict[str, bytes | None] | None, column: str) -> str | None:
    if row is None:
        return None
    value = row.get(column)
    return None if value is None else value.decode()
