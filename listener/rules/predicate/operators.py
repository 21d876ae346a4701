"""Arithmetic and comparison operators: integer (int.c, int8.c), numeric (numeric.c) and float (float.c)
arithmetic with PostgreSQL's overflow checks and result scales, and comparisons where NaN equals NaN
and sorts above everything.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

from listener.rules.predicate.errors import DIVISION_BY_ZERO, NUMERIC_OUT_OF_RANGE, EvaluationError
from listener.rules.predicate.types import (
    EXACT,
    INT_LIMITS,
    NUMERIC_DSCALE_MAX,
    NUMERIC_MAX_DISPLAY_SCALE,
    NUMERIC_MIN_SIG_DIGITS,
    dscale,
    num_norm,
    round_f4,
)

# ------------------------------------------------------------------------------------------ arithmetic


def _div0() -> EvaluationError:
    return EvaluationError("division by zero", DIVISION_BY_ZERO)


def int_ops(type_name: str) -> dict[str, Callable[..., int]]:
    """+ - * / % and unary minus for one integer width, raising PostgreSQL's out-of-range error."""
    lo, hi, message = INT_LIMITS[type_name]

    def check(v: int) -> int:
        if lo <= v <= hi:
            return v
        raise EvaluationError(message, NUMERIC_OUT_OF_RANGE)

    def add(a: int, b: int) -> int:
        return check(a + b)

    def sub(a: int, b: int) -> int:
        return check(a - b)

    def mul(a: int, b: int) -> int:
        return check(a * b)

    def div(a: int, b: int) -> int:
        if b == 0:
            raise _div0()
        q = abs(a) // abs(b)  # C division truncates toward zero
        return check(-q if (a < 0) != (b < 0) else q)

    def mod(a: int, b: int) -> int:
        if b == 0:
            raise _div0()
        r = abs(a) % abs(b)  # the remainder takes the dividend's sign
        return -r if a < 0 else r

    def neg(a: int) -> int:
        return check(-a)

    return {"+": add, "-": sub, "*": mul, "/": div, "%": mod, "neg": neg}


NAN = Decimal("NaN")
_ZERO = Decimal(0)


def _num_sign(d: Decimal) -> int:
    return 0 if d.is_zero() else (-1 if d.is_signed() else 1)


def signed_inf(negative: bool) -> Decimal:
    return Decimal("-Infinity") if negative else Decimal("Infinity")


def num_add(a: Decimal, b: Decimal) -> Decimal:
    if a.is_finite() and b.is_finite():
        return num_norm(EXACT.add(a, b))
    if a.is_nan() or b.is_nan():
        return NAN
    if a.is_infinite() and b.is_infinite():
        return a if a == b else NAN
    return a if a.is_infinite() else b


def num_neg(a: Decimal) -> Decimal:
    return a if a.is_nan() else num_norm(EXACT.minus(a))


def num_sub(a: Decimal, b: Decimal) -> Decimal:
    return num_add(a, num_neg(b))


def num_mul(a: Decimal, b: Decimal) -> Decimal:
    if a.is_finite() and b.is_finite():
        r = EXACT.multiply(a, b)
        if dscale(r) > NUMERIC_DSCALE_MAX:
            r = r.quantize(Decimal((0, (1,), -NUMERIC_DSCALE_MAX)), context=EXACT)
        return num_norm(r)
    if a.is_nan() or b.is_nan():
        return NAN
    sa, sb = _num_sign(a), _num_sign(b)
    if sa == 0 or sb == 0:
        return NAN  # infinity times zero
    return signed_inf(sa * sb < 0)


def _weight_first(d: Decimal) -> tuple[int, int]:
    """numeric.c's view of a value in base 10000: the weight and the value of its first nonzero digit."""
    if d.is_zero():
        return 0, 0
    _, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    coefficient = int("".join(map(str, digits)))
    weight = (exp + len(digits) - 1) // 4
    shift = 4 * weight - exp
    first = coefficient // 10**shift if shift >= 0 else coefficient * 10**-shift
    return weight, first


def div_scale(a: Decimal, b: Decimal) -> int:
    """select_div_scale (numeric.c): the result scale of numeric division."""
    w1, f1 = _weight_first(a)
    w2, f2 = _weight_first(b)
    qweight = w1 - w2
    if f1 <= f2:
        qweight -= 1
    rscale = NUMERIC_MIN_SIG_DIGITS - qweight * 4
    rscale = max(rscale, dscale(a), dscale(b), 0)
    return min(rscale, NUMERIC_MAX_DISPLAY_SCALE)


def num_div(a: Decimal, b: Decimal) -> Decimal:
    if a.is_nan() or b.is_nan():
        return NAN
    if a.is_infinite():
        if b.is_infinite():
            return NAN
        if b.is_zero():
            raise _div0()
        return signed_inf(a.is_signed() != b.is_signed())
    if b.is_infinite():
        return _ZERO
    if b.is_zero():
        raise _div0()
    rscale = div_scale(a, b)
    sa, da, ea = a.as_tuple()
    sb, db, eb = b.as_tuple()
    assert isinstance(ea, int) and isinstance(eb, int)
    num = int("".join(map(str, da)))
    den = int("".join(map(str, db)))
    k = ea - eb + rscale
    if k >= 0:
        num *= 10**k
    else:
        den *= 10**-k
    q, r = divmod(num, den)
    if 2 * r >= den:  # round half away from zero
        q += 1
    return num_norm(Decimal((sa != sb, tuple(map(int, str(q))), -rscale)))


def num_mod(a: Decimal, b: Decimal) -> Decimal:
    if a.is_nan() or b.is_nan():
        return NAN
    if a.is_infinite():
        if b.is_zero():
            raise _div0()
        return NAN
    if b.is_infinite():
        return a
    if b.is_zero():
        raise _div0()
    return num_norm(EXACT.remainder(a, b))


NUM_OPS: Final[dict[str, Callable[..., Decimal]]] = {
    "+": num_add, "-": num_sub, "*": num_mul, "/": num_div, "%": num_mod, "neg": num_neg,
}  # fmt: skip


def overflow() -> EvaluationError:
    return EvaluationError("value out of range: overflow", NUMERIC_OUT_OF_RANGE)


def underflow() -> EvaluationError:
    return EvaluationError("value out of range: underflow", NUMERIC_OUT_OF_RANGE)


def float_ops(single: bool) -> dict[str, Callable[..., float]]:
    """float8 (or float4) arithmetic with float.c's overflow, underflow and division-by-zero checks."""
    rnd: Callable[[float], float] = round_f4 if single else float
    isinf = math.isinf

    def add(a: float, b: float) -> float:
        r = rnd(a + b)
        if isinf(r) and not isinf(a) and not isinf(b):
            raise overflow()
        return r

    def sub(a: float, b: float) -> float:
        r = rnd(a - b)
        if isinf(r) and not isinf(a) and not isinf(b):
            raise overflow()
        return r

    def mul(a: float, b: float) -> float:
        r = rnd(a * b)
        if isinf(r) and not isinf(a) and not isinf(b):
            raise overflow()
        if r == 0 and a != 0 and b != 0:
            raise underflow()
        return r

    def div(a: float, b: float) -> float:
        if b == 0:
            if a != a:
                return math.nan
            raise _div0()
        r = rnd(a / b)
        if isinf(r) and not isinf(a):
            raise overflow()
        if r == 0 and a != 0 and not isinf(b):
            raise underflow()
        return r

    def neg(a: float) -> float:
        return -a

    return {"+": add, "-": sub, "*": mul, "/": div, "neg": neg}


# ------------------------------------------------------------------------------------------ comparison


def _nan_eq(a: Any, b: Any) -> bool:
    # NaN equals NaN and sorts above everything else (float.c, numeric.c)
    if a != a:
        return b != b  # type: ignore[no-any-return]
    if b != b:
        return False
    return a == b  # type: ignore[no-any-return]


def _nan_ne(a: Any, b: Any) -> bool:
    return not _nan_eq(a, b)


def _nan_lt(a: Any, b: Any) -> bool:
    if a != a:
        return False
    if b != b:
        return True
    return a < b  # type: ignore[no-any-return]


def _nan_le(a: Any, b: Any) -> bool:
    if b != b:
        return True
    if a != a:
        return False
    return a <= b  # type: ignore[no-any-return]


def _nan_gt(a: Any, b: Any) -> bool:
    return _nan_lt(b, a)


def _nan_ge(a: Any, b: Any) -> bool:
    return _nan_le(b, a)


PLAIN_CMP: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq, "<>": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge,
}  # fmt: skip
NAN_CMP: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": _nan_eq, "<>": _nan_ne, "<": _nan_lt, "<=": _nan_le, ">": _nan_gt, ">=": _nan_ge,
}  # fmt: skip


def keyed(cmp: Callable[[Any, Any], bool], key: Callable[[Any], Any]) -> Callable[[Any, Any], bool]:
    return lambda a, b: cmp(key(a), key(b))
