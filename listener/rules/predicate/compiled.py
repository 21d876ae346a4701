"""A compiled predicate (:class:`Predicate`) and :func:`compile_predicate`, the entry point: evaluation,
the deep-jsonb retry with a deeper stack, and the row filter text for publications.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pglast import ast, parse_sql
from pglast.stream import RawStream

from listener.rules.predicate.compiler import Compiler, compare_example
from listener.rules.predicate.errors import PredicateError, unsupported
from listener.rules.predicate.evaluator import Fn
from listener.rules.predicate.parse import SELECT_PREFIX, parse_expression
from listener.rules.predicate.types import BOOL, ColumnType

# -------------------------------------------------------------------------------------------- predicate


class Predicate:
    """A compiled ``when:`` expression.  Pure and synchronous; safe to share between threads."""

    __slots__ = ("_filter", "_fn", "references", "stable", "text", "uses_now")

    def __init__(
        self,
        text: str,
        fn: Fn,
        references: frozenset[tuple[str, str]],
        uses_now: bool,
        row_filter: tuple[str | None, str],
        stable: str | None = None,
    ) -> None:
        self.text = text
        self._fn = fn
        self.references = references
        self.uses_now = uses_now
        self._filter = row_filter
        self.stable = stable  # why the expression is not immutable (now(), the session time zone), or None

    def evaluate(
        self,
        new: Mapping[str, bytes | str | None] | None,
        old: Mapping[str, bytes | str | None] | None,
        now: datetime,
    ) -> bool | None:
        """The predicate's value for one change: True, False, or None (SQL NULL).

        ``new``/``old`` map column names to PostgreSQL text output (or None for NULL); a side that is None
        makes its columns NULL; a referenced column missing from a mapping raises :class:`MissingValue`.
        ``now`` is what ``now()`` returns (the change's commit time; naive means UTC)."""
        try:
            return self._fn(new, old, now)  # type: ignore[no-any-return]
        except RecursionError:
            return _evaluate_deep(self._fn, new, old, now)  # type: ignore[no-any-return]

    def matches(
        self,
        new: Mapping[str, bytes | str | None] | None,
        old: Mapping[str, bytes | str | None] | None,
        now: datetime,
    ) -> bool:
        """True only when the predicate is true (NULL and false do not match), as in a WHERE clause."""
        return self.evaluate(new, old, now) is True

    def row_filter(self) -> tuple[str | None, str]:
        """``(sql, reason)``: the predicate as a PostgreSQL 15+ publication row filter over bare column
        names, or ``(None, why not)``.

        PostgreSQL allows only columns, constants, built-in immutable operators and functions, built-in
        types and collations there; the filter sees one row version, so ``old.`` is never allowed.  For a
        publication that publishes UPDATE or DELETE, every column in the filter must belong to the
        table's replica identity (else those statements fail on the table): check ``references``."""
        return self._filter

    def bare_sql(self) -> str:
        """The expression as PostgreSQL deparses it, over bare column names (``new.x`` is ``x``): for a
        query over the table's rows (`listener backfill --where`).  Meaningful without ``old.``."""
        return _deparse_filter(self.text)

    def __repr__(self) -> str:
        return f"Predicate({self.text!r})"


# jsonb nests up to about 20,000 levels under PostgreSQL's default max_stack_depth (2MB), beyond what
# Python's recursion limit lets json, psycopg's loader and the jsonb functions here read.  Such a change is
# evaluated once more in a thread whose stack and recursion limit fit DEEP_JSON_LEVELS levels (measured:
# under 700 bytes of C stack per level; the stack is virtual memory, touched only as deep as used).
DEEP_JSON_LEVELS = 100_000
_DEEP_RECURSION_LIMIT = 4 * DEEP_JSON_LEVELS
_DEEP_STACK_BYTES = 512 << 20
_deep_lock = threading.Lock()


def _evaluate_deep(fn: Fn, *args: Any) -> Any:
    """``fn(*args)`` in a thread with room for DEEP_JSON_LEVELS levels of jsonb; the same result (or
    error) as PostgreSQL's, only slower."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, fn(*args)))
        except BaseException as exc:  # handed back to the caller's thread
            outcome.append((False, exc))

    with _deep_lock:
        limit, size = sys.getrecursionlimit(), threading.stack_size()
        sys.setrecursionlimit(max(limit, _DEEP_RECURSION_LIMIT))
        try:
            threading.stack_size(_DEEP_STACK_BYTES)
            try:
                thread = threading.Thread(target=run, name="listener-deep-jsonb")
                thread.start()
            finally:
                threading.stack_size(size)
            thread.join()
        finally:
            sys.setrecursionlimit(limit)
    ok, value = outcome[0]
    if ok:
        return value
    if isinstance(value, RecursionError):
        raise unsupported(f"a jsonb value nests deeper than the {DEEP_JSON_LEVELS} levels listener reads")
    raise value


def compile_predicate(text: str, columns: Mapping[str, ColumnType], *, collation: str = "C") -> Predicate:
    """Parse, type-check against ``columns`` and compile a ``when:`` expression.

    ``collation`` is the database's default collation (``pg_database.datcollate``): ordering comparisons
    of text are refused unless it orders by code point or the expression says ``COLLATE "C"``.
    Raises :class:`PredicateError` for anything PostgreSQL would refuse, anything listener does not
    evaluate exactly as PostgreSQL, and expressions that could never be evaluated (among them those
    nested deeper than Python's recursion limit lets listener compile and evaluate)."""
    try:
        return _compile_predicate(text, columns, collation)
    except RecursionError:
        error = PredicateError(
            "the expression nests too deep for listener to evaluate (hundreds of levels of parentheses,"
            " operators or CASE)",
            text=text,
            hint="write it flatter, e.g. new.x IN (1, 2, 3) instead of chained ORs, fewer parentheses",
        )
        error.limitation = True
        raise error from None


def _compile_predicate(text: str, columns: Mapping[str, ColumnType], collation: str) -> Predicate:
    node, locations = parse_expression(text)
    compiler = Compiler(text, columns, collation, locations)
    result = compiler.expr(node)
    if result.type.name == "unknown":
        result = compiler.literal_as(result, BOOL)
    if result.type.name != "bool":
        fragment = compiler.fragment(node)
        raise compiler.error(
            f"the predicate must be a boolean expression, but {fragment} is {result.type.label}",
            node,
            f"compare it, e.g. {compare_example(fragment, result.type)}",
        )
    compiler.failing_guard(result)
    reason = result.no_filter
    row_filter: tuple[str | None, str]
    row_filter = (_deparse_filter(text), "") if reason is None else (None, reason)
    return Predicate(
        text, result.fn, frozenset(compiler.references), compiler.uses_now, row_filter, result.stable
    )


def _bare_columns(node: Any) -> None:
    """Rewrite ``new.x`` to ``x`` throughout a pglast tree (in place)."""
    if isinstance(node, (tuple, list)):
        for item in node:
            _bare_columns(item)
        return
    if not isinstance(node, ast.Node):
        return
    if isinstance(node, ast.ColumnRef):
        fields: Any = node.fields
        if len(fields) == 2 and isinstance(fields[0], ast.String) and fields[0].sval == "new":
            node.fields = fields[1:]
        return
    for attr in node:
        _bare_columns(getattr(node, attr))


def _deparse_filter(text: str) -> str:
    stmt: Any = parse_sql(SELECT_PREFIX + text)[0].stmt
    expr = stmt.targetList[0].val
    _bare_columns(expr)
    return str(RawStream()(expr))
