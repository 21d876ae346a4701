"""A huge row's payload (``Change.payload_json(huge=True)``: text values escaped piece by piece onto one
growing string) is the same text as any row's, whatever the characters and wherever the pieces cut them."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listener.errors import ProtocolError
from listener.pg import changes
from tests.unit.test_malformed_changes import COLUMNS, VALID, assembled, insert_message, update_message

TEXT = [name for name, _ in COLUMNS].index("t")
TRICKY = 'a"b\\c\nd\te\x01\x1f\x7fé€😀 \u2028'  # escapes, control characters, 2-, 3- and 4-byte UTF-8


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values of 4 bytes and more count as huge, escaped 3 bytes at a time: pieces cut characters."""
    monkeypatch.setattr(changes, "HUGE_TEXT_BYTES", 4)
    monkeypatch.setattr(changes, "HUGE_TEXT_PIECE_BYTES", 3)


def row(text: str) -> list[bytes | None]:
    values: list[bytes | None] = list(VALID)
    values[TEXT] = text.encode()
    return values


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00")))
def test_an_insert_renders_the_same_text(text: str) -> None:
    change = assembled(insert_message(row(text)))
    assert change.payload_json(huge=True) == change.payload_json()


@pytest.mark.parametrize("old", ["", "x", TRICKY * 3, "\\u0000", '"\\u00001"'])
def test_an_update_with_its_old_row_renders_the_same_text(old: str) -> None:
    change = assembled(update_message(row(old), row(TRICKY * 1000)))
    payload = change.payload_json(huge=True)
    assert payload == change.payload_json()
    assert json.loads(payload)["new"]["t"] == TRICKY * 1000


def test_a_huge_value_that_is_not_utf8_is_the_same_protocol_error() -> None:
    values = row("abcdef")
    values[TEXT] = b"abc\xe2\x82"  # cut inside a character
    change = assembled(insert_message(values))
    with pytest.raises(ProtocolError) as normal:
        change.payload_json()
    with pytest.raises(ProtocolError) as huge:
        change.payload_json(huge=True)
    assert str(huge.value) == str(normal.value) and huge.value.offset == normal.value.offset
