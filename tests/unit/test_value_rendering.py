"""Values of built-in types: the JSON text built for the queue (fragments) says exactly what the JSON
value shown by `tail` (render) says."""

from __future__ import annotations

import json

import pytest

from listener.pg.relations import fragment_for
from listener.pg.types import TypeRegistry

CASES = [
    (23, b"-2147483648", -2147483648),
    (20, b"9223372036854775807", 9223372036854775807),
    (21, b"0", 0),
    (16, b"t", True),
    (16, b"f", False),
    (
        25,
        b'quote " backslash \\ newline \n tab \t unicode \xc3\xa9 \xe2\x82\xac',
        'quote " backslash \\ newline \n tab \t unicode é €',
    ),
    (1043, b"", ""),
    (701, b"0.30000000000000004", 0.30000000000000004),
    (701, b"NaN", "NaN"),
    (701, b"-Infinity", "-Infinity"),
    (700, b"1e+30", 1e30),
    (1700, b"12345678901234567890.000001", "12345678901234567890.000001"),
    (3802, b'{"a": [1, 2.5, null], "b": "x"}', {"a": [1, 2.5, None], "b": "x"}),
    (114, b'{"big": 1e400}', '{"big": 1e400}'),
    (1184, b"2024-01-02 03:04:05.123456+00", "2024-01-02 03:04:05.123456+00"),
    (17, b"\\x00ff", "\\x00ff"),
    (2950, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    (1007, b"{1,NULL,3}", [1, None, 3]),
    (1009, b'{"a b",NULL,c}', ["a b", None, "c"]),
    (1022, b"{NaN,1.5,Infinity}", ["NaN", 1.5, "Infinity"]),
    (1231, b"{1.50,NULL}", ["1.50", None]),
]


@pytest.mark.parametrize(("oid", "text", "expected"), CASES)
def test_fragment_and_render_agree(oid: int, text: bytes, expected: object) -> None:
    types = TypeRegistry()
    render = types.renderer(oid)
    assert render(text) == expected
    assert json.loads(fragment_for(render, oid, types)(text)) == expected
