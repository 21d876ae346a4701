"""Parsing a ``when:`` expression with pglast (PostgreSQL's own parser): the statement, the character
positions of its nodes, and the refusal of anything but a bare expression.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from pglast import ast, parse_sql
from pglast.enums import SetOperation
from pglast.parser import ParseError, parse_sql_json

from listener.rules.predicate.errors import PredicateError

SELECT_PREFIX: Final = "SELECT "


# ---------------------------------------------------------------------------------------------- parsing


def _byte_to_char(text: str) -> Callable[[int], int]:
    data = text.encode()
    if len(data) == len(text):
        return lambda b: b
    return lambda b: len(data[:b].decode(errors="ignore"))


def _collect_locations(js: Any, node: Any, out: dict[int, int], to_char: Callable[[int], int]) -> None:
    """Locations of every node, from libpg_query's JSON (pglast's AST drops those of constants).

    The JSON and the pglast tree come from the same parse, so they are walked side by side by field."""
    if isinstance(js, list) and isinstance(node, (tuple, list)):
        for j, n in zip(js, node, strict=False):
            _collect_locations(j, n, out, to_char)
        return
    if not (isinstance(js, dict) and len(js) == 1):
        return
    ((kind, body),) = js.items()
    if kind == "List" and isinstance(body, dict) and isinstance(node, (tuple, list)):
        _collect_locations(body.get("items", []), node, out, to_char)
        return
    if not isinstance(body, dict) or not isinstance(node, ast.Node) or type(node).__name__ != kind:
        return
    for key, value in body.items():
        if key == "location":
            if isinstance(value, int) and value >= 0:
                out[id(node)] = to_char(value)
        elif isinstance(value, (dict, list)):
            child = getattr(node, key, None)
            if child is not None:
                _collect_locations(value, child, out, to_char)


def parse_expression(text: str) -> tuple[Any, dict[int, int]]:
    """The expression node of ``SELECT <text>``, and node locations (characters into that string)."""
    if not text.strip():
        raise PredicateError("the predicate is empty", hint="write a condition, e.g. new.status = 'paid'")
    full = SELECT_PREFIX + text
    try:
        statements = parse_sql(full)
    except ParseError as exc:
        message = str(exc.args[0]) if exc.args else str(exc)
        position = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        pos = None if position is None else max(0, min(len(text), position - len(SELECT_PREFIX)))
        raise PredicateError(
            f"cannot parse the predicate: {message}",
            text=text,
            fragment=text[pos : pos + 20] if pos is not None else None,
            position=pos,
            hint="write one SQL boolean expression, e.g. new.status = 'paid' AND old.status <> 'paid'",
            sqlstate="42601",
        ) from None
    single = (
        len(statements) == 1
        and isinstance(statements[0].stmt, ast.SelectStmt)
        and _is_bare_select(statements[0].stmt)
    )
    if not single:
        raise PredicateError(
            "a predicate is one expression, not a statement or a query",
            text=text,
            fragment=text,
            position=0,
            hint="remove semicolons, FROM/WHERE/UNION clauses; write only the condition",
        )
    stmt: Any = statements[0].stmt
    target = stmt.targetList[0]
    locations: dict[int, int] = {}
    tree = json.loads(parse_sql_json(full))
    js_target = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]
    _collect_locations(js_target, target, locations, _byte_to_char(full))
    return target.val, locations


def _is_bare_select(stmt: ast.SelectStmt) -> bool:
    clauses = (
        stmt.distinctClause,
        stmt.intoClause,
        stmt.fromClause,
        stmt.whereClause,
        stmt.groupClause,
        stmt.havingClause,
        stmt.windowClause,
        stmt.valuesLists,
        stmt.sortClause,
        stmt.limitOffset,
        stmt.limitCount,
        stmt.lockingClause,
        stmt.withClause,
    )
    if any(c for c in clauses) or stmt.op not in (SetOperation.SETOP_NONE, 0, None):
        return False
    targets = stmt.targetList or ()
    return len(targets) == 1 and not targets[0].name and targets[0].val is not None
