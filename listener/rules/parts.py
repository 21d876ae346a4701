"""The parts of a webhook request or a broker message, as the rules see them: the body as JSON text that
PostgreSQL's jsonb takes (checked before it joins a batch, so that no body can make the state database
refuse a batch), and :class:`RequestParts`, what a rule's ``key:`` and ``payload:`` pick from it.
Used by listener.http.webhooks and listener.ingest.queues.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from listener.rules.compile import CompiledRule

_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # \u0000 after an even number of backslashes
_NUMERIC_MAX_WEIGHT = 131_071  # PostgreSQL numeric: digits before the decimal point, at most (minus one)
_NUMERIC_MAX_SCALE = 16_383  # and after it


class Unfit(ValueError):
    """A body jsonb would not take."""


def _number(text: str) -> Decimal:
    """A JSON number, refused beyond what PostgreSQL's numeric reads (measured on 18: 1e131071 and
    1e-16383 are read, 1e131072, 0.5e-16383 and 0e-99999 overflow)."""
    value = Decimal(text)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # JSON numbers are finite
    if value.adjusted() > _NUMERIC_MAX_WEIGHT or -exponent > _NUMERIC_MAX_SCALE:
        raise Unfit(f"the number {text[:40]} is beyond PostgreSQL's numeric range")
    return value


def _constant(name: str) -> Any:
    raise Unfit(f"{name} is not JSON")


_decode = json.JSONDecoder(parse_float=_number, parse_int=_number, parse_constant=_constant).decode
_decode_plain = json.JSONDecoder(parse_constant=_constant).decode
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # an escaped UTF-16 surrogate: paired, or not
_EXPONENT = re.compile(r"[0-9.][eE][+-]?[0-9]")  # maybe a number with an exponent (or such text)


def _decode_checked(text: str) -> Any:
    """JSON text, its numbers checked against numeric's range.  The common body takes the C decoder
    alone: without an exponent, and shorter than numeric's 16383 digits after the point, no number in it
    can be out of range (an integer too long for Python's int falls back to the checked decoder)."""
    if len(text) < _NUMERIC_MAX_SCALE and not _EXPONENT.search(text):
        with contextlib.suppress(ValueError):
            return _decode_plain(text)
    return _decode(text)


def _check_strings(value: Any) -> None:
    """No lone surrogate (``\\ud800`` escapes) anywhere: jsonb refuses them."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")  # raises on a surrogate
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def json_text(text: str, what: str = "the body") -> str:
    """``text`` when it is JSON that jsonb takes; Unfit says why not (``what`` names it)."""
    if "\\u0000" in text and _NUL.search(text):
        raise Unfit(f"{what} holds \\u0000 (NUL), which PostgreSQL's jsonb cannot store")
    try:
        value = _decode_checked(text)
        if "\\u" in text and _SURROGATE.search(text):
            _check_strings(value)
    except UnicodeEncodeError:
        raise Unfit(f"{what} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which jsonb refuses") from None
    except RecursionError:
        raise Unfit(f"{what} nests too deeply to parse") from None
    except Unfit:
        raise
    except ValueError as exc:
        raise Unfit(f"{what} is not JSON: {exc}") from None
    return text


class RequestParts:
    """The parts of a request (or message) a webhook (or queue) rule's ``key:`` and ``payload:`` pick from
    (names.request_ref): ``body``, JSON text parsed once, when first needed, and the others as given
    (``headers``, ``query``, ``method``, ``path``; ``key``, ``topic``).  Its numbers with a fraction or
    an exponent stay as sent: each is parsed as a stand-in string (NUL, its index, NUL: a body holds no
    NUL) for its text.  ``headers_case``: header names as sent (a broker's), not lower-cased (HTTP's)."""

    def __init__(self, body: str, others: dict[str, Any], *, headers_case: bool = False) -> None:
        self._body_text = body
        self._numbers: list[str] = []
        self._parts: dict[str, Any] = dict(others)
        self._lower_headers = not headers_case

    def _number(self, text: str) -> str:
        self._numbers.append(text)
        return f"\x00{len(self._numbers) - 1}\x00"

    def get(self, root: str, path: str) -> Any:
        """The value at ``path`` (dotted; a number indexes an array) in part ``root``, or None."""
        if root == "body" and root not in self._parts:
            self._parts["body"] = json.loads(self._body_text, parse_float=self._number)
        value = self._parts[root]
        for step in path.split(".") if path else ():
            if isinstance(value, dict):
                value = value.get(step.lower() if root == "headers" and self._lower_headers else step)
            elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
                value = value[int(step)]
            else:
                return None
        return value

    def run_key(self, rule: CompiledRule) -> str | None:
        """The flow-control key of a gated rule's run: its template's fields, scoped by rule (as a table
        rule's, listener.rules.events.run_key); None when the request has none of them."""
        values = [self.get(root, path) for root, path in rule.key_fields]
        if all(value is None for value in values):
            return None
        return rule.name + ":" + "|".join(self._text(value) for value in values)

    def picked(self, rule: CompiledRule) -> str:
        """``payload:``'s object: each name with the part it picks (null where the request has none)."""
        return self._json({out: self.get(root, path) for out, root, path in rule.payload})

    def _text(self, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            return self._numbers[int(value[1:-1])] if value.startswith("\x00") else value
        return self._json(value)

    def _json(self, value: Any) -> str:
        text = json.dumps(value, ensure_ascii=False)
        return _NUMBER_MARK.sub(lambda m: self._numbers[int(m[1])], text) if self._numbers else text


_NUMBER_MARK = re.compile(r'"\\u0000(\d+)\\u0000"')  # a number's stand-in, as json.dumps writes it


def matches(rule: CompiledRule, columns: Mapping[str, str | None], now: datetime) -> bool:
    return rule.predicate is None or rule.predicate.matches(columns, None, now)
