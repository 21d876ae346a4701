"""What rules need to know about their tables, read from the source database's catalog.

Predicates (``when:``), ``changed:`` and ``payload:`` are checked against the table's real columns and
types at load time; ``listener check`` also looks at the replica identity (which old values the server
sends) and at the database's collation (how text orders).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from listener.rules.config import Rule, split_table
from listener.rules.predicate import ColumnType

_COLUMNS = """
SELECT a.attname,
       coalesce(nullif(t.typbasetype, 0), a.atttypid)::int8 AS type_oid,
       format_type(coalesce(nullif(t.typbasetype, 0), a.atttypid),
                   CASE WHEN t.typbasetype <> 0 THEN t.typtypmod ELSE a.atttypmod END) AS type_name,
       coalesce(bt.typcategory, t.typcategory)::text AS category,
       a.attnum = ANY (coalesce(ri.indkey::int2[], '{}')) AS is_key,
       c.relreplident::text AS identity,
       rk.columns AS row_key
FROM pg_class c
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype AND t.typbasetype <> 0
LEFT JOIN LATERAL (
    SELECT i.indkey FROM pg_index i
    WHERE i.indrelid = c.oid
      AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
    LIMIT 1
) ri ON true
LEFT JOIN LATERAL (
    -- the row's key for flow control (see TableInfo.row_key): the replica identity index with USING INDEX;
    -- else the primary key, else the narrowest unique index whose key columns are all plain NOT NULL
    -- columns (not partial, no expression)
    SELECT ARRAY(
        SELECT ka.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_attribute ka ON ka.attrelid = i.indrelid AND ka.attnum = k.attnum
        WHERE k.n <= i.indnkeyatts ORDER BY k.n
    ) AS columns
    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
      AND (c.relreplident <> 'i' OR i.indisreplident)
      AND NOT EXISTS (
          SELECT 1 FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
          LEFT JOIN pg_attribute ka ON ka.attrelid = i.indrelid AND ka.attnum = k.attnum
          WHERE k.n <= i.indnkeyatts AND NOT coalesce(ka.attnotnull, false)
      )
    ORDER BY i.indisprimary DESC, i.indnkeyatts, ic.relname
    LIMIT 1
) rk ON true
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s  -- not to_regclass: it needs USAGE on the schema
ORDER BY a.attnum
"""

# The default collation's provider and locale: pg_database.datlocale is 17+ (daticulocale in 15-16, which
# added ICU as a database default); 14 knows only libc, so its provider is 'c' and its locale datcollate.
_COLLATION_17 = """
SELECT datlocprovider::text, datcollate, coalesce(datlocale, '')
FROM pg_database WHERE datname = current_database()
"""
_COLLATION_15 = """
SELECT datlocprovider::text, datcollate, coalesce(daticulocale, '')
FROM pg_database WHERE datname = current_database()
"""
_COLLATION_14 = """
SELECT 'c', datcollate, '' FROM pg_database WHERE datname = current_database()
"""


def _collation_query(server_version: int) -> str:
    if server_version >= 170000:
        return _COLLATION_17
    return _COLLATION_15 if server_version >= 150000 else _COLLATION_14


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A table's columns (in order, with types), its replica identity and the identity's columns."""

    name: str  # as written in the config, "schema.table"
    columns: Mapping[str, ColumnType]
    identity: str  # 'd' default, 'f' full, 'i' index, 'n' nothing
    key_columns: tuple[str, ...]  # the replica identity's columns (none for FULL and NOTHING)
    # What identifies a row, for the default flow-control key of `ordered:` / `key_concurrency:`: the
    # replica identity index with USING INDEX (a delete carries only its columns), else the primary key,
    # else the narrowest unique index over NOT NULL columns, not partial, without expressions.  Never the
    # columns of REPLICA IDENTITY FULL (all of them: every change of a row would have a key of its own).
    # () when the table has none.
    row_key: tuple[str, ...] = ()

    @property
    def full_old_row(self) -> bool:
        """Whether updates and deletes carry the whole old row (REPLICA IDENTITY FULL)."""
        return self.identity == "f"


def _table_info(name: str, rows: list[tuple[Any, ...]]) -> TableInfo | None:
    if not rows:
        return None
    columns = {str(r[0]): ColumnType(str(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows}
    keys = tuple(str(r[0]) for r in rows if r[4])
    return TableInfo(name, columns, str(rows[0][5]), keys, tuple(rows[0][6] or ()))


def _collation(row: tuple[Any, ...] | None) -> str:
    """The database's default collation: "C" when text orders by code point (libc C/POSIX, builtin
    C/C.UTF-8), else its name."""
    if row is None:
        return "C"
    provider, collate, locale = (str(v) for v in row)
    name = locale if provider in ("i", "b") else collate
    if (provider == "c" and collate in ("C", "POSIX")) or (provider == "b" and locale in ("C", "C.UTF-8")):
        return "C"
    return name


def rule_tables(rules: Iterable[Rule]) -> list[str]:
    """The distinct tables of the table rules, in first-mention order."""
    return list(dict.fromkeys(r.table for r in rules if r.table is not None))


def read_tables(
    conn: psycopg.Connection[Any], tables: Iterable[str]
) -> tuple[dict[str, TableInfo | None], str]:
    """Each table's info (None: no such table) and the database's collation."""
    out: dict[str, TableInfo | None] = {}
    for table in tables:
        out[table] = _table_info(table, conn.execute(_COLUMNS, split_table(table)).fetchall())
    return out, _collation(conn.execute(_collation_query(conn.info.server_version)).fetchone())


async def read_tables_async(
    conn: psycopg.AsyncConnection[Any], tables: Iterable[str]
) -> tuple[dict[str, TableInfo | None], str]:
    """:func:`read_tables` over an async connection."""
    out: dict[str, TableInfo | None] = {}
    for table in tables:
        cur = await conn.execute(_COLUMNS, split_table(table))
        out[table] = _table_info(table, await cur.fetchall())
    cur = await conn.execute(_collation_query(conn.info.server_version))
    return out, _collation(await cur.fetchone())
