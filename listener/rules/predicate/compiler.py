"""The compiler: pglast's syntax tree -> typed closures, resolving operators and functions as
parse_oper.c and parse_func.c do, folding constants as the planner does, and refusing what listener
cannot evaluate exactly.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType, BoolTestType, NullTestType
from pglast.enums import SQLValueFunctionOp as SVF
from pglast.stream import RawStream

from listener.rules.predicate.coercion import CastInfo, can_coerce_implicitly, cast_info
from listener.rules.predicate.dates import (
    add_interval,
    date_mi,
    date_mii,
    date_pli,
    date_ts,
    date_ts_compared,
    interval_add,
    interval_div,
    interval_key,
    interval_mul,
    interval_neg,
    interval_sub,
    sub_interval,
    ts_date,
    ts_diff,
)
from listener.rules.predicate.errors import EvaluationError, PredicateError
from listener.rules.predicate.evaluator import (
    Fn,
    TypedExpr,
    and_fn,
    const_fn,
    or_fn,
    raise_fn,
    strict1,
    strict2,
    strict3,
    utc_now,
)
from listener.rules.predicate.jsonb import (
    jsonb_as_text,
    jsonb_concat,
    jsonb_contains,
    jsonb_element,
    jsonb_eq,
    jsonb_exists,
    jsonb_field,
    jsonb_ne,
)
from listener.rules.predicate.like import ascii_lower, ascii_upper, like_escape, like_matcher
from listener.rules.predicate.loaders import CHEAP_LOADS, column_fn, value_loader
from listener.rules.predicate.operators import (
    NAN_CMP,
    NUM_OPS,
    PLAIN_CMP,
    float_ops,
    int_ops,
    keyed,
    num_neg,
)
from listener.rules.predicate.parse import SELECT_PREFIX
from listener.rules.predicate.textin import input_function, num_in, parse_integer
from listener.rules.predicate.types import (
    BOOL,
    CAST_NAMES,
    DATE,
    DT_RANK,
    EXAMPLES,
    FLOAT4,
    FLOAT8,
    INT4,
    INT8,
    INT_RANK,
    INT_TYPES,
    INTERVAL,
    JSONB,
    NUM_RANK,
    NUMERIC,
    TEXT,
    TEXTLIKE,
    TIMESTAMP,
    TIMESTAMPTZ,
    UNKNOWN,
    ColumnType,
    PgType,
    column_pg_type,
)

# database collations whose text order is code-point order (what Python's str comparison does)
CODE_POINT_COLLATIONS: Final = frozenset({"C", "POSIX", "C.UTF-8", "C.utf8", "ucs_basic", "pg_c_utf8"})
# ... and whose lower()/upper()/ILIKE fold ASCII letters only (the "C" ctype)
C_CTYPES: Final = frozenset({"C", "POSIX"})
_EXPLICIT_C: Final = frozenset({"C", "POSIX", "ucs_basic"})

_AGGREGATES: Final = frozenset(
    [
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "array_agg",
        "string_agg",
        "bool_and",
        "bool_or",
        "every",
        "json_agg",
        "jsonb_agg",
        "json_object_agg",
        "jsonb_object_agg",
        "stddev",
        "variance",
        "percentile_cont",
        "percentile_disc",
        "mode",
        "bit_and",
        "bit_or",
    ]
)
_VOLATILE: Final = frozenset(
    [
        "random",
        "clock_timestamp",
        "statement_timestamp",
        "timeofday",
        "nextval",
        "currval",
        "setval",
        "gen_random_uuid",
        "uuid_generate_v4",
        "pg_sleep",
        "txid_current",
    ]
)
_SUPPORTED_FUNCTIONS: Final = (
    "lower, upper, length, char_length, btrim, ltrim, rtrim, trim, coalesce, nullif, now, "
    "current_timestamp, current_date, localtimestamp"
)
_COMPARISONS: Final = frozenset({"=", "<>", "<", "<=", ">", ">="})
_BETWEEN: Final = frozenset(
    {
        A_Expr_Kind.AEXPR_BETWEEN,
        A_Expr_Kind.AEXPR_NOT_BETWEEN,
        A_Expr_Kind.AEXPR_BETWEEN_SYM,
        A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM,
    }
)
_ARITHMETIC: Final = frozenset({"+", "-", "*", "/", "%"})
_JSON_OPS: Final = frozenset({"->", "->>", "@>", "<@", "?"})
_OP_HINTS: Final = {
    "~": "use LIKE (regular expressions are not supported)", "~*": "use ILIKE", "!~": "use NOT LIKE",
    "!~*": "use NOT ILIKE", "#>": "chain -> operators: new.data -> 'a' -> 'b'",
    "#>>": "chain -> and ->>: new.data -> 'a' ->> 'b'", "?|": "combine ? tests with OR",
    "?&": "combine ? tests with AND", "^": "multiply instead", "||/": "not supported", "|/": "not supported",
}  # fmt: skip


def _plain(t: PgType) -> PgType:
    """The type an operator sees: typmods dropped, strings as text."""
    if t.name in ("varchar", "text"):
        return TEXT
    if t.name == "numeric":
        return NUMERIC
    return t


class Compiler:
    def __init__(
        self, text: str, columns: Mapping[str, ColumnType], collation: str, locations: dict[int, int]
    ) -> None:
        self.text = text
        self.column_types = {name: column_pg_type(c) for name, c in columns.items()}
        self.collation = collation
        self.code_point_order = collation in CODE_POINT_COLLATIONS
        self.c_ctype = collation in C_CTYPES
        self.locations = locations
        self.references: set[tuple[str, str]] = set()
        self.uses_now = False
        self._columns: dict[tuple[str, str], TypedExpr] = {}

    # -- messages

    def position(self, node: Any) -> int | None:
        loc = self.locations.get(id(node))
        if loc is None:
            loc = getattr(node, "location", None)
        if loc is None or loc < len(SELECT_PREFIX):
            return None
        return int(loc) - len(SELECT_PREFIX)

    def fragment(self, node: Any) -> str:
        try:
            return str(RawStream()(node))
        except Exception:
            pos = self.position(node)
            return self.text[pos : pos + 30] if pos is not None else self.text

    def error(
        self,
        message: str,
        node: Any,
        hint: str | None = None,
        *,
        sqlstate: str | None = None,
        limitation: bool = False,
    ) -> PredicateError:
        """``sqlstate``: the error PostgreSQL raises for the same expression; ``limitation``: PostgreSQL
        would evaluate it, listener will not (or not exactly)."""
        error = PredicateError(
            message,
            text=self.text,
            fragment=self.fragment(node),
            position=self.position(node),
            hint=hint,
            sqlstate=sqlstate,
        )
        error.limitation = limitation
        return error

    def refuse(self, what: str, node: Any, hint: str) -> PredicateError:
        return self.error(
            f"{what} is not supported in a predicate: {self.fragment(node)}", node, hint, limitation=True
        )

    # -- building blocks

    def derive(
        self,
        t: PgType,
        fn: Fn,
        node: Any,
        args: Sequence[TypedExpr],
        *,
        stable: str | None = None,
        no_filter: str | None = None,
        collation: str | None = None,
        fold: bool = True,
        lazy: bool = False,
    ) -> TypedExpr:
        """A node over ``args``: flags inherited; folded when every argument is a constant and the
        operation is immutable (a failure is deferred: it is raised only if the planner would fold it).
        ``lazy`` nodes (AND, OR, CASE, COALESCE) decide themselves which failing arguments count."""
        # an argument's reason comes first: it names the innermost cause (now(), old.x)
        stable = next((a.stable for a in args if a.stable), None) or stable
        no_filter = next((a.no_filter for a in args if a.no_filter), None) or no_filter or stable
        e = TypedExpr(
            t,
            fn,
            node,
            has_var=any(a.has_var for a in args),
            stable=stable,
            no_filter=no_filter,
            collation=collation,
        )
        failing = None if lazy else next((a for a in args if a.error is not None), None)
        if failing is not None:
            e.const, e.error, e.fn, e.error_node = True, failing.error, failing.fn, failing.error_node
            return e
        if fold and stable is None and all(a.const for a in args):
            try:
                value = fn(None, None, None)
            except EvaluationError as exc:
                e.const, e.error, e.fn, e.error_node = True, exc, raise_fn(exc), node
                return e
            e.const, e.value, e.fn = True, value, const_fn(value)
        return e

    def null(self, t: PgType, node: Any, args: Sequence[TypedExpr] = (), **kw: Any) -> TypedExpr:
        return self.constant(t, None, node, args, **kw)

    def constant(
        self, t: PgType, value: Any, node: Any, args: Sequence[TypedExpr] = (), **kw: Any
    ) -> TypedExpr:
        """A folded result: a constant that keeps its arguments' flags (row filter, references)."""
        e = self.derive(t, const_fn(value), node, args, fold=False, lazy=True, **kw)
        # a constant is immutable whatever it was made of (the planner dropped the rest); what a row
        # filter may contain is judged before simplification, so no_filter stays
        e.const, e.value, e.error, e.stable = True, value, None, None
        return e

    def strict(
        self, impl: Callable[..., Any], args: Sequence[TypedExpr], t: PgType, node: Any, **kw: Any
    ) -> TypedExpr:
        """A strict function: NULL in, NULL out (a NULL constant argument folds the call to NULL)."""
        if not any(a.error for a in args) and any(a.is_null for a in args):
            return self.null(t, node, args, **kw)
        if len(args) == 1:
            fn = strict1(impl, args[0].fn)
        elif len(args) == 2:
            fn = strict2(impl, args[0], args[1])
        else:
            fn = strict3(impl, args[0], args[1], args[2])
        return self.derive(t, fn, node, args, **kw)

    def failing_guard(self, e: TypedExpr) -> TypedExpr:
        if e.error is not None:
            node = e.error_node if e.error_node is not None else e.node
            error = self.error(
                f"{self.fragment(node)} always fails: {e.error.message}",
                node,
                "PostgreSQL evaluates constant parts when it plans the query, so this predicate could never "
                "be evaluated; fix the constant expression",
            )
            error.sqlstate = e.error.sqlstate
            raise error
        return e

    # -- types and coercion

    def literal_as(self, e: TypedExpr, target: PgType, node: Any | None = None) -> TypedExpr:
        """An unknown-typed literal takes a type: the type's input function reads it now (parse time)."""
        node = e.node if node is None else node
        if target.name in ("other", "unknown"):
            raise self.unevaluated(target, e.node)
        if e.value is None:
            return TypedExpr(target, const_fn(None), node, const=True)
        try:
            value = input_function(target)(e.literal if e.literal is not None else str(e.value))
        except EvaluationError as exc:
            example = EXAMPLES.get(target.name)
            hint = f"write a value of type {target.label}" + (f", e.g. {example}" if example else "")
            if exc.sqlstate is None:
                error = self.error(f"{self.fragment(e.node)}: {exc.message}", e.node, exc.hint or hint)
                error.limitation = True
                raise error from None
            error = self.error(
                f"{self.fragment(e.node)} is not a valid {target.label}: {exc.message}", e.node, hint
            )
            error.sqlstate = exc.sqlstate
            raise error from None
        return TypedExpr(target, const_fn(value), node, const=True, value=value, collation=e.collation)

    def evaluable(self, *args: TypedExpr) -> None:
        for a in args:
            if a.type.name == "other":
                raise self.unevaluated(a.type, a.node)

    def unevaluated(self, t: PgType, node: Any) -> PredicateError:
        return self.error(
            f"listener does not evaluate values of type {t.label}: {self.fragment(node)}",
            node,
            "test it with IS [NOT] NULL, or compare its text form: (new.<column>)::text = '...'",
            limitation=True,
        )

    def compared_as(self, e: TypedExpr, target: PgType, node: Any) -> TypedExpr:
        """A date/time operand of a cross-type comparison: a date compared with a timestamp converts
        without failing (date_cmp_timestamp), the rest as an implicit cast."""
        if e.type.name == "date" and target.name != "date":
            return self.strict(date_ts_compared, [e], target, node)
        return self.coerce(e, target)

    def coerce(self, e: TypedExpr, target: PgType) -> TypedExpr:
        """Implicit conversion of an operator argument to ``target``."""
        if e.type.name == "unknown":
            return self.literal_as(e, target)
        if e.type == target or (e.type.name == target.name and e.type.name not in ("enum", "other")):
            return e
        if e.type.name in TEXTLIKE and target.name in ("text", "varchar"):
            return _retype(e, target)
        info = cast_info(e.type, target)
        if info is None or not can_coerce_implicitly(e.type, target):
            raise self.error(
                f"{self.fragment(e.node)} is {e.type.label}, which does not convert to {target.label}",
                e.node,
                f"cast it explicitly, e.g. ({self.fragment(e.node)})::{target.label}",
                sqlstate="42804",
            )
        return self.apply_cast(e, target, info, e.node)

    def apply_cast(self, e: TypedExpr, target: PgType, info: CastInfo, node: Any) -> TypedExpr:
        stable = f"{self.fragment(node)} depends on the session time zone" if info.stable else None
        no_filter = (
            f"{self.fragment(node)} converts through text, which PostgreSQL refuses in a row filter"
            if info.io
            else None
        )
        collation = e.collation if target.category == "S" else None
        return self.strict(
            info.fn, [e], target, node, stable=stable, no_filter=no_filter, collation=collation
        )

    def common_type(
        self, exprs: Sequence[TypedExpr], what: str, node: Any, *, required: bool = True
    ) -> PgType | None:
        """select_common_type (parse_coerce.c): the type CASE/COALESCE/IN values are converted to."""
        known = [e for e in exprs if e.type.name != "unknown"]
        if not known:
            return TEXT
        ptype = _plain(known[0].type)
        for e in known[1:]:
            ntype = _plain(e.type)
            if ntype == ptype:
                continue
            if ntype.category != ptype.category:
                if not required:
                    return None
                raise self.error(
                    f"{what} types {ptype.label} and {ntype.label} cannot be matched: "
                    f"{self.fragment(e.node)}",
                    e.node,
                    f"cast the values to one type, e.g. ({self.fragment(e.node)})::{ptype.label}",
                    sqlstate="42804",
                )
            if (
                not ptype.preferred
                and can_coerce_implicitly(ptype, ntype)
                and not can_coerce_implicitly(ntype, ptype)
            ):
                ptype = ntype
        for e in exprs:
            if e.type.name != "unknown" and not can_coerce_implicitly(_plain(e.type), ptype):
                if not required:
                    return None
                raise self.error(
                    f"{what} types {ptype.label} and {e.type.label} cannot be matched: "
                    f"{self.fragment(e.node)}",
                    e.node,
                    f"cast the values to one type, e.g. ({self.fragment(e.node)})::{ptype.label}",
                    sqlstate="42804",
                )
        return ptype

    def boolean(self, e: TypedExpr, context: str, node: Any) -> TypedExpr:
        if e.type.name == "bool":
            return e
        if e.type.name == "unknown":
            return self.literal_as(e, BOOL)
        raise self.error(
            f"argument of {context} must be type boolean, not type {e.type.label}: {self.fragment(e.node)}",
            e.node,
            "compare it to something, e.g. " + compare_example(self.fragment(e.node), e.type),
            sqlstate="42804",
        )

    # -- dispatch

    def expr(self, node: Any) -> TypedExpr:
        if isinstance(node, ast.A_Const):
            return self.a_const(node)
        if isinstance(node, ast.ColumnRef):
            return self.column(node)
        if isinstance(node, ast.A_Expr):
            return self.a_expr(node)
        if isinstance(node, ast.BoolExpr):
            return self.bool_expr(node)
        if isinstance(node, ast.NullTest):
            return self.null_test(node)
        if isinstance(node, ast.BooleanTest):
            return self.boolean_test(node)
        if isinstance(node, ast.TypeCast):
            return self.type_cast(node)
        if isinstance(node, ast.FuncCall):
            return self.func_call(node)
        if isinstance(node, ast.CoalesceExpr):
            return self.coalesce(node)
        if isinstance(node, ast.CaseExpr):
            return self.case(node)
        if isinstance(node, ast.CollateClause):
            return self.collate(node)
        if isinstance(node, ast.SQLValueFunction):
            return self.sql_value_function(node)
        if isinstance(node, ast.SubLink):
            raise self.refuse(
                "a subquery", node, "a predicate sees only the changed row; compare its columns"
            )
        if isinstance(node, ast.ParamRef):
            raise self.refuse("a parameter", node, "write the value as a literal")
        if isinstance(node, (ast.A_ArrayExpr, ast.A_Indirection)):
            raise self.refuse(
                "an array or subscript", node, "use IN (...) for lists and -> / ->> for jsonb fields"
            )
        if isinstance(node, ast.MinMaxExpr):
            raise self.refuse("GREATEST/LEAST", node, "write a CASE expression or compare both values")
        if isinstance(node, ast.RowExpr):
            raise self.refuse("a row constructor", node, "compare the columns one by one")
        raise self.refuse(type(node).__name__, node, "use comparisons, AND/OR/NOT, IN, LIKE, CASE, casts")

    def a_const(self, node: Any) -> TypedExpr:
        if node.isnull:
            return TypedExpr(UNKNOWN, const_fn(None), node, const=True)
        v = node.val
        if isinstance(v, ast.Integer):
            return TypedExpr(INT4, const_fn(v.ival), node, const=True, value=v.ival)
        if isinstance(v, ast.Float):
            text = str(v.fval)
            as_int = parse_integer(text)
            if as_int is not None and -(2**63) <= as_int < 2**63:
                t = INT4 if -(2**31) <= as_int < 2**31 else INT8
                return TypedExpr(t, const_fn(as_int), node, const=True, value=as_int)
            d = num_in(text)
            return TypedExpr(NUMERIC, const_fn(d), node, const=True, value=d)
        if isinstance(v, ast.Boolean):
            b = bool(v.boolval)
            return TypedExpr(BOOL, const_fn(b), node, const=True, value=b)
        if isinstance(v, ast.String):
            s = str(v.sval)
            return TypedExpr(UNKNOWN, const_fn(s), node, const=True, value=s, literal=s)
        raise self.refuse("a bit string", node, "compare integers or text instead")

    def column(self, node: Any) -> TypedExpr:
        names: list[str] = []
        for f in node.fields:
            if isinstance(f, ast.A_Star):
                raise self.refuse("a whole-row reference", node, "name the columns: new.status, old.status")
            names.append(str(f.sval))
        if len(names) == 1:
            side, name = "new", names[0]
        elif len(names) == 2 and names[0] in ("new", "old"):
            side, name = names
        else:
            raise self.error(
                f"cannot resolve {self.fragment(node)}: columns are new.<column>, old.<column> or a bare "
                "<column> (meaning new.<column>)",
                node,
                f"write new.{names[-1]} or old.{names[-1]}",
                sqlstate="42P01",
            )
        t = self.column_types.get(name)
        if t is None:
            close = difflib.get_close_matches(name, list(self.column_types), n=1, cutoff=0.6)
            hint = (
                f"did you mean {side}.{close[0]}?"
                if close
                else "the table's columns are: " + ", ".join(sorted(self.column_types))
            )
            raise self.error(f'unknown column "{name}" in {self.fragment(node)}', node, hint)
        if t.category == "C":
            raise self.refuse(
                f"the composite column {side}.{name} ({t.label})",
                node,
                "test the table's other columns, or the composite's fields in the workflow",
            )
        key = (side, name)
        self.references.add(key)
        cached = self._columns.get(key)
        if cached is None:
            no_filter = None
            if side == "old":
                no_filter = f"it reads old.{name}: a publication row filter sees one row version"
            elif t.oid >= 16384:
                no_filter = f"{side}.{name} has the user-defined type {t.label}, refused in a row filter"
            load = value_loader(t, f"{side}.{name}")
            fn = column_fn(side, name, load, memo=t.name not in CHEAP_LOADS)
            cached = TypedExpr(t, fn, node, has_var=True, no_filter=no_filter)
            self._columns[key] = cached
        return TypedExpr(cached.type, cached.fn, node, has_var=True, no_filter=cached.no_filter)

    # -- operators

    def a_expr(self, node: Any) -> TypedExpr:
        kind = node.kind
        if kind == A_Expr_Kind.AEXPR_OP:
            op = self.op_name(node)
            if node.lexpr is None:
                return self.unary(op, self.expr(node.rexpr), node)
            if op not in _COMPARISONS | _ARITHMETIC | _JSON_OPS | {"||"}:
                raise self.refuse(
                    f"the operator {op}", node, _OP_HINTS.get(op, "see the supported operators")
                )
            left, right = self.expr(node.lexpr), self.expr(node.rexpr)
            if op in _COMPARISONS:
                return self.comparison(op, left, right, node)
            if op in _ARITHMETIC:
                return self.arithmetic(op, left, right, node)
            if op == "||":
                return self.concat(left, right, node)
            if op in _JSON_OPS:
                return self.json_op(op, left, right, node)
            raise self.refuse(f"the operator {op}", node, _OP_HINTS.get(op, "see the supported operators"))
        if kind in (A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT):
            return self.distinct(node, kind == A_Expr_Kind.AEXPR_DISTINCT)
        if kind == A_Expr_Kind.AEXPR_NULLIF:
            return self.nullif(node)
        if kind == A_Expr_Kind.AEXPR_IN:
            return self.in_list(node, self.op_name(node) == "<>")
        if kind in (A_Expr_Kind.AEXPR_LIKE, A_Expr_Kind.AEXPR_ILIKE):
            op = self.op_name(node)
            return self.like(node, kind == A_Expr_Kind.AEXPR_ILIKE, op.startswith("!"))
        if kind in _BETWEEN:
            return self.between(node, kind)
        if kind in (A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL):
            raise self.refuse("ANY/ALL over an array", node, "write x IN (a, b, c)")
        if kind == A_Expr_Kind.AEXPR_SIMILAR:
            raise self.refuse("SIMILAR TO", node, "use LIKE")
        raise self.refuse(str(kind), node, "use comparisons, IN, LIKE or BETWEEN")

    def op_name(self, node: Any) -> str:
        names = [str(n.sval) for n in node.name]
        if len(names) == 2 and names[0] == "pg_catalog":
            return names[1]
        if len(names) != 1:
            raise self.refuse("a schema-qualified operator", node, "use the built-in operator unqualified")
        return names[0]

    def comparison(self, op: str, left: TypedExpr, right: TypedExpr, node: Any) -> TypedExpr:
        for side in (left, right):
            if side.is_null and side.type.name == "unknown":
                raise self.error(
                    f"{self.fragment(node)} compares with NULL, which is never true (the result is NULL)",
                    node,
                    "test for NULL with IS NULL / IS NOT NULL, or use IS [NOT] DISTINCT FROM",
                    limitation=True,
                )
        left, right, cmp = self.resolve_comparison(op, left, right, node)
        return self.strict(cmp, [left, right], BOOL, node)

    def resolve_comparison(
        self, op: str, left: TypedExpr, right: TypedExpr, node: Any
    ) -> tuple[TypedExpr, TypedExpr, Callable[[Any, Any], bool]]:
        """Operator resolution for = <> < <= > >=: both sides converted to one type, and its comparator."""
        self.evaluable(left, right)
        lt, rt = left.type.name, right.type.name
        if lt == "unknown" and rt == "unknown":
            left, right = self.literal_as(left, TEXT), self.literal_as(right, TEXT)
        elif lt == "unknown":
            left = self.literal_as(left, _plain(right.type))
        elif rt == "unknown":
            right = self.literal_as(right, _plain(left.type))
        lt, rt = left.type.name, right.type.name
        ordering = op not in ("=", "<>")
        if lt in NUM_RANK and rt in NUM_RANK:
            if "float4" in (lt, rt) or "float8" in (lt, rt):
                if lt != rt:
                    left, right = self.coerce(left, FLOAT8), self.coerce(right, FLOAT8)
                return left, right, NAN_CMP[op]
            if "numeric" in (lt, rt):
                return self.coerce(left, NUMERIC), self.coerce(right, NUMERIC), NAN_CMP[op]
            return left, right, PLAIN_CMP[op]
        if lt in TEXTLIKE and rt in TEXTLIKE:
            if ordering:
                self.check_text_order(left, right, node)
            return left, right, PLAIN_CMP[op]
        if lt in DT_RANK and rt in DT_RANK:
            if lt != rt:
                target = left.type if DT_RANK[lt] > DT_RANK[rt] else right.type
                stable = (
                    f"{self.fragment(node)} compares {left.type.label} with {right.type.label}, which "
                    "depends on the session time zone"
                    if target.name == "timestamptz"
                    else None
                )
                left, right = self.compared_as(left, target, node), self.compared_as(right, target, node)
                if stable:
                    left = _flag(left, stable)
            return left, right, PLAIN_CMP[op]
        if lt == rt and lt in ("bool", "uuid"):
            return left, right, PLAIN_CMP[op]
        if lt == rt == "interval":
            return left, right, keyed(PLAIN_CMP[op], interval_key)
        if lt == rt == "jsonb":
            if ordering:
                raise self.refuse(
                    "ordering jsonb values",
                    node,
                    "compare extracted values, e.g. (new.data ->> 'n')::numeric > 5",
                )
            return left, right, jsonb_eq if op == "=" else jsonb_ne
        if lt == rt == "enum" and left.type.oid == right.type.oid:
            if ordering:
                raise self.refuse(
                    f"ordering the enum {left.type.label}",
                    node,
                    "compare with = or IN (listener does not know the enum's declared order)",
                )
            return left, right, PLAIN_CMP[op]
        if "json" in (lt, rt):
            raise self.error(
                f"could not identify an equality operator for type json: {self.fragment(node)}",
                node,
                "cast to jsonb, e.g. new.payload::jsonb = '{\"a\": 1}'",
                sqlstate="42883",
            )
        raise self.mismatch(op, left, right, node)

    def mismatch(self, op: str, left: TypedExpr, right: TypedExpr, node: Any) -> PredicateError:
        lf, rf = self.fragment(left.node), self.fragment(right.node)
        if left.type.category == "S" and right.type.name != "unknown":
            hint = f"cast one side, e.g. {lf}::{right.type.label} {op} {rf}, or {lf} {op} {rf}::text"
        elif right.type.category == "S":
            hint = f"cast one side, e.g. {lf} {op} {rf}::{left.type.label}, or {lf}::text {op} {rf}"
        else:
            hint = f"cast one side to the other's type, e.g. {lf} {op} ({rf})::{left.type.label}"
        return self.error(
            f"operator does not exist: {left.type.label} {op} {right.type.label}, in {self.fragment(node)}",
            node,
            hint,
            sqlstate="42883",
        )

    def check_text_order(self, left: TypedExpr, right: TypedExpr, node: Any) -> None:
        explicit = {c for c in (left.collation, right.collation) if c is not None}
        if explicit or self.code_point_order:
            return
        raise self.error(
            f"{self.fragment(node)} orders text under the database collation {self.collation!r}, which "
            'listener cannot reproduce (it compares code points, PostgreSQL\'s order only under "C")',
            node,
            f'add COLLATE "C" to one side, e.g. {self.fragment(left.node)} COLLATE "C" ... — that is then '
            "the order in both PostgreSQL and listener",
            limitation=True,
        )

    def check_ctype(self, args: Sequence[TypedExpr], node: Any, what: str) -> None:
        if self.c_ctype or any(a.collation == "C" for a in args):
            return
        raise self.error(
            f"{what} in {self.fragment(node)} follows the database collation {self.collation!r}, whose case "
            "rules listener cannot reproduce",
            node,
            'add COLLATE "C" to the text (ASCII letters only are folded then, in PostgreSQL and listener), '
            f'e.g. lower({self.fragment(args[0].node)} COLLATE "C")',
            limitation=True,
        )

    def arithmetic(self, op: str, left: TypedExpr, right: TypedExpr, node: Any) -> TypedExpr:
        self.evaluable(left, right)
        lt, rt = left.type.name, right.type.name
        if lt == "unknown" and rt == "unknown":
            raise self.error(
                f"operator is not unique: unknown {op} unknown, in {self.fragment(node)}",
                node,
                f"cast a literal, e.g. {self.fragment(left.node)}::numeric",
                sqlstate="42725",
            )
        if lt == "unknown" or rt == "unknown":
            known = right.type if lt == "unknown" else left.type
            partner = self.unknown_partner(op, known, literal_left=lt == "unknown", node=node)
            if lt == "unknown":
                left = self.literal_as(left, partner)
            else:
                right = self.literal_as(right, partner)
            lt, rt = left.type.name, right.type.name
        if lt in NUM_RANK and rt in NUM_RANK:
            if "float4" in (lt, rt) or "float8" in (lt, rt):
                if op == "%":
                    raise self.mismatch(op, left, right, node)
                target = FLOAT4 if lt == rt == "float4" else FLOAT8
                ops = float_ops(target.name == "float4")
            elif "numeric" in (lt, rt):
                target, ops = NUMERIC, NUM_OPS  # type: ignore[assignment]
            else:
                target = left.type if INT_RANK[lt] >= INT_RANK[rt] else right.type
                return self.strict(int_ops(target.name)[op], [left, right], target, node)
            return self.strict(ops[op], [self.coerce(left, target), self.coerce(right, target)], target, node)
        impl, result, stable = self.datetime_operator(op, left, right, node)
        if "interval" in (lt, rt) and op in "*/":  # the factor is float8 (interval_mul, interval_div)
            left, right = (
                (left, self.coerce(right, FLOAT8)) if lt == "interval" else (self.coerce(left, FLOAT8), right)
            )
        if (lt == "timestamp" and rt == "timestamptz") or (lt == "timestamptz" and rt == "timestamp"):
            left, right = self.coerce(left, TIMESTAMPTZ), self.coerce(right, TIMESTAMPTZ)
        reason = f"{self.fragment(node)} depends on the session time zone" if stable else None
        return self.strict(impl, [left, right], result, node, stable=reason)

    def unknown_partner(self, op: str, known: PgType, *, literal_left: bool, node: Any) -> PgType:
        """The type an unknown literal takes opposite ``known`` in arithmetic (PostgreSQL's resolution)."""
        k = known.name
        if k == "interval" and op in "*/":
            return FLOAT8  # interval * float8, float8 * interval, interval / float8
        if k in NUM_RANK or k == "interval":
            return _plain(known)
        if k in ("timestamp", "timestamptz"):
            if op == "+":
                return INTERVAL
            if op == "-":
                return known
        if k == "date" and op == "-":
            return DATE
        spelled = f"unknown {op} {known.label}" if literal_left else f"{known.label} {op} unknown"
        raise self.error(
            f"operator is not unique: {spelled}, in {self.fragment(node)}",
            node,
            "cast the literal, e.g. interval '1 day' or 7::integer",
            sqlstate="42725",
        )

    def datetime_operator(
        self, op: str, left: TypedExpr, right: TypedExpr, node: Any
    ) -> tuple[Callable[[Any, Any], Any], PgType, bool]:
        lt, rt = left.type.name, right.type.name
        small_int = ("int2", "int4")
        if lt == "date" and rt in small_int and op in "+-":
            return (date_pli if op == "+" else date_mii), DATE, False
        if lt in small_int and rt == "date" and op == "+":
            return (lambda n, d: date_pli(d, n)), DATE, False
        if lt == rt == "date" and op == "-":
            return date_mi, INT4, False
        if lt == "date" and rt == "interval" and op in "+-":
            fn = add_interval if op == "+" else sub_interval
            return (lambda d, iv: fn(date_ts(d), iv)), TIMESTAMP, False
        if lt == "interval" and rt == "date" and op == "+":
            return (lambda iv, d: add_interval(date_ts(d), iv)), TIMESTAMP, False
        if lt in ("timestamp", "timestamptz") and rt == "interval" and op in "+-":
            return (add_interval if op == "+" else sub_interval), left.type, lt == "timestamptz"
        if lt == "interval" and rt in ("timestamp", "timestamptz") and op == "+":
            return (lambda iv, ts: add_interval(ts, iv)), right.type, rt == "timestamptz"
        if lt in ("timestamp", "timestamptz") and rt in ("timestamp", "timestamptz") and op == "-":
            return ts_diff, INTERVAL, lt != rt
        if lt == rt == "interval" and op in "+-":
            return (interval_add if op == "+" else interval_sub), INTERVAL, False
        if lt == "interval" and rt in NUM_RANK and op in "*/":
            return (interval_mul if op == "*" else interval_div), INTERVAL, False
        if lt in NUM_RANK and rt == "interval" and op == "*":
            return (lambda factor, iv: interval_mul(iv, factor)), INTERVAL, False
        raise self.mismatch(op, left, right, node)

    def unary(self, op: str, arg: TypedExpr, node: Any) -> TypedExpr:
        t = arg.type.name
        if op == "-":
            if t in INT_TYPES:
                return self.strict(int_ops(t)["neg"], [arg], arg.type, node)
            if t == "numeric":
                return self.strict(num_neg, [arg], NUMERIC, node)
            if t in ("float4", "float8"):
                return self.strict(operator.neg, [arg], arg.type, node)
            if t == "interval":
                return self.strict(interval_neg, [arg], INTERVAL, node)
        elif op == "+" and t in NUM_RANK:
            return arg
        if t == "unknown":
            raise self.error(
                f"operator is not unique: {op} unknown, in {self.fragment(node)}",
                node,
                f"cast the literal, e.g. {op}{self.fragment(arg.node)}::numeric",
                sqlstate="42725",
            )
        if op in ("-", "+"):
            raise self.error(
                f"operator does not exist: {op} {arg.type.label}, in {self.fragment(node)}",
                node,
                "apply it to a number or an interval",
                sqlstate="42883",
            )
        raise self.refuse(f"the prefix operator {op}", node, _OP_HINTS.get(op, "see the supported operators"))

    def concat(self, left: TypedExpr, right: TypedExpr, node: Any) -> TypedExpr:
        lt, rt = left.type.name, right.type.name
        if "jsonb" in (lt, rt) and (lt == rt or "unknown" in (lt, rt)):
            # jsonb || jsonb (an unknown literal is read as jsonb); jsonb || text is text concatenation
            left, right = self.coerce(left, JSONB), self.coerce(right, JSONB)
            return self.strict(jsonb_concat, [left, right], JSONB, node)
        if lt == "unknown":
            left = self.literal_as(left, TEXT)
        if rt == "unknown":
            right = self.literal_as(right, TEXT)
        lt, rt = left.type.name, right.type.name
        if lt not in TEXTLIKE and rt not in TEXTLIKE:
            raise self.mismatch("||", left, right, node)
        no_filter = None
        args = []
        for side in (left, right):
            if side.type.name in TEXTLIKE:
                args.append(side)
                continue
            if side.type.category == "A" or side.type.name == "other":
                raise self.refuse(f"concatenating {side.type.label}", node, "cast it to text first")
            # textanycat/anytextcat are `$1 || $2::text`: the cast to text (bool gives 'true', not 't').
            # The planner inlines them, so only the cast's own volatility decides what it folds; the
            # functions themselves are stable, which a publication row filter refuses.
            info = cast_info(side.type, TEXT)
            assert info is not None
            no_filter = f"{self.fragment(node)} converts {side.type.label} to text (stable in PostgreSQL)"
            args.append(self.apply_cast(side, TEXT, info, side.node))
        collation = left.collation or right.collation
        return self.strict(operator.add, args, TEXT, node, no_filter=no_filter, collation=collation)

    def json_op(self, op: str, left: TypedExpr, right: TypedExpr, node: Any) -> TypedExpr:
        if op == "<@":
            left, right, op = right, left, "@>"
        lt, rt = left.type.name, right.type.name
        if op == "@>" and lt == "unknown" and rt == "jsonb":
            left, lt = self.literal_as(left, JSONB), "jsonb"
        if lt == "json":
            cast = f"({self.fragment(left.node)})::jsonb {op} {self.fragment(right.node)}"
            raise self.refuse(f"the json operator {op}", node, f"cast to jsonb: {cast}")
        if lt == "unknown":
            raise self.error(
                f"operator is not unique: unknown {op} ..., in {self.fragment(node)}",
                node,
                f"cast the literal: {self.fragment(left.node)}::jsonb",
                sqlstate="42725",
            )
        if lt != "jsonb":
            raise self.mismatch(op, left, right, node)
        if op in ("->", "->>"):
            if rt == "unknown":
                right = self.literal_as(right, TEXT)
                rt = "text"
            if rt in TEXTLIKE:
                get: Callable[[Any, Any], Any] = jsonb_field
            elif rt in ("int2", "int4"):
                get = jsonb_element
            else:
                raise self.mismatch(op, left, right, node)
            if op == "->":
                return self.strict(get, [left, right], JSONB, node)
            return self.strict(lambda j, k: jsonb_as_text(get(j, k)), [left, right], TEXT, node)
        if op == "@>":
            if rt == "unknown":
                right = self.literal_as(right, JSONB)
            elif rt != "jsonb":
                raise self.mismatch(op, left, right, node)
            return self.strict(jsonb_contains, [left, right], BOOL, node)
        if rt == "unknown":
            right = self.literal_as(right, TEXT)
        elif rt not in TEXTLIKE:
            raise self.mismatch(op, left, right, node)
        return self.strict(jsonb_exists, [left, right], BOOL, node)

    def distinct(self, node: Any, distinct: bool) -> TypedExpr:
        left, right, cmp = self.resolve_comparison("=", self.expr(node.lexpr), self.expr(node.rexpr), node)
        fa, fb = left.fn, right.fn

        def is_distinct(n: Any, o: Any, t: Any) -> bool:
            a = fa(n, o, t)
            b = fb(n, o, t)
            if a is None:
                return b is not None
            if b is None:
                return True
            return not cmp(a, b)

        if right.is_null:
            fn: Fn = (
                (lambda n, o, t: fa(n, o, t) is not None)
                if distinct
                else (lambda n, o, t: fa(n, o, t) is None)
            )
        elif right.const and cmp is operator.eq:
            c = right.value
            if distinct:
                fn = lambda n, o, t: (a := fa(n, o, t)) is None or a != c  # noqa: E731
            else:
                fn = lambda n, o, t: (a := fa(n, o, t)) is not None and a == c  # noqa: E731
        elif distinct:
            fn = is_distinct
        else:
            fn = lambda n, o, t: not is_distinct(n, o, t)  # noqa: E731
        return self.derive(BOOL, fn, node, [left, right])

    def nullif(self, node: Any) -> TypedExpr:
        left, right, cmp = self.resolve_comparison("=", self.expr(node.lexpr), self.expr(node.rexpr), node)
        fa, fb = left.fn, right.fn

        def nullif(n: Any, o: Any, t: Any) -> Any:
            a = fa(n, o, t)
            b = fb(n, o, t)
            if a is not None and b is not None and cmp(a, b):
                return None
            return a

        return self.derive(left.type, nullif, node, [left, right], collation=left.collation)

    def in_list(self, node: Any, negated: bool) -> TypedExpr:
        """IN: constant items become one ``= ANY(array)`` over their common type (evaluated eagerly);
        items that read columns become a lazy OR chain after it (transformAExprIn)."""
        lhs = self.expr(node.lexpr)
        items = [self.expr(x) for x in node.rexpr]
        op = "<>" if negated else "="
        parts: list[TypedExpr] = []
        rest = items
        nonvars = [i for i in items if not i.has_var]
        if len(nonvars) > 1:
            common = self.common_type([lhs, *nonvars], "IN", node, required=False)
            if common is not None:
                l2 = self.coerce(lhs, common)
                arr = [self.coerce(i, common) for i in nonvars]
                _, _, cmp = self.resolve_comparison(op, l2, arr[0], node)
                array_op = self.scalar_array(l2, arr, cmp, not negated, node)
                first = next((e.type for e in (lhs, *nonvars) if e.type.name != "unknown"), TEXT)
                if first.name == "varchar" and array_op.no_filter is None:
                    # PostgreSQL's common type is then varchar, and comparing a varchar[] with text's =
                    # takes an ArrayCoerceExpr, which a publication row filter refuses
                    array_op.no_filter = (
                        f"{self.fragment(node)} compares character varying values as a text array, which "
                        f"PostgreSQL refuses in a row filter; write {self.fragment(lhs.node)}::text IN (...)"
                    )
                parts.append(array_op)
                rest = [i for i in items if i.has_var]
        for item in rest:
            if item.is_null and item.type.name == "unknown":
                item = self.literal_as(item, _plain(lhs.type) if lhs.type.name != "unknown" else TEXT)
            left, right, cmp = self.resolve_comparison(op, lhs, item, node)
            parts.append(self.strict(cmp, [left, right], BOOL, node))
        return self.combine(negated, parts, node)  # IN is OR, NOT IN is AND

    def scalar_array(
        self, lhs: TypedExpr, items: list[TypedExpr], cmp: Callable[[Any, Any], bool], use_or: bool, node: Any
    ) -> TypedExpr:
        fl = lhs.fn
        if all(i.const and i.error is None for i in items) and cmp in (operator.eq, operator.ne):
            values = [i.value for i in items]
            has_null = any(v is None for v in values)
            members = frozenset(v for v in values if v is not None)
            if use_or:

                def any_in(n: Any, o: Any, t: Any) -> Any:
                    a = fl(n, o, t)
                    if a is None:
                        return None
                    if a in members:
                        return True
                    return None if has_null else False

                fn: Fn = any_in
            else:

                def all_not_in(n: Any, o: Any, t: Any) -> Any:
                    a = fl(n, o, t)
                    if a is None:
                        return None
                    if a in members:
                        return False
                    return None if has_null else True

                fn = all_not_in
        else:
            fns = [i.fn for i in items]

            def scalar_array_op(n: Any, o: Any, t: Any) -> Any:
                a = fl(n, o, t)
                values = [f(n, o, t) for f in fns]
                if a is None:
                    return None
                null = False
                for v in values:
                    if v is None:
                        null = True
                    elif cmp(a, v) is use_or:
                        return use_or
                return None if null else not use_or

            fn = scalar_array_op
        return self.derive(BOOL, fn, node, [lhs, *items])

    def like(self, node: Any, ilike: bool, negated: bool) -> TypedExpr:
        left = self.expr(node.lexpr)
        pattern_node: Any = node.rexpr
        escape_call = isinstance(pattern_node, ast.FuncCall) and [
            str(n.sval) for n in pattern_node.funcname or ()
        ] == ["pg_catalog", "like_escape"]
        if escape_call:
            pattern = self.text_arg(self.expr(pattern_node.args[0]), "LIKE", node)
            escape = self.text_arg(self.expr(pattern_node.args[1]), "ESCAPE", node)
            pattern = self.strict(like_escape, [pattern, escape], TEXT, pattern_node)
        else:
            pattern = self.expr(pattern_node)
        for side in (left, pattern):
            if side.is_null and side.type.name == "unknown":
                raise self.error(
                    f"{self.fragment(node)} compares with NULL, which is never true",
                    node,
                    "test for NULL with IS NULL / IS NOT NULL",
                    limitation=True,
                )
        if left.type.name == "bpchar":
            raise self.refuse(
                "LIKE on character(n)", node, f"cast it: {self.fragment(left.node)}::text LIKE ..."
            )
        left = self.text_arg(left, "LIKE", node)
        pattern = self.text_arg(pattern, "LIKE", node)
        if ilike:
            self.check_ctype([left, pattern], node, "ILIKE")
        fold = ascii_lower if ilike else None

        def matches(s: str, p: str) -> bool:
            if fold is not None:
                s, p = fold(s), fold(p)
            return like_matcher(p)(s) is not negated

        if pattern.const and pattern.error is None and pattern.value is not None and not left.const:
            m = like_matcher(fold(pattern.value) if fold is not None else pattern.value)
            if fold is not None:
                impl: Callable[..., Any] = lambda s: m(fold(s)) is not negated  # noqa: E731
            elif negated:
                impl = lambda s: not m(s)  # noqa: E731
            else:
                impl = m
            return self.strict(impl, [left], BOOL, node, no_filter=pattern.no_filter)
        return self.strict(matches, [left, pattern], BOOL, node)

    def text_arg(self, e: TypedExpr, context: str, node: Any) -> TypedExpr:
        if e.type.name == "unknown":
            return self.literal_as(e, TEXT)
        if e.type.name in TEXTLIKE:
            return e
        raise self.error(
            f"{context} needs text, not {e.type.label}: {self.fragment(e.node)}",
            node,
            f"cast it: {self.fragment(e.node)}::text",
            sqlstate="42883",
        )

    def between(self, node: Any, kind: Any) -> TypedExpr:
        """transformAExprBetween: ``a >= x AND a <= y``; NOT: ``a < x OR a > y``; SYMMETRIC: either order.
        Each comparison is resolved before the next bound is looked at, as PostgreSQL does."""
        negated = kind in (A_Expr_Kind.AEXPR_NOT_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM)
        symmetric = kind in (A_Expr_Kind.AEXPR_BETWEEN_SYM, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM)
        low_op, high_op = ("<", ">") if negated else (">=", "<=")
        value = self.expr(node.lexpr)
        low = self.expr(node.rexpr[0])
        above_low = self.comparison(low_op, value, low, node)
        high = self.expr(node.rexpr[1])
        below_high = self.comparison(high_op, value, high, node)
        test = self.combine(not negated, [above_low, below_high], node)
        if not symmetric:
            return test
        swapped = [self.comparison(low_op, value, high, node), self.comparison(high_op, value, low, node)]
        return self.combine(negated, [test, self.combine(not negated, swapped, node)], node)

    # -- boolean structure

    def bool_expr(self, node: Any) -> TypedExpr:
        if node.boolop == BoolExprType.NOT_EXPR:
            arg = self.boolean(self.expr(node.args[0]), "NOT", node)
            return self.strict(operator.not_, [arg], BOOL, node)
        is_and = node.boolop == BoolExprType.AND_EXPR
        name = "AND" if is_and else "OR"
        args = [self.boolean(self.expr(a), name, a) for a in node.args]
        return self.combine(is_and, args, node)

    def combine(self, is_and: bool, args: Sequence[TypedExpr], node: Any) -> TypedExpr:
        """AND/OR with the planner's simplification: left to right, a decisive constant ends it."""
        kept: list[TypedExpr] = []
        have_null = False
        for a in args:
            if a.error is not None:
                return self.derive(BOOL, a.fn, node, [a])
            if a.const:
                if a.value is None:
                    have_null = True
                    continue
                if a.value is not is_and:  # FALSE in AND, TRUE in OR
                    return self.constant(BOOL, a.value, node, args)
                continue
            kept.append(a)
        if not kept:
            return self.constant(BOOL, None if have_null else is_and, node, args)
        if have_null:
            kept.append(TypedExpr(BOOL, const_fn(None), node, const=True))
        if len(kept) == 1:
            return self.derive(BOOL, kept[0].fn, node, args, fold=False, lazy=True)
        fns = [a.fn for a in kept]
        return self.derive(BOOL, and_fn(fns) if is_and else or_fn(fns), node, args, fold=False, lazy=True)

    def null_test(self, node: Any) -> TypedExpr:
        arg = self.expr(node.arg)
        if arg.type.name == "unknown" and not arg.is_null:
            arg = self.literal_as(arg, TEXT)
        fa = arg.fn
        if node.nulltesttype == NullTestType.IS_NULL:
            fn: Fn = lambda n, o, t: fa(n, o, t) is None  # noqa: E731
        else:
            fn = lambda n, o, t: fa(n, o, t) is not None  # noqa: E731
        return self.derive(BOOL, fn, node, [arg])

    def boolean_test(self, node: Any) -> TypedExpr:
        kind = node.booltesttype
        label = {
            BoolTestType.IS_TRUE: "IS TRUE", BoolTestType.IS_NOT_TRUE: "IS NOT TRUE",
            BoolTestType.IS_FALSE: "IS FALSE", BoolTestType.IS_NOT_FALSE: "IS NOT FALSE",
            BoolTestType.IS_UNKNOWN: "IS UNKNOWN", BoolTestType.IS_NOT_UNKNOWN: "IS NOT UNKNOWN",
        }[kind]  # fmt: skip
        arg = self.boolean(self.expr(node.arg), label, node)
        fa = arg.fn
        tests: dict[Any, Fn] = {
            BoolTestType.IS_TRUE: lambda n, o, t: fa(n, o, t) is True,
            BoolTestType.IS_NOT_TRUE: lambda n, o, t: fa(n, o, t) is not True,
            BoolTestType.IS_FALSE: lambda n, o, t: fa(n, o, t) is False,
            BoolTestType.IS_NOT_FALSE: lambda n, o, t: fa(n, o, t) is not False,
            BoolTestType.IS_UNKNOWN: lambda n, o, t: fa(n, o, t) is None,
            BoolTestType.IS_NOT_UNKNOWN: lambda n, o, t: fa(n, o, t) is not None,
        }
        return self.derive(BOOL, tests[kind], node, [arg])

    def coalesce(self, node: Any) -> TypedExpr:
        args = [self.expr(a) for a in node.args]
        t = self.common_type(args, "COALESCE", node)
        assert t is not None
        args = [self.coerce(a, t) for a in args]
        kept: list[TypedExpr] = []
        for a in args:  # simplification: NULL constants drop out, a non-NULL constant ends the list
            if a.error is not None:
                return self.derive(t, a.fn, node, [a])
            if a.const:
                if a.value is None:
                    continue
                kept.append(a)
                break
            kept.append(a)
        collation = next((a.collation for a in args if a.collation), None)
        if not kept:
            return self.null(t, node, args)
        if len(kept) == 1:
            if kept[0].const:
                return self.constant(t, kept[0].value, node, args)
            return self.derive(t, kept[0].fn, node, args, collation=collation, fold=False, lazy=True)
        fns = [a.fn for a in kept]

        def coalesce(n: Any, o: Any, t: Any) -> Any:
            for f in fns:
                v = f(n, o, t)
                if v is not None:
                    return v
            return None

        return self.derive(t, coalesce, node, args, collation=collation, fold=False, lazy=True)

    def case(self, node: Any) -> TypedExpr:
        arg = self.expr(node.arg) if node.arg is not None else None
        arms: list[tuple[TypedExpr, TypedExpr]] = []
        for when in node.args:
            if arg is not None:
                cond = self.comparison("=", arg, self.expr(when.expr), when)
            else:
                cond = self.boolean(self.expr(when.expr), "CASE/WHEN", when.expr)
            arms.append((cond, self.expr(when.result)))
        default = (
            self.expr(node.defresult)
            if node.defresult is not None
            else TypedExpr(UNKNOWN, const_fn(None), node, const=True)
        )
        t = self.common_type([r for _, r in arms] + [default], "CASE", node)
        assert t is not None
        arms = [(c, self.coerce(r, t)) for c, r in arms]
        default = self.coerce(default, t)
        everything = [x for arm in arms for x in arm] + [default]
        kept: list[tuple[TypedExpr, TypedExpr]] = []
        for cond, result in arms:  # simplification, as eval_const_expressions does it
            if cond.error is not None:
                return self.derive(t, cond.fn, node, [cond])
            if cond.const:
                if cond.value is True:
                    default = result
                    break
                continue  # a constant false/NULL arm is dropped without looking at its result
            if result.error is not None:
                return self.derive(t, result.fn, node, [result])
            kept.append((cond, result))
        if default.error is not None:
            return self.derive(t, default.fn, node, [default])
        if not kept:
            if default.const:
                return self.constant(t, default.value, node, everything)
            return self.derive(t, default.fn, node, everything, fold=False, lazy=True)
        conds = [(c.fn, r.fn) for c, r in kept]
        fd = default.fn

        def case(n: Any, o: Any, t: Any) -> Any:
            for c, r in conds:
                if c(n, o, t) is True:
                    return r(n, o, t)
            return fd(n, o, t)

        return self.derive(t, case, node, everything, fold=False, lazy=True)

    def collate(self, node: Any) -> TypedExpr:
        e = self.expr(node.arg)
        names = [str(n.sval) for n in node.collname]
        name = names[-1]
        if e.type.name == "unknown":
            e = self.literal_as(e, TEXT)
        if e.type.name not in TEXTLIKE:
            raise self.error(
                f"collations are not supported by type {e.type.label}: {self.fragment(node)}",
                node,
                "apply COLLATE to text",
                sqlstate="42804",
            )
        if (
            len(names) > 2
            or (len(names) == 2 and names[0] != "pg_catalog")
            or name not in (*_EXPLICIT_C, "default")
        ):
            raise self.error(
                f'COLLATE "{name}" is not supported: listener compares text by code point, which is '
                'PostgreSQL\'s order only under "C"',
                node,
                'use COLLATE "C"',
                limitation=True,
            )
        return replace(e, collation="C" if name != "default" else None)

    def type_cast(self, node: Any) -> TypedExpr:
        target = self.type_name(node.typeName)
        arg = node.arg
        if isinstance(arg, ast.A_Const) and (arg.isnull or isinstance(arg.val, ast.String)):
            return self.literal_as(self.a_const(arg), target, node)  # a typed literal: read now
        e = self.expr(arg)
        if e.type.name == "unknown":
            return self.literal_as(e, target, node)
        info = cast_info(e.type, target)
        if info is None:
            hint = "cast through text only if you mean its text form: (...)::text"
            if e.type.name == "other":
                hint = f"listener does not evaluate {e.type.label}; compare {self.fragment(e.node)}::text"
            raise self.error(
                f"cannot cast type {e.type.label} to {target.label}: {self.fragment(node)}",
                node,
                hint,
                sqlstate="42846",
            )
        return self.apply_cast(e, target, info, node)

    def type_name(self, tn: Any) -> PgType:
        names = [str(n.sval) for n in tn.names]
        if tn.arrayBounds:
            raise self.refuse("an array type", tn, "compare scalar values")
        if tn.setof or tn.pct_type or len(names) > 2 or (len(names) == 2 and names[0] != "pg_catalog"):
            raise self.refuse(
                f"the type {'.'.join(names)}",
                tn,
                "use a built-in type: " + ", ".join(sorted(set(CAST_NAMES))),
            )
        base = names[-1]
        if base in ("bpchar", "char", "character"):
            raise self.refuse("a cast to character(n)", tn, "cast to text or varchar")
        t = CAST_NAMES.get(base)
        if t is None:
            raise self.refuse(f"the type {base}", tn, "use one of: " + ", ".join(sorted(set(CAST_NAMES))))
        mods: list[int] = []
        for m in tn.typmods or ():
            if not (isinstance(m, ast.A_Const) and isinstance(m.val, ast.Integer)):
                raise self.refuse("this type modifier", tn, f"write {base} or {base}(n)")
            mods.append(int(m.val.ival or 0))
        if not mods:
            return t
        if t.name == "numeric" and len(mods) <= 2 and 1 <= mods[0] <= 1000:
            label = f"numeric({','.join(map(str, mods))})"
            return PgType("numeric", label, "N", typmod=tuple(mods), oid=t.oid)
        if t.name == "varchar" and len(mods) == 1 and mods[0] >= 1:
            return PgType("varchar", f"character varying({mods[0]})", "S", typmod=(mods[0],), oid=t.oid)
        raise self.refuse(f"type modifiers on {t.label}", tn, f"write plain {base}")

    def func_call(self, node: Any) -> TypedExpr:
        names = [str(n.sval) for n in node.funcname]
        name = names[-1]
        if len(names) > 2 or (len(names) == 2 and names[0] != "pg_catalog"):
            raise self.refuse(
                f"the function {'.'.join(names)}", node, f"use a built-in function: {_SUPPORTED_FUNCTIONS}"
            )
        if node.over is not None:
            raise self.refuse("a window function", node, "a predicate sees one row")
        if name in _AGGREGATES or node.agg_star or node.agg_distinct or node.agg_order or node.agg_filter:
            raise self.error(
                f"aggregate functions are not allowed in a predicate: {self.fragment(node)}",
                node,
                "a predicate sees one changed row; compare its columns (aggregate in the workflow instead)",
                limitation=True,
            )
        if name in _VOLATILE:
            raise self.refuse(
                f"the volatile function {name}()",
                node,
                "a predicate must give the same answer when replayed; use now() for the commit time",
            )
        if node.func_variadic:
            raise self.refuse("VARIADIC", node, "pass the arguments one by one")
        args = [self.expr(a) for a in node.args or ()]
        if name in ("now", "transaction_timestamp") and not args:
            return self.now(node)
        if name in ("lower", "upper") and len(args) == 1:
            arg = self.text_arg(args[0], f"{name}()", node)
            self.check_ctype([arg], node, f"{name}()")
            return self.strict(
                ascii_lower if name == "lower" else ascii_upper, [arg], TEXT, node, collation=arg.collation
            )
        if name in ("length", "char_length", "character_length") and len(args) == 1:
            arg = args[0]
            if arg.type.name not in (*TEXTLIKE, "unknown"):
                raise self.error(
                    f"function {name}({arg.type.label}) does not exist: {self.fragment(node)}",
                    node,
                    f"cast it: {name}({self.fragment(arg.node)}::text)",
                    sqlstate="42883",
                )
            return self.strict(len, [self.text_arg(arg, name, node)], INT4, node)
        if name in ("btrim", "ltrim", "rtrim") and len(args) in (1, 2):
            texts = [self.text_arg(a, f"{name}()", node) for a in args]
            strip = {"btrim": str.strip, "ltrim": str.lstrip, "rtrim": str.rstrip}[name]
            if len(texts) == 1:
                return self.strict(lambda s: strip(s, " "), texts, TEXT, node, collation=texts[0].collation)
            return self.strict(strip, texts, TEXT, node, collation=texts[0].collation)
        if name == "like_escape" and len(args) == 2:
            texts = [self.text_arg(a, "like_escape()", node) for a in args]
            return self.strict(like_escape, texts, TEXT, node)
        known = name in ("now", "lower", "upper", "length", "char_length", "btrim", "ltrim", "rtrim")
        what = (
            f"{name}() with {len(args)} argument{'s' if len(args) != 1 else ''}"
            if known
            else f"the function {name}()"
        )
        raise self.refuse(what, node, f"supported functions: {_SUPPORTED_FUNCTIONS}")

    def now(self, node: Any) -> TypedExpr:
        self.uses_now = True
        return TypedExpr(
            TIMESTAMPTZ,
            utc_now,
            node,
            stable="now() is the commit time, not immutable",
            no_filter="now() is not immutable; a publication row filter cannot use it",
        )

    def sql_value_function(self, node: Any) -> TypedExpr:
        Op = SVF
        if node.op == Op.SVFOP_CURRENT_TIMESTAMP:
            return self.now(node)
        if node.op == Op.SVFOP_CURRENT_DATE:
            now = self.now(node)
            return self.derive(DATE, lambda n, o, t: ts_date(utc_now(n, o, t)), node, [now])
        if node.op == Op.SVFOP_LOCALTIMESTAMP:
            now = self.now(node)
            return self.derive(TIMESTAMP, utc_now, node, [now])
        if node.op in (Op.SVFOP_CURRENT_TIMESTAMP_N, Op.SVFOP_LOCALTIMESTAMP_N):
            raise self.refuse("a precision on current_timestamp", node, "write current_timestamp or now()")
        if node.op in (
            Op.SVFOP_CURRENT_TIME,
            Op.SVFOP_CURRENT_TIME_N,
            Op.SVFOP_LOCALTIME,
            Op.SVFOP_LOCALTIME_N,
        ):
            raise self.refuse("the time type", node, "compare timestamps: now(), current_date")
        raise self.refuse(
            self.fragment(node), node, "the replication session is not the session that wrote the row"
        )


def _retype(e: TypedExpr, t: PgType) -> TypedExpr:
    return replace(e, type=t)


def _flag(e: TypedExpr, stable: str) -> TypedExpr:
    return replace(e, stable=stable, no_filter=e.no_filter or stable)


def compare_example(fragment: str, t: PgType) -> str:
    example = EXAMPLES.get(t.name)
    if t.category == "S":
        return f"{fragment} = 'value'"
    if example:
        return f"{fragment} = {example}"
    return f"{fragment} IS NOT NULL"
