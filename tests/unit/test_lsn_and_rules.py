"""LSN text form, and rule matching (pure)."""

from __future__ import annotations

import pytest

from listener.errors import ListenerError
from listener.pg.lsn import format_lsn, parse_lsn
from listener.rules.compile import CompiledRule, RuleSet, changed_matches
from listener.rules.config import parse_config
from listener.rules.predicate import MissingValue


@pytest.mark.parametrize(
    ("text", "value"), [("0/0", 0), ("0/16B3748", 0x16B3748), ("16/B374D848", 0x16_B374D848)]
)
def test_lsn_round_trip(text: str, value: int) -> None:
    assert parse_lsn(text) == value
    assert format_lsn(value) == text


@pytest.mark.parametrize("bad", ["", "16", "x/1", "1/", "/1", "0/100000000", "-1/0", "1/2/3"])
def test_bad_lsn_says_the_expected_form(bad: str) -> None:
    with pytest.raises(ListenerError, match="invalid LSN") as info:
        parse_lsn(bad)
    assert info.value.hint is not None and "0/16B3748" in info.value.hint


RULES = """
rules:
  - {name: a, table: users, on: [insert, update], workflow: m:a}
  - {name: b, table: public.users, on: [insert], workflow: m:b}
  - {name: c, table: sales.orders, on: [delete, truncate], workflow: m:c}
"""


def test_several_rules_match_one_change_in_order() -> None:
    rules = RuleSet(parse_config(RULES).rules)
    assert [r.name for r in rules.match("public", "users", "insert")] == ["a", "b"]
    assert [r.name for r in rules.match("public", "users", "update")] == ["a"]
    assert rules.match("public", "users", "delete") == ()
    assert rules.match("public", "other", "insert") == ()
    assert [r.name for r in rules.match("sales", "orders", "truncate")] == ["c"]


def test_tables_and_operations_for_the_publication() -> None:
    rules = RuleSet(parse_config(RULES).rules)
    assert rules.tables == [("public", "users"), ("sales", "orders")]
    assert rules.operations == {"insert", "update", "delete", "truncate"}
    assert rules.operations_for("public", "users") == {"insert", "update"}
    assert rules.operations_for("nowhere", "x") == frozenset()


def test_changed_counts_an_unsent_value_as_unchanged_and_never_guesses_a_missing_old_one() -> None:
    rule = CompiledRule("r", "public", "t", frozenset({"update"}), "m:f", changed=("status", "body"))
    assert changed_matches(rule, {"status": b"b", "body": b"x"}, {"status": b"a", "body": b"x"})
    assert not changed_matches(rule, {"status": b"a", "body": b"x"}, {"status": b"a", "body": b"x"})
    assert not changed_matches(rule, {"status": b"a"}, {"status": b"a"})  # body not sent: unchanged TOAST
    assert changed_matches(rule, {"status": None}, {"status": b"a"})  # to NULL is a change
    with pytest.raises(MissingValue) as caught:
        changed_matches(rule, {"status": b"b"}, {"id": b"1"})  # only the key's old value was sent
    assert (caught.value.side, caught.value.column) == ("old", "status")
