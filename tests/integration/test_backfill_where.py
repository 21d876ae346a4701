"""`listener backfill --where` allows only what `when:` allows -- immutable expressions over the table's
columns -- when the request is made and again when the service reads it from `backfills`: a function with
side effects never runs (issue 9, point 10)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from listener import install as setup
from tests.integration.test_backfill import ROWS, backfill_row, read_events, wait_done, write_config
from tests.support import cli, running_ingest

Conn = psycopg.Connection[tuple[object, ...]]
# physical slots belong to the whole server, which the tests share: each test has its own victim
VICTIM = f"victim_{uuid.uuid4().hex[:8]}"
DROP = f"pg_drop_replication_slot('{VICTIM}') IS NULL"


def victim_exists(sql: Conn) -> bool:
    row = sql.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", [VICTIM]).fetchone()
    return row == (1,)


@pytest.fixture
def items(sql: Conn) -> Iterator[Conn]:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY, v text, at timestamptz)")
    sql.execute("INSERT INTO items SELECT g, 'v' || g, '2025-01-01' FROM generate_series(1, 50) g")
    sql.execute("SELECT pg_create_physical_replication_slot(%s)", [VICTIM])
    try:
        yield sql
    finally:
        if victim_exists(sql):
            sql.execute("SELECT pg_drop_replication_slot(%s)", [VICTIM])


@pytest.mark.parametrize(
    ("where", "says"),
    [
        (DROP, "pg_drop_replication_slot"),
        (f"id > 0 AND {DROP}", "pg_drop_replication_slot"),
        ("pg_terminate_backend(pg_backend_pid())", "pg_terminate_backend"),
        ("at < now()", "not immutable"),  # the backfill's now() is not the change's commit time
        ("old.id > 3", "old.id"),  # a backfill read has no old row
    ],
)
async def test_a_where_beyond_when_is_refused_and_nothing_runs(
    dsn: str, items: Conn, tmp_path: Path, where: str, says: str
) -> None:
    config = write_config(tmp_path / "l.yaml", [ROWS])
    async with running_ingest(dsn, config):
        result = await asyncio.to_thread(cli, dsn, config, "backfill", "--rule", "rows", "--where", where)
        assert result.exit_code == 2, result.output
        assert "--where" in result.output and says in result.output
        assert "`when:`" in result.output  # the hint: what --where allows
    assert items.execute("SELECT count(*) FROM listener.backfills").fetchone() == (0,)
    assert victim_exists(items)


async def test_a_stored_request_is_checked_again_and_fails_without_running(
    dsn: str, items: Conn, tmp_path: Path
) -> None:
    """A row written into `backfills` by hand (or by an older listener) is not executed verbatim."""
    config = write_config(tmp_path / "l.yaml", [ROWS])
    setup.init(config, dsn, dsn)
    row = items.execute(
        "INSERT INTO listener.backfills (slot_name, rule, table_name, where_sql, key_columns)"
        " VALUES (%s, 'rows', 'public.items', %s, '{id}') RETURNING id",
        [config.slot, f"id > 0 AND {DROP}"],
    ).fetchone()
    assert row is not None
    async with running_ingest(dsn, config, init=False):
        done = await wait_done(items, int(str(row[0])))
    assert done["status"] == "failed"
    assert "pg_drop_replication_slot" in done["error"] and "where" in done["error"]
    assert victim_exists(items)
    assert read_events(dsn) == []


async def test_a_where_as_when_writes_it_runs(dsn: str, items: Conn, tmp_path: Path) -> None:
    """Bare columns are the row's (new.x works too); what runs on the server is the checked expression."""
    config = write_config(tmp_path / "l.yaml", [ROWS])
    where = "id % 7 = 0 AND new.v <> 'v14' AND at >= '2024-12-31'"
    async with running_ingest(dsn, config):
        result = await asyncio.to_thread(
            cli, dsn, config, "backfill", "--detach", "--rule", "rows", "--where", where
        )
        assert result.exit_code == 0, result.output
        backfill_id = int(result.stdout.strip().splitlines()[-1])
        done = await wait_done(items, backfill_id)
    assert done["status"] == "done", done["error"]
    assert sorted(e["payload"]["new"]["id"] for e in read_events(dsn)) == [7, 21, 28, 35, 42, 49]
    assert "new." not in backfill_row(items, backfill_id)["where_sql"]
