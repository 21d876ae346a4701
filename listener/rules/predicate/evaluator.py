"""The building blocks of compiled predicates: closures ``(new, old, now) -> value`` for constants,
strict functions (NULL in, NULL out) and the lazy three-valued AND/OR.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from listener.rules.predicate.errors import EvaluationError
from listener.rules.predicate.types import PgType, timestamp_of

# --------------------------------------------------------------------------------------------- compiler

Fn = Callable[[Any, Any, Any], Any]  # (new, old, now) -> value; None is SQL NULL


def const_fn(v: Any) -> Fn:
    return lambda n, o, t: v


def raise_fn(exc: EvaluationError) -> Fn:
    def fail(n: Any, o: Any, t: Any) -> Any:
        raise exc

    return fail


@dataclass(slots=True)
class TypedExpr:
    """A compiled subexpression: its type, its evaluator, and what the planner would know about it."""

    type: PgType
    fn: Fn
    node: Any
    const: bool = False
    value: Any = None
    literal: str | None = None  # the text of an unknown-typed string literal
    error: EvaluationError | None = None  # a constant that fails when folded (raised if PG folds it)
    collation: str | None = None  # an explicit COLLATE ("C"), else None
    has_var: bool = False
    stable: str | None = None  # why this is not immutable (never folded)
    no_filter: str | None = None  # why PostgreSQL would refuse this in a publication row filter
    error_node: Any = None  # the constant subexpression that fails

    @property
    def is_null(self) -> bool:
        return self.const and self.error is None and self.value is None


def strict1(impl: Callable[[Any], Any], fa: Fn) -> Fn:
    def f(n: Any, o: Any, t: Any) -> Any:
        a = fa(n, o, t)
        return None if a is None else impl(a)

    return f


def strict2(impl: Callable[[Any, Any], Any], a: TypedExpr, b: TypedExpr) -> Fn:
    fa, fb = a.fn, b.fn
    if b.const and not a.const:
        cb = b.value

        def fconst(n: Any, o: Any, t: Any) -> Any:
            x = fa(n, o, t)
            return None if x is None else impl(x, cb)

        return fconst
    if a.const and not b.const:
        ca = a.value

        def fconst_left(n: Any, o: Any, t: Any) -> Any:
            y = fb(n, o, t)
            return None if y is None else impl(ca, y)

        return fconst_left

    def f(n: Any, o: Any, t: Any) -> Any:
        # a strict function evaluates all its arguments, then returns NULL on a NULL one
        x = fa(n, o, t)
        y = fb(n, o, t)
        if x is None or y is None:
            return None
        return impl(x, y)

    return f


def strict3(impl: Callable[[Any, Any, Any], Any], a: TypedExpr, b: TypedExpr, c: TypedExpr) -> Fn:
    fa, fb, fc = a.fn, b.fn, c.fn

    def f(n: Any, o: Any, t: Any) -> Any:
        x = fa(n, o, t)
        y = fb(n, o, t)
        z = fc(n, o, t)
        if x is None or y is None or z is None:
            return None
        return impl(x, y, z)

    return f


def and_fn(fns: Sequence[Fn]) -> Fn:
    if len(fns) == 2:
        f1, f2 = fns

        def and2(n: Any, o: Any, t: Any) -> Any:
            a = f1(n, o, t)
            if a is False:
                return False
            b = f2(n, o, t)
            if b is False:
                return False
            return None if a is None or b is None else True

        return and2

    def and_n(n: Any, o: Any, t: Any) -> Any:
        null = False
        for f in fns:
            v = f(n, o, t)
            if v is False:
                return False
            if v is None:
                null = True
        return None if null else True

    return and_n


def or_fn(fns: Sequence[Fn]) -> Fn:
    if len(fns) == 2:
        f1, f2 = fns

        def or2(n: Any, o: Any, t: Any) -> Any:
            a = f1(n, o, t)
            if a is True:
                return True
            b = f2(n, o, t)
            if b is True:
                return True
            return None if a is None or b is None else False

        return or2

    def or_n(n: Any, o: Any, t: Any) -> Any:
        null = False
        for f in fns:
            v = f(n, o, t)
            if v is True:
                return True
            if v is None:
                null = True
        return None if null else False

    return or_n


def utc_now(n: Any, o: Any, t: datetime) -> int:
    if t is None:
        raise EvaluationError("now() needs the change's commit time", None)
    return timestamp_of(t)  # naive means UTC
