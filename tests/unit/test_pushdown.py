"""Pushdown planning (pure): which tables get a row filter or a column list, and why not."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from listener.pg.replication import publication_names
from listener.rules.catalog import TableInfo
from listener.rules.compile import RuleSet
from listener.rules.predicate import ColumnType
from listener.rules.pushdown import (
    PublicationPlan,
    Refusal,
    describe_rule,
    filtered_publication,
    plan_publications,
    publish_list,
)
from tests.support import make_config

PG18 = 180000
INT4, TEXT, TIMESTAMPTZ = (23, "integer", "N"), (25, "text", "S"), (1184, "timestamp with time zone", "D")
ORDERS_COLUMNS = {"id": INT4, "amount": INT4, "status": TEXT, "note": TEXT, "at": TIMESTAMPTZ}


def table(name: str, identity: str = "d", keys: tuple[str, ...] = ("id",)) -> TableInfo:
    columns = {c: ColumnType(c, oid, label, cat) for c, (oid, label, cat) in ORDERS_COLUMNS.items()}
    return TableInfo(name, columns, identity, keys if identity != "f" else (), row_key=keys)


def plan(
    rules: list[dict[str, Any]],
    *,
    version: int = PG18,
    tables: Mapping[str, TableInfo | None] | None = None,
    refused: dict[tuple[str, str], Refusal] | None = None,
) -> tuple[PublicationPlan, RuleSet]:
    config = make_config(rules)
    found = tables if tables is not None else {"public.orders": table("public.orders")}
    ruleset = RuleSet.from_config(config, found, "C")
    return plan_publications(ruleset, found, version, publication="p", refused=refused), ruleset


def rule(name: str, on: str | list[str] = "insert", **more: Any) -> dict[str, Any]:
    return {"name": name, "table": "orders", "on": on, "workflow": "m:f", **more}


def line(ruleset: RuleSet, name: str, p: PublicationPlan) -> str:
    return describe_rule(next(r for r in ruleset.rules if r.name == name), p)


def test_insert_rules_with_pushable_filters_share_an_or_in_the_filtered_publication() -> None:
    p, rules = plan([rule("big", when="new.amount > 100"), rule("odd", when="new.status = 'x'")])
    (orders,) = p.tables
    assert orders.filtered and p.publication_of(orders) == "p_filtered"
    assert orders.row_filter == "(amount > 100) OR (status = 'x')"
    assert p.main_tables == () and p.filtered_publish == "insert" and p.main_publish == "insert"
    assert line(rules, "big", p).endswith(
        "pushed down: row filter (amount > 100, OR-ed with rule odd's); not pushed: columns: "
        "no `payload:`: the workflow gets whole rows"
    )


def test_one_filter_alone_is_not_parenthesised_and_duplicates_collapse() -> None:
    p, _ = plan([rule("a", when="new.amount > 100"), rule("b", when="new.amount > 100")])
    assert p.tables[0].row_filter == "amount > 100"


@pytest.mark.parametrize(
    ("rules", "own", "other"),
    [
        (
            [rule("u", ["insert", "update"], when="new.amount > 1"), rule("i", when="new.amount > 2")],
            "update rules: PostgreSQL would turn a filtered UPDATE into an INSERT",
            "rule u listens to update on the same table: PostgreSQL would turn a filtered UPDATE into an "
            "INSERT",
        ),
        (
            [rule("u", "delete"), rule("i", when="new.amount > 2")],
            "delete rules: PostgreSQL would turn a filtered UPDATE into a DELETE",
            "rule u listens to delete on the same table: PostgreSQL would turn a filtered UPDATE into a "
            "DELETE",
        ),
        (
            [rule("u"), rule("i", when="new.amount > 2")],
            "no `when:`: every insert matches",
            "rule u on the same table has no `when:` and takes every insert",
        ),
        (
            [rule("u", when="new.at > now() - interval '1 day'"), rule("i", when="new.amount > 2")],
            "`when:` cannot be a row filter: now() is not immutable",
            "rule u's `when:` cannot be a row filter (now() is not immutable",
        ),
        (
            [rule("u", when="new.amount / 3 > 2"), rule("i", when="new.amount > 2")],
            "`when:` cannot be a row filter: the operator / can raise (overflow, division by zero); a row "
            "filter that raises would stop decoding at that row for good",
            "rule u's `when:` cannot be a row filter (the operator / can raise",
        ),
        (
            [rule("u", when="new.amount + 1 > 2"), rule("i", when="new.amount > 2")],
            "`when:` cannot be a row filter: the operator + can raise",
            "rule u's `when:` cannot be a row filter (the operator + can raise",
        ),
        (
            [rule("u", when="old.amount IS NULL AND new.amount > 1"), rule("i", when="new.amount > 2")],
            "`when:` cannot be a row filter: it reads old.amount",
            "rule u's `when:` cannot be a row filter (it reads old.amount",
        ),
    ],
)
def test_a_table_without_a_shared_filter_names_the_reason_for_each_rule(
    rules: list[dict[str, Any]], own: str, other: str
) -> None:
    p, ruleset = plan(rules)
    (orders,) = p.tables
    assert orders.row_filter is None and not orders.filtered
    assert own in (orders.filter_reason("u") or "")
    assert other in (orders.filter_reason("i") or "")
    assert "pushed down: no (" in line(ruleset, "i", p)


def test_truncate_rules_do_not_block_a_filter_and_are_published_with_it() -> None:
    p, rules = plan([rule("big", when="new.amount > 100"), rule("gone", "truncate")])
    assert p.tables[0].row_filter == "amount > 100"
    assert p.filtered_publish == "insert, truncate"
    assert line(rules, "gone", p).endswith("pushed down: nothing to push (a truncate carries no rows)")


def test_column_list_is_the_union_of_what_the_rules_use_plus_the_identity() -> None:
    p, _ = plan(
        [
            rule("a", ["insert", "update"], payload=["amount"], key="{new.status}", ordered=True),
            rule("b", "insert", payload={"when": "at"}, when="new.amount > 3"),
        ]
    )
    assert p.tables[0].columns == ("id", "amount", "status", "at")  # table order; id: the identity


def test_column_list_leaves_out_unused_columns_in_table_order() -> None:
    p, rules = plan(
        [rule("a", ["insert", "update"], payload=["status"], key="{new.amount}", key_concurrency=1)]
    )
    assert p.tables[0].columns == ("id", "amount", "status")  # id: the replica identity
    assert line(rules, "a", p).endswith(
        "pushed down: columns (id, amount, status); not pushed: update rules: PostgreSQL would turn a "
        "filtered UPDATE into an INSERT"
    )


def test_every_rule_must_name_its_columns() -> None:
    p, _ = plan([rule("a", payload=["status"]), rule("b", "update")])
    assert p.tables[0].columns is None
    assert (
        p.tables[0].columns_reason("a") == "rule b on the same table has no `payload:` and needs whole rows"
    )


def test_no_column_list_for_replica_identity_full_published_for_updates() -> None:
    full = {"public.orders": table("public.orders", identity="f")}
    p, _ = plan([rule("a", ["insert", "update"], payload=["status"])], tables=full)
    assert p.tables[0].columns is None
    assert "REPLICA IDENTITY FULL and is published for update/delete" in (
        p.tables[0].columns_reason("a") or ""
    )
    # insert-only and filtered: allowed
    p, _ = plan([rule("a", payload=["status"], when="new.amount > 1")], tables=full)
    assert p.tables[0].columns == ("amount", "status")
    # a default flow-control key is the primary key there too (never the whole row): it is published
    p, _ = plan([rule("a", payload=["status"], when="new.amount > 1", ordered=True)], tables=full)
    assert p.tables[0].columns == ("id", "amount", "status")


def test_a_full_table_is_published_for_updates_when_another_table_is() -> None:
    """The main publication publishes the union of its tables' operations."""
    tables = {"public.orders": table("public.orders", identity="f"), "public.other": table("public.other")}
    p, _ = plan(
        [rule("a", payload=["status"]), {"name": "o", "table": "other", "on": "update", "workflow": "m:f"}],
        tables=tables,
    )
    assert p.table("public", "orders") is not None
    assert p.table("public", "orders").columns is None  # type: ignore[union-attr]


def test_no_column_list_when_the_rules_use_every_column() -> None:
    p, _ = plan([rule("a", payload=list(ORDERS_COLUMNS))])
    assert p.tables[0].columns is None and p.tables[0].columns_reason("a") == "the rules use every column"


def test_server_refusals_fall_back_with_the_servers_reason() -> None:
    refused = {("public", "orders"): Refusal("cannot use x", "cannot use generated column y")}
    p, rules = plan([rule("a", payload=["status"], when="new.amount > 1")], refused=refused)
    assert p.tables[0].row_filter is None and p.tables[0].columns is None
    assert line(rules, "a", p).endswith(
        "pushed down: no (PostgreSQL refused the row filter: cannot use x; "
        "columns: PostgreSQL refused the column list: cannot use generated column y)"
    )


def test_servers_before_15_push_nothing_and_say_so() -> None:
    p, rules = plan([rule("a", payload=["status"], when="new.amount > 1")], version=140011)
    # an insert-only table still goes to the second publication, without a filter or column list
    assert p.filtered == "p_filtered" and [t.name for t in p.filtered_tables] == ["public.orders"]
    assert p.tables[0].row_filter is None and p.tables[0].columns is None
    assert p.main_tables == () and p.filtered_publish == "insert"
    assert line(rules, "a", p).endswith(
        "pushed down: no (PostgreSQL 14 has no publication row filters or column lists (15+))"
    )
    # a table with update rules stays in the main one
    p, rules = plan([rule("a"), rule("b", "update")], version=140011)
    assert p.filtered_tables == () and [t.name for t in p.main_tables] == ["public.orders"]


def test_a_missing_table_gets_no_pushdown() -> None:
    p, rules = plan([rule("a")], tables={"public.orders": None})
    assert p.tables[0].row_filter is None and p.tables[0].columns is None
    assert line(rules, "a", p).endswith("pushed down: no (public.orders does not exist)")


def test_rule_lines_say_what_each_rule_matches() -> None:
    config = make_config(
        [
            rule("sign", "update", when="new.status = 'signed'", changed=["status"], priority=5),
            {"name": "m", "message": "orders", "workflow": "m:f"},
            {"name": "n", "channel": "webhooks", "workflow": "m:f"},
        ]
    )
    tables = {"public.orders": table("public.orders", identity="f")}  # changed: needs old values
    rules = RuleSet.from_config(config, tables, "C")
    p = plan_publications(rules, tables, PG18, publication="p")
    assert line(rules, "sign", p) == (
        "update on public.orders when new.status = 'signed' if changed (status) → m:f (priority 5); "
        "pushed down: no (update rules: PostgreSQL would turn a filtered UPDATE into an INSERT; "
        "columns: no `payload:`: the workflow gets whole rows)"
    )
    assert line(rules, "m", p) == "message prefix 'orders' → m:f (priority 0)"
    assert line(rules, "n", p) == (
        "NOTIFY channel 'webhooks' (at most once: lost while listener is down) → m:f (priority 0)"
    )


def test_names_and_publish_lists() -> None:
    assert filtered_publication("listener") == "listener_filtered"
    assert filtered_publication("p" * 63) == "p" * 54 + "_filtered"
    assert publish_list(["truncate", "insert", "update"]) == "insert, update, truncate"
    assert publish_list([]) == "insert"


def test_start_replication_names_every_streamed_publication_quoted() -> None:
    assert publication_names("listener") == "'\"listener\"'"
    assert publication_names(["listener", "listener_filtered"]) == '\'"listener","listener_filtered"\''
    assert publication_names(['we"ird', "it's"]) == '\'"we""ird","it\'\'s"\''
