"""The default flow-control key is the row's primary key (or a unique, non-null, plain index), the same in
live changes whatever the replica identity sends and in backfill reads; a table with no such key refuses
`ordered:` / `key_concurrency:` without `key:` at load, with the fix (issue 9, point 4)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest

from listener.errors import ConfigError
from listener.rules.catalog import read_tables, rule_tables
from listener.rules.compile import RuleSet
from tests.integration.test_backfill import start, wait_done, write_config
from tests.runtime_support import EFFECTS_DDL, max_overlap, running_worker, wait_until
from tests.support import make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[Any, ...]]
TRACKED = "tests.sample_workflows:tracked"
ORDERED = {
    "name": "r",
    "table": "acct",
    "on": ["insert", "update", "delete"],
    "workflow": TRACKED,
    "ordered": True,
}


def run_keys(sql: Conn) -> list[tuple[str, str | None]]:
    return [(r[0], r[1]) for r in sql.execute("SELECT id, key FROM listener.runs ORDER BY seq")]


async def test_replica_identity_full_updates_of_one_row_share_its_key_and_run_in_commit_order(
    dsn: str, sql: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With REPLICA IDENTITY FULL every column is an identity column: the key used to be all of them, so
    each change of the row had a key of its own and the runs ran in any order."""
    sql.execute("CREATE TABLE acct (id int PRIMARY KEY, key text, n int)")
    sql.execute("ALTER TABLE acct REPLICA IDENTITY FULL")
    sql.execute(EFFECTS_DDL)
    config = make_config([ORDERED])
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO acct VALUES (1, 'a', 0)")
        for _ in range(15):  # quick successive updates, each its own transaction
            sql.execute("UPDATE acct SET n = n + 1 WHERE id = 1")
        sql.execute("DELETE FROM acct WHERE id = 1")
        await wait_caught_up(run, dsn)
    keys = run_keys(sql)
    assert len(keys) == 17
    assert {key for _, key in keys} == {"r:1"}  # the primary key, for the insert, updates and delete
    monkeypatch.setenv("LISTENER_TEST_SPAN_S", "0.01")
    async with running_worker(dsn, concurrency=8):
        await wait_until(
            lambda: (
                sql.execute("SELECT count(*) FROM listener.runs WHERE status = 'done'").fetchone() == (17,)
            ),
            "every run to finish",
        )
    started = [r[0] for r in sql.execute("SELECT run_id FROM public.spans ORDER BY started")]
    assert started == [run_id for run_id, _ in keys]  # commit order
    assert max_overlap(sql, "a") == 1


async def test_a_backfill_read_and_a_live_change_of_a_row_share_its_key(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    sql.execute("CREATE TABLE acct (id int PRIMARY KEY, key text, n int)")
    sql.execute("ALTER TABLE acct REPLICA IDENTITY FULL")
    sql.execute("INSERT INTO acct SELECT g, 'k', g FROM generate_series(1, 600) g")
    config = write_config(tmp_path / "l.yaml", [ORDERED])
    async with running_ingest(dsn, config) as run:
        backfill_id = await asyncio.to_thread(start, dsn, config, "--rule", "r")
        await wait_done(sql, backfill_id)
        sql.execute("UPDATE acct SET n = -n WHERE id = 547")
        await wait_caught_up(run, dsn)
    read = sql.execute("SELECT key FROM listener.runs WHERE id = %s", [f"r/backfill/{backfill_id}/547"])
    live = sql.execute(
        "SELECT r.key FROM listener.runs r JOIN listener.events e ON e.idempotency_key = r.event_key"
        " WHERE e.op = 'update'"
    )
    assert read.fetchall() == live.fetchall() == [("r:547",)]


@pytest.mark.parametrize(
    ("ddl", "key"),
    [
        ("CREATE TABLE acct (id int PRIMARY KEY, code text NOT NULL UNIQUE, n int)", "r:1"),
        # no primary key: a unique index on NOT NULL columns will do (the narrowest, then by name)
        ("CREATE TABLE acct (a int NOT NULL, b int NOT NULL, n int, UNIQUE (a, b)); "
         "CREATE UNIQUE INDEX acct_z ON acct (b)", "r:1"),
    ],
)  # fmt: skip
async def test_the_default_key_is_the_primary_key_or_a_unique_not_null_index(
    dsn: str, sql: Conn, ddl: str, key: str
) -> None:
    sql.execute(ddl)
    sql.execute("ALTER TABLE acct REPLICA IDENTITY FULL")
    config = make_config([ORDERED])
    async with running_ingest(dsn, config) as run:
        if "code" in ddl:
            sql.execute("INSERT INTO acct VALUES (1, 'x', 0)")
            sql.execute("UPDATE acct SET code = 'y', n = 1")
        else:
            sql.execute("INSERT INTO acct VALUES (7, 1, 0)")
            sql.execute("UPDATE acct SET n = 1")
        sql.execute("DELETE FROM acct")
        await wait_caught_up(run, dsn)
    assert [k for _, k in run_keys(sql)] == [key] * 3


@pytest.mark.parametrize(
    ("ddl", "setting"),
    [
        ("CREATE TABLE acct (id int, n int); ALTER TABLE acct REPLICA IDENTITY FULL", {"ordered": True}),
        ("CREATE TABLE acct (id int, n int)", {"key_concurrency": 2}),  # no key at all: inserts only
        # unique indexes that do not identify a row: nullable, partial, over an expression
        ("CREATE TABLE acct (id int UNIQUE, n int); ALTER TABLE acct REPLICA IDENTITY FULL",
         {"ordered": True}),
        ("CREATE TABLE acct (id int NOT NULL, n int); CREATE UNIQUE INDEX ON acct (id) WHERE n > 0;"
         " ALTER TABLE acct REPLICA IDENTITY FULL", {"ordered": True}),
        ("CREATE TABLE acct (id int NOT NULL, n int); CREATE UNIQUE INDEX ON acct ((id + 1));"
         " ALTER TABLE acct REPLICA IDENTITY FULL", {"ordered": True}),
    ],
)  # fmt: skip
def test_a_table_without_a_key_refuses_ordered_without_key_naming_the_fix(
    sql: Conn, tmp_path: Path, ddl: str, setting: dict[str, Any]
) -> None:
    sql.execute(ddl)
    rule = {"name": "r", "table": "acct", "on": ["insert", "update"], "workflow": TRACKED, **setting}
    config = write_config(tmp_path / "l.yaml", [rule])
    tables, collation = read_tables(sql, rule_tables(config.rules))
    with pytest.raises(ConfigError) as caught:
        RuleSet.from_config(config, tables, collation)
    error = caught.value
    assert error.rule == "r" and error.line is not None
    assert "public.acct has no primary key" in error.message
    assert error.hint is not None
    assert "ALTER TABLE public.acct ADD PRIMARY KEY" in error.hint and "key:" in error.hint
    # with a key template, the same rule loads
    keyed = write_config(tmp_path / "k.yaml", [{**rule, "key": "{new.id}"}])
    assert RuleSet.from_config(keyed, tables, collation).rules[0].gated
