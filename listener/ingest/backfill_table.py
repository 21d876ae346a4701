"""The table as a backfill reads it: its published columns and primary key (from the catalog), the
``--where`` check, and a stored chunk's shape as the expander reads it back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from listener.errors import ListenerError
from listener.pg import pgoutput as po
from listener.pg.lsn import parse_lsn
from listener.queue.batches import BackfillChunk
from listener.rules.catalog import TableInfo


@dataclass(frozen=True, slots=True)
class TableShape:
    """A table's published columns (in order) and its primary key (in index order)."""

    oid: int
    schema: str
    name: str
    columns: tuple[tuple[str, int, int, str], ...]  # name, type OID, type modifier, format_type
    key_columns: tuple[str, ...]

    @property
    def key_positions(self) -> list[int]:
        names = [c[0] for c in self.columns]
        return [names.index(k) for k in self.key_columns]

    def relation(self) -> po.Relation:
        keys = set(self.key_columns)
        cols = tuple(po.Column(c[0] in keys, c[0], c[1], c[2]) for c in self.columns)
        return po.Relation(None, self.oid, self.schema, self.name, "d", cols)


SHAPE = """
SELECT c.oid::int8, n.nspname, c.relname,
       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
       (SELECT array_agg(a.atttypid::int8 ORDER BY a.attnum) FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
       (SELECT array_agg(a.atttypmod ORDER BY a.attnum) FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
       (SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
       (SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = c.oid AND i.indisprimary)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)
"""


def check_where(where: str, table: TableInfo, collation: str) -> str:
    """``--where``: what a rule's ``when:`` allows -- one immutable boolean expression over the table's
    columns (a bare column, or ``new.<column>``, is the row's), compiled by :mod:`listener.rules.predicate`,
    which knows every operator and function it accepts, none with a side effect.  Returns the expression
    as PostgreSQL deparses it over bare columns: the only text of the user's that reaches the server.
    Checked when the request is made and again when the service reads it from ``backfills``."""
    from listener.rules.predicate import PredicateError, compile_predicate

    def refuse(why: str, hint: str | None = None) -> ListenerError:
        allowed = (
            "--where allows what `when:` allows: one immutable boolean expression over the columns of "
            f'{table.name} ({", ".join(table.columns)}), e.g. --where "id > 1000"'
        )
        return ListenerError(f"--where {where!r}: {why}", hint=f"{hint}; {allowed}" if hint else allowed)

    try:
        predicate = compile_predicate(where, table.columns, collation=collation)
    except PredicateError as exc:
        raise refuse(exc.message, exc.hint) from None
    old = sorted(column for side, column in predicate.references if side == "old")
    if old:
        raise refuse(f"old.{old[0]}: a backfill reads rows as they are, which have no old values")
    if predicate.stable is not None:
        raise refuse(f"the expression is not immutable: {predicate.stable}")
    return predicate.bare_sql()


def table_shape(row: Sequence[Any] | None) -> TableShape | None:
    if row is None:
        return None
    oid, schema, name, names, oids, mods, types, keys = row
    columns = tuple(zip(names or (), oids or (), mods or (), types or (), strict=True))
    return TableShape(int(oid), schema, name, columns, tuple(keys or ()))


def chunk_from_row(row: Any) -> tuple[BackfillChunk, TableShape]:
    """A ``backfill_chunks`` row as the expander sees it."""
    columns = tuple((str(c[0]), int(c[1]), -1, "") for c in json.loads(row["columns"]))
    key_positions = list(row["key_columns"])
    shape = TableShape(0, "", row["table_name"], columns, tuple(columns[p][0] for p in key_positions))
    chunk = BackfillChunk(
        backfill_id=row["backfill_id"], seq=row["seq"], rule=row["rule"], workflow=row["workflow"],
        priority=row["priority"], gated=False, key_limit=None, ordered=False, table_name=row["table_name"],
        columns=row["columns"], key_positions=key_positions, lsn=parse_lsn(row["lsn"]),
        read_at=row["read_at"], last_key=[], rows_read=0, rows_dropped=0, final=False, data=row["data"],
        rows=row["rows"],
    )  # fmt: skip
    return chunk, shape
