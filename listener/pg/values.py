"""PostgreSQL text values → JSON: the value renderers the type registry hands out, and JSON text.

JSON values are lossless JSON-native values for integers, booleans, text, finite floats, json/jsonb and
arrays; otherwise the PostgreSQL text representation as a string (bytea always as ``\\x`` hex, whatever
``bytea_output`` says).  A json/jsonb value JSON cannot carry here (too deep, a number beyond float range,
``\\u0000``) stays its text, as a :class:`JsonText`.  Fragments are the same values as JSON text, made
straight from the server's text where it maps directly (integers, booleans, text): the payload's hot path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import psycopg

from listener.defaults import MAX_JSON_DEPTH
from listener.pg import pgoutput as po

JsonValue = Any
# what psycopg's loaders and json raise for text that is not a value of its type (UnicodeDecodeError is a
# ValueError); malformed server bytes, reported as ProtocolError
BAD_VALUE = (ValueError, psycopg.DataError)
Render = Callable[[bytes], JsonValue]
Fragment = Callable[[bytes], str]
Load = Callable[[bytes], Any]


def text_value(data: bytes) -> str:
    return data.decode()


def finite_or_text(load: Load) -> Render:
    def render(data: bytes) -> JsonValue:
        value = load(data)
        return value if math.isfinite(value) else data.decode()

    return render


def bytea_hex(load: Load) -> Render:
    """bytea always as ``\\x`` hex: the server writes the escape format when ``bytea_output = escape``
    is set for the database or role, so that text is decoded by psycopg's loader and written as hex."""

    def render(data: bytes) -> JsonValue:
        if data[:2] == b"\\x":
            return data.decode()
        return "\\x" + load(data).hex()

    return render


class PgArray(list[Any]):
    """A rendered PostgreSQL array of json/jsonb or bytea (a JSON list like any other): marks which lists
    are the array's dimensions, not JSON arrays inside an element."""

    __slots__ = ()


def map_text_array(load_text_array: Load, render_element: Render) -> Render:
    """An array parsed as text[], each element rendered as its own type (bytea[], json[], jsonb[]).

    psycopg's C bytea[] loader misreads an empty escape-format element (``""``) by unescaping past the
    end of its slice; json elements need :func:`json_or_text_renderer` one by one."""

    def convert(value: Any) -> JsonValue:
        if isinstance(value, list):
            return PgArray(convert(v) for v in value)
        return None if value is None else render_element(value.encode())

    return lambda data: convert(load_text_array(data))


def _all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_all_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    return True


class JsonText(str):
    """A json/jsonb value carried as its PostgreSQL text, not as JSON: it nests deeper than
    :data:`MAX_JSON_DEPTH`, holds a number beyond float range, or (json, message content) holds
    ``\\u0000``, which the queue's jsonb refuses.  Events list such values in ``as_text``."""

    __slots__ = ()


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_STRING_BYTES = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str | bytes) -> int:
    """How deep JSON text nests (0 for a scalar); brackets inside strings do not count."""
    if isinstance(text, bytes):
        text = _JSON_STRING_BYTES.sub(b"", text).decode("utf-8", "replace")
    else:
        text = _JSON_STRING.sub("", text)
    depth = deepest = 0
    for bracket in _BRACKET.findall(text):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def json_too_deep(text: str | bytes) -> bool:
    """Whether JSON text nests deeper than :data:`MAX_JSON_DEPTH` (cheap unless it has that many
    brackets at all)."""
    if isinstance(text, bytes):
        brackets = text.count(b"[") + text.count(b"{")
    else:
        brackets = text.count("[") + text.count("{")
    return brackets > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH


def _overflows(data: str | bytes, value: Any) -> bool:
    """A number beyond float range (``1e400`` is valid in PostgreSQL's json) loads as ``inf``, which has
    no JSON form.  Only an exponent or a number of 309+ digits overflows: skip the walk otherwise."""
    if isinstance(data, bytes):
        maybe = len(data) > 308 or b"e" in data or b"E" in data
    else:
        maybe = len(data) > 308 or "e" in data or "E" in data
    return maybe and not _all_finite(value)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's decoder accepts NaN and Infinity; JSON does not


_decode_json = json.JSONDecoder(parse_constant=_refuse_constant).decode


def json_or_text(content: str) -> tuple[JsonValue, bool]:
    """Text that may be JSON (a message's or a NOTIFY's content) as ``(value, as_text)``: the parsed
    value; or the text itself with ``as_text`` when it is JSON Python cannot carry (too deep, a number
    beyond float range); or None when it is not JSON."""
    if json_too_deep(content) or "\\u0000" in content:
        return content, True
    try:
        value = _decode_json(content)
    except ValueError:
        return None, False
    if _overflows(content, value):
        return content, True
    return value, False


def json_or_text_renderer(load: Load) -> Render:
    """json/jsonb as JSON, unless it nests too deep or a number in it overflows a float: then its text,
    as a :class:`JsonText`."""

    def render(data: bytes) -> JsonValue:
        if json_too_deep(data) or b"\\u0000" in data:
            return JsonText(data.decode())
        value = load(data)
        return JsonText(data.decode()) if _overflows(data, value) else value

    return render


def carried_as_text(value: JsonValue) -> bool:
    """Whether a rendered value (or an element of a rendered json[] / jsonb[]) is json carried as text;
    never walks into the JSON itself."""
    if isinstance(value, PgArray):
        return any(carried_as_text(v) for v in value)
    return isinstance(value, JsonText)


def sanitize_floats(value: JsonValue) -> JsonValue:
    """Non-finite floats inside arrays have no JSON form: use PostgreSQL's spelling."""
    if isinstance(value, list):
        return [sanitize_floats(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


encode_str = json.encoder.encode_basestring
dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def bool_fragment(data: bytes) -> str:
    if data == b"t":
        return "true"
    if data == b"f":
        return "false"
    raise ValueError(f"{data!r} is not a boolean ('t' or 'f')")


def int_value(data: bytes) -> int:
    return int(int_fragment(data))


def bool_value(data: bytes) -> bool:
    return bool_fragment(data) == "true"


def text_fragment(data: bytes) -> str:
    return encode_str(data.decode())


def int_fragment(data: bytes) -> str:
    # PostgreSQL prints integers as an optional '-' and digits, no leading zero: already the JSON number.
    # Checked all the same (no regex: this runs for every integer of every row), since bytes copied into
    # the payload must never make it invalid JSON.
    if data.isdigit():
        if data[0] != 0x30 or len(data) == 1:
            return data.decode()
    elif data[1:].isdigit() and data[0] == 0x2D and (data[1] != 0x30 or len(data) == 2):
        return data.decode()
    raise ValueError(f"{data!r} is not an integer")


def value_fragment(fragment: Fragment, value: po.Value) -> str:
    """A value that is not plain text: NULL, or binary (never requested; shown as bytea hex)."""
    if value is None:
        return "null"
    if type(value) is bytes:
        return fragment(value)
    return dumps("\\x" + value.data.hex())  # type: ignore[union-attr]
