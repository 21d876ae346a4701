"""Types by OID: which psycopg loader and which JSON renderer a column's values get.

Values arrive as PostgreSQL text (we never ask for binary).  They are converted by psycopg's own loaders,
chosen by type OID once per column when a Relation message arrives.  User-defined types are resolved
through the catalog: a domain loads as its base type, arrays of user types as lists of text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import postgres, pq
from psycopg.adapt import AdaptersMap, Transformer

from listener.pg.values import (
    Load,
    Render,
    bool_value,
    bytea_hex,
    finite_or_text,
    int_value,
    json_or_text_renderer,
    map_text_array,
    sanitize_floats,
    text_value,
)

FIRST_NORMAL_OID = 16384
TEXT_ARRAY_OID = 1009
BYTEA_OID = 17

INT_OIDS = frozenset({20, 21, 23, 26, 28})  # int8 int2 int4 oid xid
BOOL_OIDS = frozenset({16})
FLOAT_OIDS = frozenset({700, 701})
JSON_OIDS = frozenset({114, 3802})
TEXT_OIDS = frozenset({25, 1043, 1042, 19, 18})  # text varchar bpchar name "char"
JSON_NATIVE_ELEMENTS = INT_OIDS | BOOL_OIDS | FLOAT_OIDS | JSON_OIDS | TEXT_OIDS
# arrays of these keep their element type (arrays of anything else load as text[])
TYPED_ELEMENTS = JSON_NATIVE_ELEMENTS | {BYTEA_OID}


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
            if scalar in TYPED_ELEMENTS and scalar in self._array_of:
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
        return shape.load_oid in JSON_OIDS or shape.element_oid in JSON_OIDS

    def renderer(self, oid: int) -> Render:
        """How a text value of this type becomes a JSON value (see the module docstring)."""
        shape = self.shape(oid)
        base = shape.load_oid
        if shape.element_oid is not None:  # an array
            element = shape.element_oid
            text_array = self.transformer.get_loader(TEXT_ARRAY_OID, pq.Format.TEXT).load
            if element == BYTEA_OID or element in JSON_OIDS:
                return map_text_array(text_array, self.renderer(element))
            if element not in JSON_NATIVE_ELEMENTS:
                return text_array
            load = self.transformer.get_loader(base, pq.Format.TEXT).load
            if element in FLOAT_OIDS:
                return lambda data: sanitize_floats(load(data))
            return load
        if base in TEXT_OIDS or base == 25:
            return text_value
        if base == BYTEA_OID:
            return bytea_hex(self.transformer.get_loader(BYTEA_OID, pq.Format.TEXT).load)
        if base in JSON_OIDS:
            return json_or_text_renderer(self.transformer.get_loader(base, pq.Format.TEXT).load)
        if base in BOOL_OIDS:
            return bool_value
        if base in INT_OIDS:
            return int_value
        if base in FLOAT_OIDS:
            return finite_or_text(self.transformer.get_loader(base, pq.Format.TEXT).load)
        return text_value
