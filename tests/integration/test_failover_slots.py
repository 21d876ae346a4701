"""``slot_failover:`` against real servers: refused before PostgreSQL 17 with the setting's place, the slot
created or altered with it from 17 on, and what `listener check` says about the standbys.  The promotion
itself: tests/chaos/test_failover.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import psycopg.sql
import pytest

from listener import install as setup
from listener.errors import ConfigError, PrerequisiteError, SlotInUseError
from listener.pg import versions
from listener.pg.embedded import EmbeddedPostgres
from listener.pg.replication import ReplicationSession
from tests.support import (
    SLOT,
    cli,
    events,
    make_config,
    reachable_tmpdir,
    running_ingest,
    wait_caught_up,
    write_config,
)

Conn = psycopg.Connection[tuple[object, ...]]
RULE = {"name": "o", "table": "orders", "on": ["insert"], "workflow": "m:f"}


def by_name(results: list[setup.CheckResult]) -> dict[str, setup.CheckResult]:
    return {r.name: r for r in results}


@pytest.fixture
def failover_slots(sql: Conn, pg_version: int) -> None:
    """PostgreSQL 17+ (older servers refuse `slot_failover: true`: asserted by the first test) and the
    rules' table."""
    if pg_version < versions.FAILOVER_SLOTS:
        pytest.skip("no failover slots before 17: the refusal is asserted above")
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY)")


def failover_flag(sql: Conn) -> object:
    row = sql.execute("SELECT failover FROM pg_replication_slots WHERE slot_name = %s", [SLOT]).fetchone()
    return row[0] if row else None


def test_slot_failover_true_before_17_fails_once_naming_the_setting(
    dsn: str, sql: Conn, pg_version: int, tmp_path: Path
) -> None:
    """Before 17 init, run and check refuse it with the file:line and the fix; from 17 on the slot is a
    failover slot."""
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    path = tmp_path / "listener.yaml"
    config = write_config(path, [RULE], slot_failover=True)
    if pg_version >= versions.FAILOVER_SLOTS:
        assert setup.init(config, dsn, dsn)[-1] == f"created replication slot {SLOT}"
        assert failover_flag(sql) is True
        return
    major = pg_version // 10000
    with pytest.raises(ConfigError) as info:
        setup.init(config, dsn, dsn)
    assert info.value.file == str(path) and info.value.line == 3  # after slot: and publication:
    assert str(info.value).startswith(
        f"{path}:3: slot_failover: true needs PostgreSQL 17 or newer, and the server is PostgreSQL {major}"
    )
    assert info.value.hint is not None and "remove `slot_failover:`" in info.value.hint
    assert "upgrade the server to PostgreSQL 17+" in info.value.hint
    # nothing was made: the refusal comes before the state schema, the publication and the slot
    assert sql.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
    assert sql.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    (line,) = [r for r in setup.check(config, dsn, dsn) if r.name == "failover"]
    assert not line.ok and line.detail == info.value.message and line.fix == info.value.hint
    result = cli(dsn, config, "init")
    assert result.exit_code == 2, result.output  # a configuration error
    assert result.output.count("slot_failover: true needs PostgreSQL 17") == 1


def test_slot_failover_false_and_absent_before_17_change_nothing(
    dsn: str, sql: Conn, pg_version: int, tmp_path: Path
) -> None:
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    for setting in ({"slot_failover": False}, {}):
        config = write_config(tmp_path / "listener.yaml", [RULE], **setting)
        setup.init(config, dsn, dsn)
        assert not [r for r in setup.check(config, dsn, dsn) if r.name == "failover"]
        if pg_version >= versions.FAILOVER_SLOTS:
            assert failover_flag(sql) is (setting == {})  # absent: a new slot fails over where it can
        sql.execute("SELECT pg_drop_replication_slot(%s)", [SLOT])


def test_an_existing_slot_is_altered_to_the_setting(
    dsn: str, sql: Conn, tmp_path: Path, failover_slots: None
) -> None:
    path = tmp_path / "listener.yaml"
    setup.init(write_config(path, [RULE], slot_failover=False), dsn, dsn)
    assert failover_flag(sql) is False
    config = write_config(path, [RULE], slot_failover=True)
    failover = by_name(setup.check(config, dsn, dsn))["failover"]
    assert not failover.ok and failover.fix == "listener init"
    assert failover.detail == f"slot {SLOT!r} has failover false"
    assert setup.init(config, dsn, dsn) == [f"set failover true on replication slot {SLOT}"]
    assert failover_flag(sql) is True
    assert setup.init(config, dsn, dsn) == []  # already so
    assert by_name(setup.check(config, dsn, dsn))["failover"].detail == f"slot {SLOT!r} is a failover slot"
    absent = write_config(path, [RULE])
    assert setup.init(absent, dsn, dsn) == [] and failover_flag(sql) is True  # left as it is
    assert setup.init(write_config(path, [RULE], slot_failover=False), dsn, dsn) == [
        f"set failover false on replication slot {SLOT}"
    ]
    assert failover_flag(sql) is False


async def test_a_slot_in_use_is_not_altered_and_its_reader_is_named(
    dsn: str, sql: Conn, tmp_path: Path, failover_slots: None
) -> None:
    path = tmp_path / "listener.yaml"
    setup.init(write_config(path, [RULE], slot_failover=False), dsn, dsn)
    holder = await ReplicationSession.connect(dsn, slot=SLOT)
    await holder.start(publication=SLOT, start_lsn=0)
    try:
        config = write_config(path, [RULE], slot_failover=True)
        with pytest.raises(SlotInUseError) as info:
            setup.init(config, dsn, dsn)
        assert "has failover false and is in use by PID" in info.value.message
        assert info.value.hint is not None and "stop the process reading it" in info.value.hint
        failover = by_name(setup.check(config, dsn, dsn))["failover"]
        assert not failover.ok and "in use by PID" in failover.detail
        assert failover.fix is not None and failover.fix.startswith("stop the process reading it")
    finally:
        await holder.close()
    assert failover_flag(sql) is False


def test_check_on_a_primary_without_standbys_says_what_to_set_where(
    dsn: str, sql: Conn, tmp_path: Path, failover_slots: None
) -> None:
    config = write_config(tmp_path / "listener.yaml", [RULE], slot_failover=True)
    results = by_name(setup.check(config, dsn, dsn))
    assert results["failover"].ok and "will be created with failover" in results["failover"].detail
    synchronized = results["synchronized_standby_slots"]
    assert synchronized.ok and synchronized.warning  # a warning: a lone primary works, without failover
    assert "synchronized_standby_slots is empty" in synchronized.detail
    assert synchronized.fix is not None
    assert synchronized.fix.splitlines() == [
        "SELECT pg_create_physical_replication_slot('standby1');",
        "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'; SELECT pg_reload_conf();"
        "  -- the standbys that may take over",
    ]
    synchronous = results["synchronous replication"]  # the state schema is on this server too
    assert synchronous.ok and synchronous.warning
    assert "its commits do not wait for a standby that keeps the slot" in synchronous.detail
    commit = sql.execute("SELECT current_setting('synchronous_commit')").fetchone()[0]  # type: ignore[index]
    role = psycopg.sql.Identifier(str(sql.info.user)).as_string(sql)
    wanted = [
        "ALTER SYSTEM SET synchronous_standby_names = 'standby1'; SELECT pg_reload_conf();"
        "  -- commits on the primary wait for it"
    ]
    if commit == "off":  # the test server's own setting
        wanted.append(f"ALTER ROLE {role} SET synchronous_commit = on;  -- it is off")
    assert synchronous.fix is not None and synchronous.fix.splitlines() == wanted
    with reachable_tmpdir("listener-state-") as top, EmbeddedPostgres(top / "pgdata") as elsewhere:
        # the state schema on another server: the standby that keeps the slot need not be synchronous
        assert "synchronous replication" not in by_name(setup.check(config, dsn, elsewhere.dsn()))
    standby = results["standby"]
    assert standby.warning and "no standby streams from a slot" in standby.detail
    assert "--standby DSN" in standby.detail
    database = sql.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    assert standby.fix is not None and standby.fix.splitlines()[1:] == [
        "sync_replication_slots = on",
        "hot_standby_feedback = on",
        "primary_slot_name = 'standby1'",
        f"primary_conninfo = '... dbname={database}'  -- slot synchronization needs a dbname",
    ]
    # a named physical slot that does not exist: logical walsenders would wait for it
    sql.execute("SELECT pg_create_physical_replication_slot('listener_test_phys')")
    try:
        sql.execute("ALTER SYSTEM SET synchronized_standby_slots = 'listener_test_phys'")
        sql.execute("SELECT pg_reload_conf()")
        results = by_name(setup.check(config, dsn, dsn))
        idle = results["synchronized_standby_slots"]
        assert idle.ok and idle.warning and "no standby streams from listener_test_phys" in idle.detail
        assert "primary_slot_name = 'listener_test_phys'" in (results["standby"].fix or "")
    finally:
        sql.execute("ALTER SYSTEM RESET synchronized_standby_slots")
        sql.execute("SELECT pg_reload_conf()")
        sql.execute("SELECT pg_drop_replication_slot('listener_test_phys')")


def test_check_standby_refuses_a_server_that_is_not_one(
    dsn: str, sql: Conn, tmp_path: Path, failover_slots: None
) -> None:
    config = write_config(tmp_path / "listener.yaml", [RULE], slot_failover=True)
    results = by_name(setup.check(config, dsn, dsn, standby_dsn=dsn))
    assert not results["standby"].ok and "is not a standby (not in recovery)" in results["standby"].detail
    result = cli(dsn, config, "check", "--standby", "postgresql://nobody@127.0.0.1:1/none")
    assert result.exit_code == 1, result.output
    assert "✗ standby: cannot connect to the standby" in result.output


async def test_a_slot_confirmed_past_the_checkpoint_stops_ingest_naming_the_gap(dsn: str, sql: Conn) -> None:
    """What a failover without synchronous replication can leave (the standby's copy of the slot synced
    past the state it replayed), made by hand: ingest refuses to start there instead of skipping the
    transactions in between without a word (every version)."""
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    config = make_config([RULE])
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO orders VALUES (1)")
        await wait_caught_up(run, dsn)
    checkpoint = sql.execute("SELECT lsn::text FROM listener.checkpoints").fetchone()[0]  # type: ignore[index]
    sql.execute("SET synchronous_commit = on")  # flushed: the slot may be moved past it (the test server
    sql.execute("INSERT INTO orders VALUES (2)")  # commits asynchronously); its event is never written
    for _ in range(100):  # the walsender of the session that just ended may linger a moment
        try:
            sql.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", [SLOT])
            break
        except psycopg.errors.ObjectInUse:
            await asyncio.sleep(0.1)
    confirmed = sql.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [SLOT]
    ).fetchone()[0]  # type: ignore[index]
    with pytest.raises(PrerequisiteError) as info:
        async with running_ingest(dsn, config, init=False):
            pass
    assert info.value.message.startswith(
        f"replication slot {SLOT!r} is confirmed up to LSN {confirmed}, past listener's checkpoint at "
        f"{checkpoint}: the server will not send the transactions committed in between again"
    )
    assert info.value.hint is not None
    assert f"DELETE FROM \"listener\".checkpoints WHERE slot_name = '{SLOT}';" in info.value.hint
    assert len(events(dsn)) == 1
