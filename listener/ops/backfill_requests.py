"""`listener backfill`: the command's side of a backfill (:mod:`listener.ingest.backfill` is the
ingest's).

It checks a request against the configuration and the catalog (the rule, the table's primary key, the
``--where`` expression: what a rule's ``when:`` allows, see
:func:`listener.ingest.backfill_table.check_where`), records it as a row of ``backfills`` and wakes the
running ingest through the control channel, then follows the row with a progress bar.  ``status`` lists
the backfills, ``cancel`` ends one.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from listener.defaults import BACKFILL_FOLLOW_POLL_S
from listener.errors import ListenerError
from listener.ingest.backfill_marks import OPEN
from listener.ingest.backfill_table import SHAPE, check_where, table_shape
from listener.queue import migrations, queries
from listener.queue import store as store_mod
from listener.rules.catalog import read_tables
from listener.rules.config import Config


def _table_ref(schema: str, table: str) -> str:
    return sql.Identifier(schema, table).as_string()


@dataclass(frozen=True, slots=True)
class Request:
    rule: str
    table: str  # "schema.table" as the config names it
    where: str | None  # deparsed
    key_columns: tuple[str, ...]
    estimate: int | None


def _rule_for(config: Config, name: str) -> Any:
    rules = {rule.name: rule for rule in config.rules}
    rule = rules.get(name)
    where = config.source_path or "the configuration"
    if rule is None:
        close = difflib.get_close_matches(name, list(rules), n=1)
        raise ListenerError(
            f"--rule {name}: no rule named {name!r} in {where}",
            hint=(f"did you mean {close[0]!r}? " if close else "")
            + ("rules: " + ", ".join(rules) if rules else "the configuration has no rules"),
        )
    if rule.table is None:
        source = "logical decoding messages" if rule.message is not None else "NOTIFY"
        raise ListenerError(
            f"rule {name} listens to {source}, not to a table: only table rules can be backfilled",
            hint="name a rule with `table:`",
        )
    return rule


def plan(config: Config, source: psycopg.Connection[Any], rule_name: str, where: str | None) -> Request:
    """Check a backfill request against the configuration and the catalog; refuse clearly."""
    rule = _rule_for(config, rule_name)
    shape = table_shape(source.execute(SHAPE, [rule.table]).fetchone())
    if shape is None:
        raise ListenerError(
            f"table {rule.table} of rule {rule_name} does not exist",
            hint=f"create {rule.table}, or correct `table:` of rule {rule_name}",
        )
    if not shape.key_columns:
        raise ListenerError(
            f"table {rule.table} has no primary key: a backfill reads a table in primary-key order, "
            "chunk by chunk, and drops rows that live changes superseded by their key",
            hint=f"ALTER TABLE {rule.table} ADD PRIMARY KEY (<column>);",
        )
    deparsed = None
    if where is not None:
        tables, collation = read_tables(source, [rule.table])
        table = tables.get(rule.table)
        assert table is not None  # the shape above found it
        deparsed = check_where(where, table, collation)
    query = f"SELECT 1 FROM {_table_ref(shape.schema, shape.name)}"
    if deparsed is not None:
        query += f" WHERE {deparsed}"
    try:
        with source.transaction():
            row = source.execute(f"EXPLAIN (FORMAT JSON) {query}").fetchone()
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        raise ListenerError(
            f"--where {where!r}: {message}",
            hint=f"give one boolean expression over the columns of {rule.table}: "
            + ", ".join(c[0] for c in shape.columns),
        ) from None
    estimate = int(row[0][0]["Plan"]["Plan Rows"]) if row is not None else None
    return Request(rule_name, rule.table, deparsed, shape.key_columns, estimate)


_INSERT = queries.get("insert_backfill")


def record(config: Config, state: psycopg.Connection[Any], request: Request) -> int:
    """Record the backfill and wake a running ingest (NOTIFY only wakes: it also polls)."""
    with state.transaction():
        row = state.execute(
            _INSERT,
            [config.slot, request.rule, request.table, request.where, list(request.key_columns),
             request.estimate, False],
        ).fetchone()  # fmt: skip
        assert row is not None
        channel = store_mod.control_channel(config.state_schema, "backfill")
        state.execute(queries.get("wake"), {"channel": channel})
    return int(row[0])


def submit(
    config: Config,
    source: psycopg.Connection[Any],
    state: psycopg.Connection[Any],
    rule_name: str,
    where: str | None,
) -> tuple[int, Request]:
    """Check the request and record it: its id, and the request as checked."""
    request = plan(config, source, rule_name, where)
    migrations.migrate(state, config.state_schema)  # a service not restarted since an upgrade lacks the table
    return record(config, state, request), request


def service_running(source: psycopg.Connection[Any], slot: str) -> bool:
    """Whether a `listener run` streams from the slot (and so starts a recorded backfill now)."""
    row = source.execute(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [slot]
    ).fetchone()
    return row is not None and row[0] is not None


@dataclass(frozen=True, slots=True)
class BackfillRow:
    id: int
    rule: str
    table_name: str
    where_sql: str | None
    status: str
    snapshot: bool
    last_key: list[str] | None
    chunks: int
    rows_read: int
    rows_dropped: int
    rows_total: int | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    rows_unexpanded: int = 0  # rows still in backfill_chunks, not yet events

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def list_backfills(state: psycopg.Connection[Any], slot: str, *, limit: int = 20) -> list[BackfillRow]:
    """The open backfills and the newest finished ones, oldest first."""
    rows = state.cursor(row_factory=dict_row).execute(queries.get("backfills"), [slot, limit]).fetchall()
    return [BackfillRow(**row) for row in rows]


def get(state: psycopg.Connection[Any], backfill_id: int) -> BackfillRow:
    row = state.cursor(row_factory=dict_row).execute(queries.get("backfill"), [backfill_id]).fetchone()
    if row is None:
        raise ListenerError(f"no backfill {backfill_id}", hint="`listener backfill status` lists them")
    return BackfillRow(**row)


def cancel(state: psycopg.Connection[Any], schema: str, backfill_id: int) -> BackfillRow:
    """Cancel a pending or running backfill: the ingest reads no further chunk (chunks already read still
    commit).  Its events stay; their runs are left alone (`listener cancel` cancels runs)."""
    row = get(state, backfill_id)
    if row.status not in OPEN:
        raise ListenerError(f"backfill {backfill_id} is {row.status}: nothing to cancel", hint="")
    state.execute(queries.get("cancel_backfill"), [backfill_id])
    state.execute(queries.get("wake"), {"channel": store_mod.control_channel(schema, "backfill")})
    return get(state, backfill_id)


def follow(
    state: psycopg.Connection[Any], backfill_id: int, progress: Callable[[BackfillRow], None] | None = None
) -> BackfillRow:
    """Read the backfill's row every BACKFILL_FOLLOW_POLL_S until the backfill ends, passing each to
    ``progress``; return the last one."""
    row = get(state, backfill_id)
    while True:
        if progress is not None:
            progress(row)
        if row.status not in OPEN:
            return row
        time.sleep(BACKFILL_FOLLOW_POLL_S)
        row = get(state, backfill_id)
