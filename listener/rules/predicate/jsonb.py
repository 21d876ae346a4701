"""jsonb operators and functions (jsonb_op.c, jsonfuncs.c): equality, containment, existence,
``->``/``->>``, concatenation.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from listener.rules.predicate.textout import jsonb_text
from listener.rules.predicate.types import JSON_NULL

# ------------------------------------------------------------------------------------------------ jsonb


def jkind(v: Any) -> int:
    if v is None or v is JSON_NULL:
        return 0
    if v is True or v is False:
        return 1
    if isinstance(v, (int, Decimal)):
        return 2
    if isinstance(v, str):
        return 3
    if isinstance(v, list):
        return 4
    return 5


def jsonb_eq(a: Any, b: Any) -> bool:
    """jsonb equality: same kinds all the way down (true is not 1), numbers by value, arrays in order."""
    ka, kb = jkind(a), jkind(b)
    if ka != kb:
        return False
    if ka == 0:
        return True
    if ka == 4:
        return len(a) == len(b) and all(jsonb_eq(x, y) for x, y in zip(a, b, strict=True))
    if ka == 5:
        return a.keys() == b.keys() and all(jsonb_eq(a[k], b[k]) for k in a)
    return a == b  # type: ignore[no-any-return]


def jsonb_ne(a: Any, b: Any) -> bool:
    return not jsonb_eq(a, b)


def jsonb_contains(a: Any, b: Any) -> bool:
    """``a @> b`` (JsonbDeepContains).  A top-level scalar is a one-element array that may be contained
    in an array but may not contain one."""
    ka, kb = jkind(a), jkind(b)
    if ka < 4 and kb < 4:
        return jsonb_eq(a, b)
    if ka < 4:
        return False  # a scalar contains no container
    if kb < 4:
        return ka == 4 and any(jkind(x) == kb and jsonb_eq(x, b) for x in a)
    return _deep_contains(a, b)


def _deep_contains(a: Any, b: Any) -> bool:
    ka, kb = jkind(a), jkind(b)
    if ka != kb:
        return False
    if ka == 5:
        for key, vb in b.items():
            if key not in a:
                return False
            va = a[key]
            kva, kvb = jkind(va), jkind(vb)
            if kva != kvb:
                return False
            if kvb < 4:
                if not jsonb_eq(va, vb):
                    return False
            elif not _deep_contains(va, vb):
                return False
        return True
    for vb in b:
        kvb = jkind(vb)
        if kvb < 4:
            if not any(jkind(x) == kvb and jsonb_eq(x, vb) for x in a):
                return False
        elif not any(jkind(x) == kvb and _deep_contains(x, vb) for x in a):
            return False
    return True


def jsonb_exists(a: Any, key: str) -> bool:
    """``a ? key``: an object's key, or a string element of a top-level array (or the scalar string)."""
    if isinstance(a, dict):
        return key in a
    if isinstance(a, list):
        return any(isinstance(x, str) and x == key for x in a)
    return isinstance(a, str) and a == key


def jsonb_field(a: Any, key: str) -> Any:
    if isinstance(a, dict):
        v = a.get(key, MISSING)
        if v is MISSING:
            return None
        return JSON_NULL if v is None else v
    return None


def jsonb_element(a: Any, index: int) -> Any:
    if isinstance(a, dict):
        return None
    items = a if isinstance(a, list) else [a]  # a top-level scalar is a one-element array
    if index < 0:
        index += len(items)
    if 0 <= index < len(items):
        v = items[index]
        return JSON_NULL if v is None else v
    return None


MISSING: Final = object()


def jsonb_concat(a: Any, b: Any) -> Any:
    """``jsonb || jsonb``: objects merge (the right side wins), anything else concatenates as arrays (a
    non-array becomes a one-element array)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {**a, **b}
    left = a if isinstance(a, list) else [None if a is JSON_NULL else a]
    right = b if isinstance(b, list) else [None if b is JSON_NULL else b]
    return left + right


def jsonb_as_text(v: Any) -> str | None:
    """The text ``->>`` returns: a string unquoted, JSON null as SQL NULL, anything else as jsonb text."""
    if v is JSON_NULL or v is None:
        return None
    if isinstance(v, str):
        return v
    return jsonb_text(v)
