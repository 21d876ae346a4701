"""A table as a Relation message describes it: its columns, each with its loader, renderer and JSON
fragment chosen once (a Relation message replaces the description, so an ALTER TABLE mid-stream applies
to the changes after it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from listener.pg import pgoutput as po
from listener.pg.types import BOOL_OIDS, INT_OIDS, TypeRegistry
from listener.pg.values import (
    Fragment,
    Load,
    Render,
    bool_fragment,
    dumps,
    int_fragment,
    text_fragment,
    text_value,
)


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


def fragment_for(render: Render, type_oid: int, types: TypeRegistry) -> Fragment:
    """The JSON text of a value: fast paths where the server's text maps directly, else render + dump."""
    base = types.shape(type_oid)
    if base.element_oid is None:
        if base.load_oid in INT_OIDS:
            return int_fragment
        if base.load_oid in BOOL_OIDS:
            return bool_fragment
    if render is text_value:
        return text_fragment
    return lambda data: dumps(render(data))


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
        key = dumps(c.name) + ":"
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
