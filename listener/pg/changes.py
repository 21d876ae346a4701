"""Decoded pgoutput messages → row changes with relation metadata and values.

Values arrive as PostgreSQL text (we never ask for binary).  They are converted by psycopg's own loaders,
chosen by type OID once per column when a Relation message arrives (user-defined types are resolved
through the catalog: a domain loads as its base type, arrays of user types as lists of text).  Two
renderings exist:

* typed Python values (``Decimal``, ``datetime``, ``UUID``, ``bytes``, lists, dicts):
  :meth:`Change.new_values`;
* JSON values — lossless JSON-native values for integers, booleans, text, finite floats, json/jsonb and
  arrays; otherwise the PostgreSQL text representation as a string (bytea always as ``\\x`` hex, whatever
  ``bytea_output`` says) — :meth:`Change.new_json`.

Columns whose TOASTed value the server did not send are left out and listed in ``unchanged_toast``;
they are never NULL.  An old key tuple ('K') carries only the replica identity columns.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg import postgres, pq
from psycopg.adapt import AdaptersMap, Transformer

from listener.defaults import HUGE_TEXT_BYTES, HUGE_TEXT_PIECE_BYTES, MAX_JSON_DEPTH
from listener.errors import ProtocolError
from listener.pg import pgoutput as po
from listener.pg.lsn import format_lsn

logger = logging.getLogger(__name__)

FIRST_NORMAL_OID = 16384
TEXT_ARRAY_OID = 1009
BYTEA_OID = 17

_INT_OIDS = frozenset({20, 21, 23, 26, 28})  # int8 int2 int4 oid xid
_BOOL_OIDS = frozenset({16})
_FLOAT_OIDS = frozenset({700, 701})
_JSON_OIDS = frozenset({114, 3802})
_TEXT_OIDS = frozenset({25, 1043, 1042, 19, 18})  # text varchar bpchar name "char"
_JSON_NATIVE_ELEMENTS = _INT_OIDS | _BOOL_OIDS | _FLOAT_OIDS | _JSON_OIDS | _TEXT_OIDS
# arrays of these keep their element type (arrays of anything else load as text[])
_TYPED_ELEMENTS = _JSON_NATIVE_ELEMENTS | {BYTEA_OID}

JsonValue = Any
# what psycopg's loaders and json raise for text that is not a value of its type (UnicodeDecodeError is a
# ValueError); malformed server bytes, reported as ProtocolError
_BAD_VALUE = (ValueError, psycopg.DataError)
Render = Callable[[bytes], JsonValue]
Fragment = Callable[[bytes], str]
Load = Callable[[bytes], Any]

OPS = {po.Insert: "insert", po.Update: "update", po.Delete: "delete"}


def _text(data: bytes) -> str:
    return data.decode()


def _finite_or_text(load: Load) -> Render:
    def render(data: bytes) -> JsonValue:
        value = load(data)
        return value if math.isfinite(value) else data.decode()

    return render


def _bytea_hex(load: Load) -> Render:
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


def _map_text_array(load_text_array: Load, render_element: Render) -> Render:
    """An array parsed as text[], each element rendered as its own type (bytea[], json[], jsonb[]).

    psycopg's C bytea[] loader misreads an empty escape-format element (``""``) by unescaping past the
    end of its slice; json elements need :func:`_json_or_text` one by one."""

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


def _json_or_text(load: Load) -> Render:
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


def _sanitize_floats(value: JsonValue) -> JsonValue:
    """Non-finite floats inside arrays have no JSON form: use PostgreSQL's spelling."""
    if isinstance(value, list):
        return [_sanitize_floats(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


@dataclass(frozen=True, slots=True)
class TypeShape:
    """What a type OID loads as: the OID whose loader to use, and for arrays the element OID."""

    load_oid: int
    element_oid: int | None = None


class TypeRegistry:
    """Chooses psycopg loaders per type OID; resolves user-defined types through the catalog."""

    def __init__(self) -> None:
        self.adapters = AdaptersMap(psycopg.adapters)
        self.transformer = Transformer(self.adapters)
        self._element_of: dict[int, int] = {}
        for info in postgres.types:
            if info.array_oid:
                self._element_of[info.array_oid] = info.oid
        self._array_of = {elem: arr for arr, elem in self._element_of.items()}
        self._user: dict[int, TypeShape] = {}

    def unknown(self, oids: Iterable[int]) -> list[int]:
        """User-defined type OIDs not resolved yet (they need :meth:`resolve`)."""
        return sorted({o for o in oids if o >= FIRST_NORMAL_OID and o not in self._user})

    async def resolve(self, conn: psycopg.AsyncConnection[Any], oids: Sequence[int]) -> None:
        """Look user types up in the catalog: a domain loads as its base type, an array as its element's
        array type when that is JSON-native, else as text[]; anything else (enum, composite, range) as
        text."""
        rows: dict[int, tuple[str, str, int, int]] = {}
        pending = self.unknown(oids)
        while pending:
            cur = await conn.execute(
                "SELECT oid::int8, typtype::text, typcategory::text, typelem::int8, typbasetype::int8"
                " FROM pg_type WHERE oid = ANY(%s)",
                [pending],
            )
            fetched = await cur.fetchall()
            for oid, typtype, category, elem, base in fetched:
                rows[oid] = (typtype, category, elem, base)
            pending = sorted(
                {
                    ref
                    for _, typtype, category, elem, base in fetched
                    for ref in (base if typtype == "d" else 0, elem if category == "A" else 0)
                    if ref >= FIRST_NORMAL_OID and ref not in rows and ref not in self._user
                }
            )
        for oid in self.unknown(oids):
            self._user[oid] = self._shape_from(oid, rows)

    def _shape_from(self, oid: int, rows: dict[int, tuple[str, str, int, int]]) -> TypeShape:
        if oid < FIRST_NORMAL_OID or oid in self._user or oid not in rows:
            return self.shape(oid)
        typtype, category, elem, base = rows[oid]
        if typtype == "d":
            return self._shape_from(base, rows)
        if category == "A" and elem:
            element = self._shape_from(elem, rows)
            scalar = element.load_oid if element.element_oid is None else 0
            if scalar in _TYPED_ELEMENTS and scalar in self._array_of:
                return TypeShape(self._array_of[scalar], scalar)
            return TypeShape(TEXT_ARRAY_OID, 25)
        return TypeShape(25)

    def shape(self, oid: int) -> TypeShape:
        if oid >= FIRST_NORMAL_OID:
            return self._user.get(oid, TypeShape(25))
        element = self._element_of.get(oid)
        return TypeShape(oid, element)

    def loader(self, oid: int) -> Load:
        shape = self.shape(oid)
        return self.transformer.get_loader(shape.load_oid, pq.Format.TEXT).load

    def is_json(self, oid: int) -> bool:
        """Whether values of this type are json/jsonb, or arrays of them (which may be carried as text)."""
        shape = self.shape(oid)
        return shape.load_oid in _JSON_OIDS or shape.element_oid in _JSON_OIDS

    def renderer(self, oid: int) -> Render:
        """How a text value of this type becomes a JSON value (see the module docstring)."""
        shape = self.shape(oid)
        base = shape.load_oid
        if shape.element_oid is not None:  # an array
            element = shape.element_oid
            text_array = self.transformer.get_loader(TEXT_ARRAY_OID, pq.Format.TEXT).load
            if element == BYTEA_OID or element in _JSON_OIDS:
                return _map_text_array(text_array, self.renderer(element))
            if element not in _JSON_NATIVE_ELEMENTS:
                return text_array
            load = self.transformer.get_loader(base, pq.Format.TEXT).load
            if element in _FLOAT_OIDS:
                return lambda data: _sanitize_floats(load(data))
            return load
        if base in _TEXT_OIDS or base == 25:
            return _text
        if base == BYTEA_OID:
            return _bytea_hex(self.transformer.get_loader(BYTEA_OID, pq.Format.TEXT).load)
        if base in _JSON_OIDS:
            return _json_or_text(self.transformer.get_loader(base, pq.Format.TEXT).load)
        if base in _BOOL_OIDS:
            return _bool
        if base in _INT_OIDS:
            return _int
        if base in _FLOAT_OIDS:
            return _finite_or_text(self.transformer.get_loader(base, pq.Format.TEXT).load)
        return _text


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type_oid: int
    is_key: bool
    render: Render  # server text -> JSON value
    load: Load  # server text -> typed Python value
    fragment: Fragment  # server text -> JSON text (same value as render, serialized)
    key: str  # '"name":', the JSON object key prefix
    json: bool = False  # json/jsonb or an array of them: a value may be carried as text (JsonText)


_encode_str = json.encoder.encode_basestring
_STAND_IN = re.compile(r'"\\u0000(\d+)"')
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _bool_fragment(data: bytes) -> str:
    if data == b"t":
        return "true"
    if data == b"f":
        return "false"
    raise ValueError(f"{data!r} is not a boolean ('t' or 'f')")


def _int(data: bytes) -> int:
    return int(_int_fragment(data))


def _bool(data: bytes) -> bool:
    return _bool_fragment(data) == "true"


def _text_fragment(data: bytes) -> str:
    return _encode_str(data.decode())


def _int_fragment(data: bytes) -> str:
    # PostgreSQL prints integers as an optional '-' and digits, no leading zero: already the JSON number.
    # Checked all the same (no regex: this runs for every integer of every row), since bytes copied into
    # the payload must never make it invalid JSON.
    if data.isdigit():
        if data[0] != 0x30 or len(data) == 1:
            return data.decode()
    elif data[1:].isdigit() and data[0] == 0x2D and (data[1] != 0x30 or len(data) == 2):
        return data.decode()
    raise ValueError(f"{data!r} is not an integer")


def _fragment(fragment: Fragment, value: po.Value) -> str:
    """A value that is not plain text: NULL, or binary (never requested; shown as bytea hex)."""
    if value is None:
        return "null"
    if type(value) is bytes:
        return fragment(value)
    return _dumps("\\x" + value.data.hex())  # type: ignore[union-attr]


def fragment_for(render: Render, type_oid: int, types: TypeRegistry) -> Fragment:
    """The JSON text of a value: fast paths where the server's text maps directly, else render + dump."""
    base = types.shape(type_oid)
    if base.element_oid is None:
        if base.load_oid in _INT_OIDS:
            return _int_fragment
        if base.load_oid in _BOOL_OIDS:
            return _bool_fragment
    if render is _text:
        return _text_fragment
    return lambda data: _dumps(render(data))


@dataclass(frozen=True, slots=True)
class RelationInfo:
    oid: int
    schema: str
    name: str
    replica_identity: str
    columns: tuple[ColumnInfo, ...]
    qualified: str  # "schema.name", made once: it goes into every event of the table
    fragments: tuple[tuple[str, Fragment, bool], ...]  # per column: JSON key prefix, fragment, is_key
    positions: dict[str, int] = field(default_factory=dict)  # column name -> index in a tuple
    has_json: bool = False  # a json/jsonb column: payloads may list values carried as text

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.is_key)


def relation_info(msg: po.Relation, types: TypeRegistry) -> RelationInfo:
    columns = []
    for c in msg.columns:
        render = types.renderer(c.type_oid)
        fragment = fragment_for(render, c.type_oid, types)
        load = types.loader(c.type_oid)
        key = _dumps(c.name) + ":"
        is_json = types.is_json(c.type_oid)
        columns.append(ColumnInfo(c.name, c.type_oid, c.is_key, render, load, fragment, key, is_json))
    qualified = f"{msg.namespace}.{msg.name}"
    fragments = tuple((c.key, c.fragment, c.is_key) for c in columns)
    positions = {c.name: i for i, c in enumerate(columns)}
    return RelationInfo(
        msg.oid,
        msg.namespace,
        msg.name,
        msg.replica_identity,
        tuple(columns),
        qualified,
        fragments,
        positions,
        any(c.json for c in columns),
    )


@dataclass(slots=True)
class Change:
    """One row change (or a truncate of several tables) inside a committed transaction."""

    op: str
    lsn: int
    commit_lsn: int
    commit_text: str  # commit_lsn as PostgreSQL prints it, formatted once per transaction
    xid: int
    commit_time: datetime
    relation: RelationInfo | None
    ordinal: int
    new: po.TupleData | None = None
    old: po.TupleData | None = None
    old_kind: str | None = None
    # truncate only: every table truncated, with each table's ordinal
    truncated: tuple[tuple[RelationInfo, int], ...] = field(default=())

    @property
    def table(self) -> str | None:
        return self.relation.qualified if self.relation is not None else None

    def _tuple_json(self, values: po.TupleData, *, key_only: bool) -> dict[str, JsonValue]:
        assert self.relation is not None
        out: dict[str, JsonValue] = {}
        for col, value in zip(self.relation.columns, values, strict=True):
            if value is po.UNCHANGED_TOAST or (key_only and not col.is_key):
                continue
            if value is None:
                out[col.name] = None
            elif isinstance(value, bytes):
                out[col.name] = col.render(value)
            else:  # BinaryValue: we never request binary; keep its bytes visible rather than guess
                out[col.name] = "\\x" + value.data.hex()  # type: ignore[union-attr]
        return out

    def _tuple_fragment(self, values: po.TupleData, *, key_only: bool, as_text: set[str]) -> str:
        """JSON text of a tuple, column by column; the same values as :meth:`_tuple_json`.  The names of
        json columns carried as text are added to ``as_text``.

        The hot path of ingest (every event's payload): one comprehension over precomputed
        (key, fragment) pairs."""
        rel = self.relation
        assert rel is not None
        cols = rel.fragments
        if len(values) != len(cols):
            raise ProtocolError(
                f"a tuple of {len(values)} columns for {rel.qualified}, which has {len(cols)}",
                offset=0,
                lsn=self.lsn,
            )
        unchanged = po.UNCHANGED_TOAST
        if rel.has_json:
            parts = []
            for col, v in zip(rel.columns, values, strict=False):  # lengths checked above
                if v is unchanged or (key_only and not col.is_key):
                    continue
                if col.json and v.__class__ is bytes:
                    rendered = col.render(v)
                    if carried_as_text(rendered):
                        as_text.add(col.name)
                    parts.append(col.key + _dumps(rendered))
                else:
                    parts.append(col.key + _fragment(col.fragment, v))
        elif key_only:
            parts = [
                k + _fragment(f, v)
                for (k, f, is_key), v in zip(cols, values, strict=False)  # lengths checked above
                if is_key and v is not unchanged
            ]
        else:
            parts = [
                k + (f(v) if v.__class__ is bytes else _fragment(f, v))
                for (k, f, _), v in zip(cols, values, strict=False)
                if v is not unchanged
            ]
        return "{" + ",".join(parts) + "}"

    def payload_json(self, *, huge: bool = False) -> str:
        """``{"new": .., "old": .., "unchanged_toast": [..]}`` as JSON text: the queue's event payload.

        With ``huge`` (a change whose message is megabytes), the same text is made holding less memory
        (see :meth:`_huge_payload_json`).  A value that is not its type's text raises
        :class:`ProtocolError` naming its offset."""
        try:
            return self._huge_payload_json() if huge else self._payload_json()
        except _BAD_VALUE as exc:
            raise self._bad_value(exc) from None

    def _huge_payload_json(self) -> str:
        """:meth:`_payload_json` of a huge row, built in one string that grows in place: each text value of
        HUGE_TEXT_BYTES or more is decoded and escaped a piece at a time onto its end.  Memory then holds
        the row's values and the payload, not also a decoded copy, an escaped copy and the concatenations
        of each value (invariant 6)."""
        rel = self.relation
        assert rel is not None
        held: list[bytes] = []  # the huge values, each replaced by NUL and its number in the skeleton

        def stand_in(values: po.TupleData | None) -> po.TupleData | None:
            if values is None or len(values) != len(rel.fragments):
                return values  # (a wrong column count is reported by _payload_json)
            out: list[po.Value] = []
            for (_, fragment, _), v in zip(rel.fragments, values, strict=True):
                if fragment is _text_fragment and isinstance(v, bytes) and len(v) >= HUGE_TEXT_BYTES:
                    out.append(b"\0%d" % len(held))
                    held.append(v)
                else:
                    out.append(v)
            return tuple(out)

        skeleton = replace(self, new=stand_in(self.new), old=stand_in(self.old))._payload_json()
        # PostgreSQL text never holds NUL, so "\u0000<n>" as a whole JSON string is only ever a stand-in
        pieces = _STAND_IN.split(skeleton)
        del skeleton
        payload = pieces[0]
        for i in range(1, len(pieces), 2):
            data = memoryview(held[int(pieces[i])])
            decode = codecs.getincrementaldecoder("utf-8")().decode
            payload += '"'
            for start in range(0, len(data), HUGE_TEXT_PIECE_BYTES):
                # in place: ``payload`` is only referenced here (CPython appends to a string so held)
                payload += _encode_str(decode(data[start : start + HUGE_TEXT_PIECE_BYTES]))[1:-1]
            payload += _encode_str(decode(b"", True))[1:-1] + '"' + pieces[i + 1]
        return payload

    def _payload_json(self) -> str:
        as_text: set[str] = set()
        tuple_fragment = self._tuple_fragment
        new = "null" if self.new is None else tuple_fragment(self.new, key_only=False, as_text=as_text)
        key_only = self.old_kind == "K"
        old = "null" if self.old is None else tuple_fragment(self.old, key_only=key_only, as_text=as_text)
        toast = _dumps(self.unchanged_toast()) if self.op == "update" else "[]"
        # one join, not a chain of +: a huge row's text is copied once more, not once per piece
        if as_text:
            assert self.relation is not None
            listed = _dumps([c.name for c in self.relation.columns if c.name in as_text])
            return "".join(
                ('{"new":', new, ',"old":', old, ',"unchanged_toast":', toast, ',"as_text":', listed, "}")
            )
        return "".join(('{"new":', new, ',"old":', old, ',"unchanged_toast":', toast, "}"))

    def as_text(self, new: dict[str, JsonValue] | None, old: dict[str, JsonValue] | None) -> list[str]:
        """The json columns of rendered rows whose values are carried as text, in column order."""
        rel = self.relation
        if rel is None or not rel.has_json:
            return []
        return [
            c.name
            for c in rel.columns
            if c.json and any(row and carried_as_text(row.get(c.name)) for row in (new, old))
        ]

    def new_json(self) -> dict[str, JsonValue] | None:
        if self.new is None:
            return None
        try:
            return self._tuple_json(self.new, key_only=False)
        except _BAD_VALUE as exc:
            raise self._bad_value(exc) from None

    def old_json(self) -> dict[str, JsonValue] | None:
        if self.old is None:
            return None
        try:
            return self._tuple_json(self.old, key_only=self.old_kind == "K")
        except _BAD_VALUE as exc:
            raise self._bad_value(exc) from None

    def _bad_value(self, exc: Exception) -> ProtocolError:
        """The value that could not be rendered, found again column by column, with its offset in the
        change's message (type byte, relation OID, then each tuple: marker, Int16 count, and per
        column a kind byte, and for a value an Int32 length and the bytes)."""
        rel = self.relation
        assert rel is not None
        sides = {"insert": ("new",), "update": ("old", "new"), "delete": ("old",)}.get(self.op, ())
        pos = 5
        for side in sides:
            values = self.new if side == "new" else self.old
            if values is None:
                continue
            pos += 3
            for col, value in zip(rel.columns, values, strict=False):
                if value is None or value is po.UNCHANGED_TOAST:
                    pos += 1
                    continue
                data = value if isinstance(value, bytes) else value.data  # type: ignore[union-attr]
                try:
                    if isinstance(value, bytes):
                        _dumps(col.render(value))
                        col.fragment(value)
                except _BAD_VALUE as found:
                    type_name = getattr(postgres.types.get(col.type_oid), "name", f"OID {col.type_oid}")
                    return ProtocolError(
                        f"{side} value of column {col.name!r} of {rel.qualified} is not {type_name} text"
                        f" ({data[:40]!r}: {found})",
                        offset=pos + 5,
                        lsn=self.lsn,
                    )
                pos += 5 + len(data)
        return ProtocolError(f"a value of {rel.qualified} cannot be rendered: {exc}", offset=0, lsn=self.lsn)

    def unchanged_toast(self) -> list[str]:
        if self.new is None or self.relation is None:
            return []
        return [
            c.name for c, v in zip(self.relation.columns, self.new, strict=True) if v is po.UNCHANGED_TOAST
        ]

    def new_values(self) -> dict[str, Any] | None:
        """The new row as typed Python values (psycopg's loaders); unchanged TOAST columns left out."""
        if self.new is None or self.relation is None:
            return None
        return {
            c.name: (c.load(v) if isinstance(v, bytes) else v)
            for c, v in zip(self.relation.columns, self.new, strict=True)
            if v is not po.UNCHANGED_TOAST
        }


@dataclass(frozen=True, slots=True)
class TxnBegin:
    commit_lsn: int
    xid: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class TxnCommit:
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


class Assembler:
    """Turns pgoutput messages into TxnBegin, Change…, TxnCommit.  Pure and synchronous.

    Changes are handed out one at a time as they arrive (never a whole transaction in a list: a
    transaction may be gigabytes).  A Relation message replaces the cached description of its table, so
    an ALTER TABLE mid-stream applies to the changes after it.
    """

    def __init__(self, types: TypeRegistry) -> None:
        self.types = types
        self.relations: dict[int, RelationInfo] = {}
        self._begin: po.Begin | None = None
        self._commit_text = ""
        self._ordinals: dict[int, int] = {}

    @property
    def in_transaction(self) -> bool:
        return self._begin is not None

    @property
    def begin(self) -> po.Begin | None:
        """The Begin message of the open transaction."""
        return self._begin

    def relation(self, msg: po.Relation) -> RelationInfo:
        info = relation_info(msg, self.types)
        self.relations[msg.oid] = info
        return info

    def feed(self, lsn: int, msg: po.PgOutputMessage) -> TxnBegin | Change | TxnCommit | None:
        kind = type(msg)
        if kind is po.Insert or kind is po.Update or kind is po.Delete:
            return self._change(lsn, msg)  # type: ignore[arg-type]
        if kind is po.Begin:
            assert isinstance(msg, po.Begin)
            if self._begin is not None:
                raise ProtocolError("Begin inside an open transaction", offset=0, lsn=lsn)
            self._begin = msg
            self._commit_text = format_lsn(msg.final_lsn)
            self._ordinals = {}
            return TxnBegin(msg.final_lsn, msg.xid, msg.commit_time)
        if kind is po.Commit:
            assert isinstance(msg, po.Commit)
            if self._begin is None:
                raise ProtocolError("Commit without Begin", offset=0, lsn=lsn)
            self._begin = None
            return TxnCommit(msg.commit_lsn, msg.end_lsn, msg.commit_time)
        if kind is po.Relation:
            assert isinstance(msg, po.Relation)
            self.relation(msg)
            return None
        if kind is po.Truncate:
            assert isinstance(msg, po.Truncate)
            return self._truncate(lsn, msg)
        if kind in (po.StreamStart, po.StreamStop, po.StreamCommit, po.StreamAbort):
            raise ProtocolError(
                f"unexpected {kind.__name__}: listener does not request streaming", offset=0, lsn=lsn
            )
        return None  # Origin, Type, Message (handled by callers that want them), two-phase (not requested)

    def _txn(self, lsn: int) -> po.Begin:
        if self._begin is None:
            raise ProtocolError("row change outside a transaction", offset=0, lsn=lsn)
        return self._begin

    def peek_ordinal(self, oid: int) -> int:
        """The ordinal the next change of table ``oid`` in the open transaction will get."""
        return self._ordinals.get(oid, 0)

    def set_next_ordinal(self, oid: int, ordinal: int) -> None:
        """The next change of table ``oid`` in the open transaction takes ``ordinal`` (changes counted
        elsewhere, e.g. kept raw in a compact chunk)."""
        self._ordinals[oid] = ordinal

    def next_ordinal(self, oid: int) -> int:
        """The ordinal of the next change of table ``oid`` in the open transaction."""
        n = self._ordinals.get(oid, 0)
        self._ordinals[oid] = n + 1
        return n

    def _lookup(self, oid: int, lsn: int) -> RelationInfo:
        try:
            return self.relations[oid]
        except KeyError:
            raise ProtocolError(
                f"change for relation OID {oid} before its Relation message", offset=1, lsn=lsn
            ) from None

    def _change(self, lsn: int, msg: po.Insert | po.Update | po.Delete) -> Change:
        begin = self._txn(lsn)
        rel = self._lookup(msg.relation_oid, lsn)
        ordinal = self.next_ordinal(msg.relation_oid)
        commit, text, xid, at = begin.final_lsn, self._commit_text, begin.xid, begin.commit_time
        if type(msg) is po.Insert:
            return Change("insert", lsn, commit, text, xid, at, rel, ordinal, msg.new)
        if type(msg) is po.Update:
            assert isinstance(msg, po.Update)
            return Change("update", lsn, commit, text, xid, at, rel, ordinal, msg.new, msg.old, msg.old_kind)
        assert isinstance(msg, po.Delete)
        return Change("delete", lsn, commit, text, xid, at, rel, ordinal, None, msg.old, msg.old_kind)

    def _truncate(self, lsn: int, msg: po.Truncate) -> Change:
        begin = self._txn(lsn)
        if not msg.relation_oids:
            raise ProtocolError("Truncate of no relation", offset=1, lsn=lsn)
        tables = tuple((self._lookup(oid, lsn), self.next_ordinal(oid)) for oid in msg.relation_oids)
        first, ordinal = tables[0]
        return Change(
            "truncate", lsn, begin.final_lsn, self._commit_text, begin.xid, begin.commit_time, first, ordinal,
            truncated=tables,
        )  # fmt: skip


def change_json(change: Change) -> dict[str, JsonValue]:
    """The JSON line `listener tail` prints for a change (format documented in README)."""
    base: dict[str, JsonValue] = {
        "lsn": format_lsn(change.lsn),
        "commit_lsn": format_lsn(change.commit_lsn),
        "xid": change.xid,
        "commit_time": change.commit_time.isoformat(),
    }
    if change.op == "truncate":
        base.update(
            table=None,
            tables=[rel.qualified for rel, _ in change.truncated],
            op="truncate",
            new=None,
            old=None,
            unchanged_toast=[],
        )
        return base
    new, old = change.new_json(), change.old_json()
    base.update(table=change.table, op=change.op, new=new, old=old, unchanged_toast=change.unchanged_toast())
    as_text = change.as_text(new, old)
    if as_text:
        base["as_text"] = as_text
    return base
