"""listener as a role with only LOGIN REPLICATION, SELECT on the rule tables and a state schema it owns:
`check` prints the SQL a DBA runs (never a change of table ownership), `init` verifies the publications the
DBA made and never alters what it does not own, and ingest runs end to end."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from listener import install as setup
from listener.cli.views import JsonLines
from listener.errors import PrerequisiteError
from listener.ops.tail import tail
from tests.conftest import drop_database
from tests.support import _wait_for, events, make_config, running_ingest, wait_caught_up

# The state schema is not there beforehand: these roles must be granted, or create, what they use.
pytestmark = pytest.mark.bare_database

Conn = psycopg.Connection[tuple[object, ...]]
# Every table with an update rule: one publication on every version (see PLAIN_RULES' use).
PLAIN_RULES = [
    {"name": "order", "table": "shop.orders", "on": ["insert", "update"], "workflow": "w:f"},
    {"name": "user", "table": "shop.users", "on": ["insert", "update"], "workflow": "w:f"},
]
RULES = [
    {"name": "new_order", "table": "shop.orders", "on": "insert", "workflow": "w:f"},
    {"name": "paid", "table": "shop.orders", "on": "update", "workflow": "w:f", "when": "new.paid"},
    {"name": "new_user", "table": "shop.users", "on": "insert", "workflow": "w:f"},
]


@pytest.fixture
def role(dsn: str, sql: Conn) -> Iterator[str]:
    """A role with LOGIN REPLICATION (and a password) and nothing else, and a DSN for it; dropped
    afterwards with what it owns in the test database."""
    name = f"lp_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    sql.execute(
        pgsql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(
            pgsql.Identifier(name), pgsql.Literal(password)
        )
    )
    sql.execute("CREATE SCHEMA shop")
    sql.execute("CREATE TABLE shop.orders (id int PRIMARY KEY, paid bool NOT NULL DEFAULT false)")
    sql.execute("CREATE TABLE shop.users (id int PRIMARY KEY, email text)")
    try:
        yield make_conninfo(dsn, user=name, password=password)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name])
            conn.execute(pgsql.SQL("DROP OWNED BY {} CASCADE").format(pgsql.Identifier(name)))
            conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))


def failures(results: list[setup.CheckResult]) -> dict[str, setup.CheckResult]:
    return {r.name: r for r in results if not r.ok}


async def test_a_dba_runs_what_check_prints_then_listener_runs_without_owning_anything(
    dsn: str, sql: Conn, role: str
) -> None:
    config = make_config(RULES)
    name = str(conninfo_to_dict(role)["user"])
    failed = failures(setup.check(config, role, role))
    fixes = [r.fix for r in failed.values()]
    assert all(fix is not None and "OWNER TO" not in fix for fix in fixes), fixes
    assert failed["table shop.orders"].fix == (
        f'GRANT USAGE ON SCHEMA "shop" TO "{name}";\nGRANT SELECT ON "shop"."orders" TO "{name}";'
    )
    if sql.info.server_version >= 150000:  # one publication; the filtered one is not needed
        assert set(failed) == {"table shop.orders", "table shop.users", "publication", "state schema"}
        assert failed["publication"].fix == (
            'CREATE PUBLICATION "listener_test" FOR TABLE "shop"."orders", "shop"."users"'
            " WITH (publish = 'insert, update');"
        )
    else:  # PostgreSQL 14: the insert-only table goes to the second, insert-only publication
        assert set(failed) == {
            "table shop.orders", "table shop.users", "publication", "filtered publication", "state schema"
        }  # fmt: skip
        assert failed["publication"].fix == (
            'CREATE PUBLICATION "listener_test" FOR TABLE "shop"."orders"'
            " WITH (publish = 'insert, update');"
        )
        assert failed["filtered publication"].fix == (
            'CREATE PUBLICATION "listener_test_filtered" FOR TABLE "shop"."users"'
            " WITH (publish = 'insert');"
        )
    assert failed["state schema"].fix is not None
    assert failed["state schema"].fix.startswith(f'CREATE SCHEMA "listener" AUTHORIZATION "{name}";')
    with pytest.raises(PrerequisiteError) as refused:  # what init says before the DBA ran anything
        setup.init(config, role, role)
    assert "CREATE SCHEMA" in str(refused.value)

    for fix in dict.fromkeys(fixes):  # the DBA, as a superuser
        assert fix is not None
        sql.execute(fix.encode())
    left = failures(setup.check(config, role, role))
    assert set(left) == {"state schema"} and left["state schema"].fix == "listener init"

    owner_before = sql.execute("SELECT pubowner::regrole::text FROM pg_publication").fetchall()
    async with running_ingest(role, config) as run:  # runs `init` as the role first
        sql.execute("INSERT INTO shop.orders VALUES (1, false), (2, false)")
        sql.execute("UPDATE shop.orders SET paid = true WHERE id = 2")
        sql.execute("INSERT INTO shop.users VALUES (7, 'a@example.com')")
        await wait_caught_up(run, dsn)
    assert [(e["rule"], e["payload"]["new"]["id"]) for e in events(dsn)] == [
        ("new_order", 1),
        ("new_order", 2),
        ("paid", 2),
        ("new_user", 7),
    ]
    assert sql.execute("SELECT pubowner::regrole::text FROM pg_publication").fetchall() == owner_before


def test_a_publication_that_does_not_match_and_is_not_ours_is_named_with_the_sql_to_fix_it(
    dsn: str, sql: Conn, role: str
) -> None:
    config = make_config(PLAIN_RULES)
    name = str(conninfo_to_dict(role)["user"])
    sql.execute(pgsql.SQL("CREATE SCHEMA listener AUTHORIZATION {}").format(pgsql.Identifier(name)))
    sql.execute(pgsql.SQL("GRANT USAGE ON SCHEMA shop TO {}").format(pgsql.Identifier(name)))
    sql.execute(pgsql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA shop TO {}").format(pgsql.Identifier(name)))
    # the DBA's publication misses a table and publishes deletes no rule asks for
    sql.execute("CREATE PUBLICATION listener_test FOR TABLE shop.orders")
    with pytest.raises(PrerequisiteError) as refused:
        setup.init(config, role, role)
    message = str(refused.value)
    assert "publication 'listener_test'" in message and "shop.users" in message
    want = (
        'ALTER PUBLICATION "listener_test" SET TABLE "shop"."orders", "shop"."users";\n'
        "ALTER PUBLICATION \"listener_test\" SET (publish = 'insert, update');"
    )
    assert want in message
    result = failures(setup.check(config, role, role))["publication"]
    assert result.fix == want
    assert sql.execute("SELECT count(*) FROM pg_publication_tables").fetchone() == (1,)  # left alone
    sql.execute(want.encode())
    assert failures(setup.check(config, role, role)) == {}
    assert setup.init(config, role, role) == ["created replication slot listener_test"]


def test_init_in_an_existing_schema_needs_no_create_on_the_database(dsn: str, sql: Conn, role: str) -> None:
    name = str(conninfo_to_dict(role)["user"])
    sql.execute(pgsql.SQL("CREATE SCHEMA listener AUTHORIZATION {}").format(pgsql.Identifier(name)))
    sql.execute("CREATE PUBLICATION listener_test WITH (publish = 'insert')")  # no rule table yet
    config = make_config([])
    done = setup.init(config, role, role)
    assert "applied migration 0001_initial" in done
    assert setup.init(config, role, role) == []  # twice: nothing to do, and nothing refused


def test_drop_leaves_a_publication_it_does_not_own(dsn: str, sql: Conn, role: str) -> None:
    sql.execute("CREATE PUBLICATION listener_test FOR TABLE shop.orders")
    done = setup.drop(make_config(RULES), role)
    assert any("DROP PUBLICATION" in line and "listener_test" in line for line in done)
    assert sql.execute("SELECT count(*) FROM pg_publication").fetchone() == (1,)


async def test_a_reload_the_dbas_publication_does_not_serve_is_refused_before_its_marker(
    dsn: str, sql: Conn, role: str
) -> None:
    name = str(conninfo_to_dict(role)["user"])
    who = pgsql.Identifier(name)
    sql.execute(pgsql.SQL("CREATE SCHEMA listener AUTHORIZATION {}").format(who))
    sql.execute(pgsql.SQL("GRANT USAGE ON SCHEMA shop TO {}").format(who))
    sql.execute(pgsql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA shop TO {}").format(who))
    sql.execute("CREATE PUBLICATION listener_test FOR TABLE shop.orders WITH (publish = 'insert, update')")
    old = make_config(PLAIN_RULES[:1])
    new = make_config(PLAIN_RULES)
    async with running_ingest(role, old) as run:
        with pytest.raises(PrerequisiteError) as refused:
            await run.reload(new)
        fix = 'ALTER PUBLICATION "listener_test" SET TABLE "shop"."orders", "shop"."users";'
        assert fix in str(refused.value)
        sql.execute("INSERT INTO shop.users VALUES (1, 'x')")
        sql.execute("INSERT INTO shop.orders VALUES (1)")
        await wait_caught_up(run, dsn)
        assert run.ingest.reloads == []  # the old rules go on
        sql.execute(fix)  # the DBA
        lsn = await run.reload(new)
        sql.execute("INSERT INTO shop.users VALUES (2, 'y')")
        await wait_caught_up(run, dsn)
        assert run.ingest.reloads == [lsn]
    assert [(e["rule"], e["payload"]["new"]["id"]) for e in events(dsn)] == [("order", 1), ("user", 2)]


async def test_tail_streams_the_dbas_publication_when_it_may_not_make_its_own(
    dsn: str, sql: Conn, role: str
) -> None:
    sql.execute("CREATE PUBLICATION listener_test FOR TABLE shop.orders WITH (publish = 'insert')")
    out, err, stop = io.StringIO(), io.StringIO(), asyncio.Event()
    task = asyncio.create_task(
        tail(make_config(RULES[:1]), role, output=JsonLines(out, err), max_changes=1, stop=stop)
    )
    await _wait_for(lambda: "streaming changes" in err.getvalue() or task.done(), "tail to stream")
    sql.execute("INSERT INTO shop.orders VALUES (5)")
    assert await asyncio.wait_for(task, 60) == 1
    assert json.loads(out.getvalue())["new"] == {"id": 5, "paid": False}
    assert (
        "no publication of its own (role lp_" in err.getvalue()
        and "streaming listener_test" in err.getvalue()
    )
    assert sql.execute("SELECT pubname FROM pg_publication").fetchall() == [("listener_test",)]


def test_the_cli_prints_each_statement_on_its_own_line_and_init_then_works(
    tmp_path: Path, dsn: str, sql: Conn, role: str
) -> None:
    """As a new user would: `listener check` as the role, the DBA pastes the fix lines, `listener init`."""
    path = tmp_path / "listener.yaml"
    path.write_text(
        yaml.safe_dump({"slot": "listener_test", "publication": "listener_test", "rules": PLAIN_RULES})
    )
    (tmp_path / "w.py").write_text("async def f(ctx):\n    pass\n")  # the rules' workflow, beside the file
    cli = [sys.executable, "-m", "listener", "--dsn", role, "-c", str(path)]
    checked = subprocess.run([*cli, "check"], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 1, checked.stderr
    fixes, statement = [], False
    for line in checked.stdout.splitlines():  # each fix: "    fix: SQL" then "         SQL" for the next ones
        if line.startswith("    fix: "):
            statement = not line.startswith("    fix: listener ")
            fixes += [line.removeprefix("    fix: ")] if statement else []
        elif statement and line.startswith("         "):
            fixes.append(line.strip())
        else:
            statement = False
    assert any(f.startswith('GRANT SELECT ON "shop"."users"') for f in fixes), checked.stdout
    assert any(f.startswith("CREATE PUBLICATION") for f in fixes) and not any("OWNER TO" in f for f in fixes)
    for fix in fixes:  # the DBA, in psql
        sql.execute(fix.encode())
    initialised = subprocess.run([*cli, "init"], capture_output=True, text=True, timeout=120)
    assert initialised.returncode == 0, initialised.stderr
    assert "created replication slot listener_test" in initialised.stdout
    again = subprocess.run([*cli, "check"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "✗" not in again.stdout, again.stdout


def test_a_state_database_of_its_own_instead_of_a_schema(dsn: str, sql: Conn, role: str) -> None:
    name = str(conninfo_to_dict(role)["user"])
    state_db = f"{name}_state"
    sql.execute(
        pgsql.SQL("CREATE DATABASE {} OWNER {}").format(pgsql.Identifier(state_db), pgsql.Identifier(name))
    )
    try:
        state = make_conninfo(role, dbname=state_db)
        sql.execute("CREATE PUBLICATION listener_test WITH (publish = 'insert')")
        config = make_config([])
        assert by_name(setup.check(config, role, state))["state schema"].fix == "listener init"
        done = setup.init(config, role, state)
        assert "applied migration 0001_initial" in done
        assert failures(setup.check(config, role, state)) == {}
        # nothing of listener's in the watched database
        assert sql.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'listener'").fetchone() == (0,)
    finally:
        drop_database(dsn, state_db)


def by_name(results: list[setup.CheckResult]) -> dict[str, setup.CheckResult]:
    return {r.name: r for r in results}


async def test_a_role_that_may_not_write_heartbeats_streams_on_without_them(
    dsn: str, sql: Conn, role: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(RULES, ingest={"heartbeat_s": 0.2})
    for fix in dict.fromkeys(r.fix for r in failures(setup.check(config, role, role)).values()):
        assert fix is not None
        sql.execute(fix.encode())  # the DBA, as in the test above
    for (signature,) in sql.execute(
        "SELECT oid::regprocedure::text FROM pg_proc WHERE proname = 'pg_logical_emit_message'"
    ).fetchall():
        sql.execute(f"REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC")  # this database's catalog only
    caplog.set_level(logging.WARNING, logger="listener")
    async with running_ingest(role, config) as run:
        deadline = time.monotonic() + 30
        while not any("heartbeats off: role" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline and not run.task.done(), caplog.text
            await asyncio.sleep(0.05)
        sql.execute("INSERT INTO shop.orders VALUES (1, false)")
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.heartbeats == 0 and run.ingest.heartbeat_s == 0
    offs = [r.getMessage() for r in caplog.records if "heartbeats off" in r.getMessage()]
    assert len(offs) == 1 and "GRANT EXECUTE ON FUNCTION pg_logical_emit_message" in offs[0], offs
    assert [(e["rule"], e["payload"]["new"]["id"]) for e in events(dsn)] == [("new_order", 1)]
