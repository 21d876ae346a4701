"""Every session listener opens pins the settings that change what SQL text means or how values print,
whatever the database, role or PGOPTIONS set: standard_conforming_strings, TimeZone, DateStyle,
IntervalStyle, extra_float_digits, bytea_output."""

from __future__ import annotations

import asyncpg
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from listener import install as setup
from listener.pg import conninfo
from listener.pg.conninfo import asyncpg_params
from listener.pg.replication import ReplicationSession
from listener.queue.store import StateStore
from tests.support import events, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]


async def test_a_backslash_in_a_row_filter_means_what_the_evaluator_means(dsn: str, sql: Conn) -> None:
    """With standard_conforming_strings off, 'a\\b' sent as a row filter would mean a, backspace: the
    server would drop the row the rule matches, and check would compare the filter with itself."""
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
    sql.execute(f'ALTER DATABASE "{sql.info.dbname}" SET standard_conforming_strings = off')
    config = make_config(
        [{"name": "odd", "table": "orders", "on": "insert", "workflow": "w:f", "when": "new.status = 'a\\b'"}]
    )
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO orders VALUES (1, %s), (2, %s)", ["a\\b", "a\b"])
        await wait_caught_up(run, dsn)
    assert [e["payload"]["new"]["id"] for e in events(dsn)] == [1]
    assert all(r.ok for r in setup.check(config, dsn, dsn))


ODD = {
    "standard_conforming_strings": ("off", "on"),
    "TimeZone": ("Asia/Kathmandu", "UTC"),
    "DateStyle": ("German, DMY", "ISO, YMD"),
    "IntervalStyle": ("sql_standard", "postgres"),
    "extra_float_digits": ("-3", "3"),
    "bytea_output": ("escape", "hex"),
}
SHOW = "SELECT " + ", ".join(f"current_setting('{name}')" for name in ODD)
PINNED = tuple(pinned for _, pinned in ODD.values())


async def test_every_session_pins_the_settings_whatever_database_role_and_pgoptions_say(
    dsn: str, sql: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, (odd, _) in ODD.items():
        sql.execute(f'ALTER DATABASE "{sql.info.dbname}" SET "{name}" = {quote(odd)}')
    monkeypatch.setenv("PGOPTIONS", "-c extra_float_digits=1 -c bytea_output=escape")
    options_dsn = make_conninfo(dsn, options="-c DateStyle=SQL,DMY -c work_mem=7MB")
    config = make_config([])
    setup.init(config, dsn, dsn)
    for target in (dsn, options_dsn):
        with conninfo.connection(target) as conn:
            assert conn.execute(SHOW).fetchone() == PINNED
            # the user's own options still apply where listener pins nothing
            want_mem = "7MB" if target == options_dsn else "4MB"
            assert conn.execute("SHOW work_mem").fetchone() == (want_mem,)
        session = await ReplicationSession.connect(target, slot="unused")
        try:
            cur = await session.conn.execute(SHOW)
            assert await cur.fetchone() == PINNED
        finally:
            await session.conn.close()
        store = await StateStore.connect(target, schema=config.state_schema, slot="unused")
        try:
            for pool in (store.pool, store.writer):  # the writer's pool keeps its session between uses
                assert tuple(await pool.fetchrow(SHOW)) == PINNED  # type: ignore[arg-type]
        finally:
            await store.close()
        conn2 = await asyncpg.connect(**asyncpg_params(target))
        try:
            assert await conn2.fetchval("SHOW work_mem") == want_mem
        finally:
            await conn2.close()


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
