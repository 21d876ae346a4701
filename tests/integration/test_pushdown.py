"""Pushdown on a real server: row filters and column lists in the publications, what `check` says when a
rule's filter cannot be pushed down, and what `init`/`drop` do with the second publication.

PostgreSQL 14 has neither row filters nor column lists: there each test asserts what happens instead
(every row reaches listener, which filters it itself; the same events; insert-only tables still in the
second publication)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import yaml

from listener import install as setup
from listener.pg import pgoutput as po
from tests.support import events, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]
WF = "listener_examples.tickets:triage"
ORDERS = "CREATE TABLE orders (id int PRIMARY KEY, amount int, status text, note text, at timestamptz)"
NO_PUSHDOWN_14 = "no (PostgreSQL 14 has no publication row filters or column lists (15+))"


def pushes_down(sql: Conn) -> bool:
    """Whether the server has publication row filters and column lists (15+)."""
    return sql.info.server_version >= 150000


def rule(name: str, on: str | list[str] = "insert", table: str = "orders", **more: Any) -> dict[str, Any]:
    return {"name": name, "table": table, "on": on, "workflow": WF, **more}


def published(sql: Conn) -> list[tuple[Any, ...]]:
    """(publication, table, column list or None, row filter or None), filters printed in UTC."""
    if not pushes_down(sql):
        return sql.execute(
            """
            SELECT p.pubname, c.relname, NULL, NULL
            FROM pg_publication p
            LEFT JOIN pg_publication_rel pr ON pr.prpubid = p.oid
            LEFT JOIN pg_class c ON c.oid = pr.prrelid
            ORDER BY 1, 2
            """
        ).fetchall()
    with sql.transaction():
        sql.execute("SET LOCAL TimeZone = 'UTC'")
        return sql.execute(
            """
            SELECT p.pubname, c.relname,
                   CASE WHEN pr.prattrs IS NOT NULL THEN
                       ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = pr.prrelid
                             AND a.attnum = ANY (pr.prattrs::int2[]) ORDER BY a.attnum) END,
                   pg_get_expr(pr.prqual, pr.prrelid)
            FROM pg_publication p
            LEFT JOIN pg_publication_rel pr ON pr.prpubid = p.oid
            LEFT JOIN pg_class c ON c.oid = pr.prrelid
            ORDER BY 1, 2
            """
        ).fetchall()


def results(config: Any, dsn: str) -> dict[str, setup.CheckResult]:
    return {r.name: r for r in setup.check(config, dsn, dsn)}


async def test_rows_the_filter_drops_never_reach_listener(dsn: str, sql: Conn) -> None:
    sql.execute(ORDERS)
    config = make_config([rule("big", when="new.amount > 100")])
    async with running_ingest(dsn, config) as run:
        # 1000 rows, every 100th one big
        sql.execute(
            "INSERT INTO orders (id, amount) SELECT i, CASE WHEN i % 100 = 0 THEN 1000 + i ELSE i % 100 END"
            " FROM generate_series(1, 1000) i"
        )
        await wait_caught_up(run, dsn)
        # the server sent only these (14: every row, listener filters)
        assert run.ingest.stats.changes == (10 if pushes_down(sql) else 1000)
    got = events(dsn)
    assert [e["payload"]["new"]["id"] for e in got] == list(range(100, 1001, 100))
    assert {e["rule"] for e in got} == {"big"}
    assert published(sql) == [
        ("listener_test", None, None, None),  # the main publication: no table left
        ("listener_test_filtered", "orders", None, "(amount > 100)" if pushes_down(sql) else None),
    ]


async def test_the_server_filters_by_the_or_and_each_rule_still_gets_only_its_rows(
    dsn: str, sql: Conn
) -> None:
    sql.execute(ORDERS)
    config = make_config([rule("big", when="new.amount > 100"), rule("tiny", when="new.amount < 5")])
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO orders (id, amount) SELECT i, i FROM generate_series(1, 200) i")
        await wait_caught_up(run, dsn)
        assert run.ingest.stats.changes == (104 if pushes_down(sql) else 200)  # 1..4 and 101..200
    got = events(dsn)
    big = [e["payload"]["new"]["amount"] for e in got if e["rule"] == "big"]
    tiny = [e["payload"]["new"]["amount"] for e in got if e["rule"] == "tiny"]
    assert big == list(range(101, 201)) and tiny == [1, 2, 3, 4]
    pushed = "((amount > 100) OR (amount < 5))" if pushes_down(sql) else None
    assert published(sql)[1] == ("listener_test_filtered", "orders", None, pushed)


async def test_a_column_list_keeps_unused_columns_on_the_server(dsn: str, sql: Conn) -> None:
    sql.execute(ORDERS)
    rules = [
        rule("paid", ["insert", "update"], payload={"order": "id", "state": "status"}),
        rule("big", "insert", payload=["amount"], when="new.amount > 100"),  # shares the table: no filter
    ]
    config = make_config(rules)
    done = setup.init(config, dsn, dsn)
    created = "created publication listener_test (insert, update) for 1 table(s)"
    if pushes_down(sql):
        listed = ["id", "amount", "status"]
        assert f"{created}: public.orders (id, amount, status)" in done
        assert published(sql)[0] == ("listener_test", "orders", listed, None)
    else:  # 14: every column
        listed = ["id", "amount", "status", "note", "at"]
        assert created in done
        assert published(sql)[0] == ("listener_test", "orders", None, None)
    # What the server sends: a relation of only the listed columns.
    sql.execute("SELECT pg_create_logical_replication_slot('peek', 'pgoutput', true)")
    sql.execute("SET synchronous_commit = on")  # SQL decoding reads only flushed WAL
    sql.execute("INSERT INTO orders VALUES (1, 500, 'new', repeat('x', 10000), now())")
    rows = sql.execute(
        "SELECT data FROM pg_logical_slot_get_binary_changes('peek', NULL, NULL, 'proto_version', '1',"
        " 'publication_names', 'listener_test,listener_test_filtered')"
    ).fetchall()
    decoder = po.Decoder(1)
    messages = [decoder.decode(data) for (data,) in rows if isinstance(data, bytes)]
    (relation,) = [m for m in messages if isinstance(m, po.Relation)]
    assert [c.name for c in relation.columns] == listed
    (insert,) = [m for m in messages if isinstance(m, po.Insert)]
    assert len(insert.new) == len(listed)
    # ingest: the events carry what payload: picks, the evaluator still applies `when:`
    async with running_ingest(dsn, config) as run:
        sql.execute("INSERT INTO orders VALUES (2, 50, 'new', 'n', now()), (3, 150, 'new', 'n', now())")
        await wait_caught_up(run, dsn)
    got = [(e["rule"], e["payload"]["data"]) for e in events(dsn)]
    assert got == [
        ("paid", {"order": 1, "state": "new"}),
        ("big", {"amount": 500}),
        ("paid", {"order": 2, "state": "new"}),
        ("paid", {"order": 3, "state": "new"}),
        ("big", {"amount": 150}),
    ]


def test_check_names_why_each_rule_is_not_pushed_down(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    for name in ("upd", "mixed", "clock", "past", "casts", "dom"):
        sql.execute(
            f"CREATE TABLE {name} (id int PRIMARY KEY, amount int, note text, at timestamptz, p posint)"
        )
    config = make_config(
        [
            rule("on_update", "update", "upd", when="new.amount > 1"),
            rule("filtered", "insert", "mixed", when="new.amount > 1"),
            rule("everything", "insert", "mixed"),
            rule("recent", "insert", "clock", when="new.at > now() - interval '1 day'"),
            rule("was", "insert", "past", when="old.amount IS NULL AND new.amount > 1"),
            rule("day", "insert", "casts", when="new.at::date = '2024-01-01'"),
            rule("positive", "insert", "dom", when="new.p > 3"),
        ]
    )
    found = results(config, dsn)
    if not pushes_down(sql):
        for name in ("on_update", "filtered", "everything", "recent", "was", "day", "positive"):
            assert found[f"rule {name}"].ok
            assert found[f"rule {name}"].detail.endswith(f"; pushed down: {NO_PUSHDOWN_14}")
        setup.init(config, dsn, dsn)
        assert all(r.ok for r in results(config, dsn).values())
        return
    expect = {
        "on_update": "no (update rules: PostgreSQL would turn a filtered UPDATE into an INSERT;",
        "filtered": "no (rule everything on the same table has no `when:` and takes every insert;",
        "everything": "no (no `when:`: every insert matches;",
        "recent": "no (`when:` cannot be a row filter: now() is not immutable",
        "was": "no (`when:` cannot be a row filter: it reads old.amount",
        "day": "no (`when:` cannot be a row filter: CAST(new.at AS date) depends on the session time zone",
        # the compiler lets this one through; the server refuses it (a domain is a user-defined type)
        "positive": "no (PostgreSQL refused the row filter: invalid publication WHERE expression "
        "(User-defined types are not allowed)",
    }
    for name, reason in expect.items():
        result = found[f"rule {name}"]
        assert result.ok, result
        assert f"; pushed down: {reason}" in result.detail, result.detail
    setup.init(config, dsn, dsn)  # nothing pushed down: every table in the main publication
    assert {(p, t) for p, t, _, f in published(sql) if f is not None} == set()
    assert all(r.ok for r in results(config, dsn).values())


def test_init_is_idempotent_and_follows_rule_changes(dsn: str, sql: Conn) -> None:
    sql.execute(ORDERS)
    config = make_config([rule("big", when="new.amount > 100", payload=["amount"])])
    setup.init(config, dsn, dsn)
    first = published(sql)
    assert first == [
        ("listener_test", None, None, None),
        ("listener_test_filtered", "orders", ["id", "amount"], "(amount > 100)")
        if pushes_down(sql)
        else ("listener_test_filtered", "orders", None, None),  # 14: insert-only, without a filter
    ]
    setup.init(config, dsn, dsn)
    assert published(sql) == first
    assert all(r.ok for r in results(config, dsn).values())

    # a new filter: check asks for init, init sets it (14: the publications do not depend on `when:`)
    big = rule("big", when="new.amount > 500 AND new.status = 'x'", payload=["amount"])
    bigger = make_config([big])
    if pushes_down(sql):
        _check_asks_for_the_new_filter_and_init_sets_it(sql, dsn, bigger)
    assert all(r.ok for r in results(bigger, dsn).values())

    # an update rule joins: the table moves to the main publication, without filter; the filtered one
    # stays, empty (dropping it would lose what it carried in WAL not yet streamed)
    moved = make_config([big, rule("edit", "update")])
    stale = results(moved, dsn)["publication"]
    assert not stale.ok and "tables [] (the rules need ['public.orders'])" in stale.detail
    setup.init(moved, dsn, dsn)
    assert published(sql) == [
        ("listener_test", "orders", None, None),
        ("listener_test_filtered", None, None, None),
    ]
    assert all(r.ok for r in results(moved, dsn).values())


def _check_asks_for_the_new_filter_and_init_sets_it(sql: Conn, dsn: str, bigger: Any) -> None:
    stale = results(bigger, dsn)["filtered publication"]
    assert not stale.ok and stale.fix == "listener init"
    assert "public.orders has row filter (amount > 100) (the rules need ((amount > 500) AND" in stale.detail
    assert "public.orders publishes columns (id, amount) (the rules need columns (id, amount, status))" in (
        stale.detail
    )
    setup.init(bigger, dsn, dsn)
    assert published(sql)[1] == (
        "listener_test_filtered",
        "orders",
        ["id", "amount", "status"],
        "((amount > 500) AND (status = 'x'::text))",
    )


def test_init_can_keep_what_the_old_rules_of_a_reload_need(dsn: str, sql: Conn) -> None:
    """Until a reload's marker, the old rules match: the publication serves both sets meanwhile."""
    sql.execute(ORDERS)
    old = make_config([rule("big", when="new.amount > 100", payload=["amount"])])
    new = make_config([rule("big", when="new.amount > 500", payload=["status"])])
    setup.init(old, dsn, dsn)
    setup.init(new, dsn, dsn, keep=old)
    if not pushes_down(sql):  # 14: nothing to widen, the table stays in the insert-only publication
        assert published(sql)[1] == ("listener_test_filtered", "orders", None, None)
        setup.init(new, dsn, dsn)
        assert published(sql)[1] == ("listener_test_filtered", "orders", None, None)
        return
    assert published(sql)[1] == (
        "listener_test_filtered",
        "orders",
        ["id", "amount", "status"],
        "((amount > 500) OR (amount > 100))",
    )
    setup.init(new, dsn, dsn)
    assert published(sql)[1] == (
        "listener_test_filtered",
        "orders",
        ["id", "amount", "status"],
        "(amount > 500)",
    )


def test_drop_removes_both_publications(dsn: str, sql: Conn) -> None:
    sql.execute(ORDERS)
    config = make_config([rule("big", when="new.amount > 100")])
    setup.init(config, dsn, dsn)
    assert setup.drop(config, dsn) == [
        "dropped replication slot listener_test",
        "dropped publication listener_test",
        "dropped publication listener_test_filtered",
    ]
    assert sql.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)


async def test_filter_constants_mean_utc_whatever_the_session_time_zone(dsn: str, sql: Conn) -> None:
    """The evaluator reads `'2024-01-01'` as midnight UTC; so must the filter PostgreSQL stores."""
    sql.execute(ORDERS)
    dbname = sql.info.dbname
    sql.execute(f"ALTER DATABASE {dbname} SET TimeZone = 'America/New_York'")
    config = make_config([rule("new_year", when="new.at >= '2024-01-01'")])
    async with running_ingest(dsn, config) as run:
        # 03:00 UTC is still 2023 in New York
        sql.execute(
            "INSERT INTO orders (id, at) VALUES (1, '2024-01-01 03:00+00'), (2, '2023-12-31 23:00+00')"
        )
        await wait_caught_up(run, dsn)
    assert [e["payload"]["new"]["id"] for e in events(dsn)] == [1]
    assert published(sql)[1][3] == (
        "(at >= '2024-01-01 00:00:00+00'::timestamp with time zone)" if pushes_down(sql) else None
    )
    assert all(r.ok for r in results(config, dsn).values())  # compared as printed in UTC too


def test_a_filtered_table_is_not_published_for_the_main_publications_updates(dsn: str, sql: Conn) -> None:
    """A table without a primary key, watched for some inserts, keeps accepting the application's UPDATEs
    though another rule makes the main publication publish updates."""
    sql.execute("CREATE TABLE log (amount int, note text)")  # no primary key
    sql.execute(ORDERS)
    config = make_config([rule("big", "insert", "log", when="new.amount > 100"), rule("edit", "update")])
    assert results(config, dsn)["table public.log"].ok
    setup.init(config, dsn, dsn)
    sql.execute("INSERT INTO log VALUES (500, 'a')")
    sql.execute("UPDATE log SET note = 'b'")  # would fail in the main publication (published for update)


def test_cli_check_prints_a_line_per_rule(tmp_path: Path, dsn: str, sql: Conn) -> None:
    sql.execute(ORDERS)
    path = tmp_path / "listener.yaml"
    doc = {
        "slot": "listener_test",
        "publication": "listener_test",
        "rules": [
            rule("big", when="new.amount > 100", payload=["amount"]),
            rule("typo", "update", when="new.amout > 1"),
            {"name": "hooks", "channel": "webhooks", "workflow": WF},
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(path), "check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    big = f"✓ rule big: insert on public.orders when new.amount > 100 → {WF} (priority 0); pushed down:"
    why = "no (the rules of this table could not all be compiled)" if pushes_down(sql) else NO_PUSHDOWN_14
    assert f"{big} {why}" in lines
    typo = next(i for i, line in enumerate(lines) if line.startswith("✗ rule typo: "))
    assert f"{path}:" in lines[typo] and "amout" in lines[typo]
    assert any(line.startswith("    fix: ") and "amount" in line for line in lines[typo:])
    assert (
        f"✓ rule hooks: NOTIFY channel 'webhooks' (at most once: lost while listener is down) → {WF} "
        "(priority 0)"
    ) in lines
    # fixed: the rule is pushed down
    doc["rules"] = [doc["rules"][0], doc["rules"][2]]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-m", "listener", "--dsn", dsn, "-c", str(path), "check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pushed = "row filter (amount > 100), columns (id, amount)" if pushes_down(sql) else NO_PUSHDOWN_14
    assert f"{big} {pushed}" in proc.stdout.splitlines()
