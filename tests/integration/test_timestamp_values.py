"""Dates and timestamps PostgreSQL accepts beyond Python's datetime (infinities, BC, years past 9999) in a
column that a `when:` reads: the predicate evaluates them as PostgreSQL does, and the event carries them
as PostgreSQL's text."""

from __future__ import annotations

import psycopg

from tests.support import events, make_config, running_ingest, wait_caught_up

Conn = psycopg.Connection[tuple[object, ...]]
VALUES = [
    ("infinity", "infinity", "infinity"),
    ("-infinity", "-infinity", "-infinity"),
    ("0044-03-15 12:00:00 BC", "0044-03-15 12:00:00+00 BC", "0044-03-15 BC"),
    ("10000-01-01 00:00:00", "10000-01-01 00:00:00+00", "10000-01-01"),
    ("294276-12-31 23:59:59.999999", "294276-12-31 23:59:59.999999+00", "5874897-12-31"),
]


async def test_infinite_bc_and_far_timestamps_are_evaluated_and_carried(dsn: str, sql: Conn) -> None:
    sql.execute("CREATE TABLE shifts (id int PRIMARY KEY, at timestamp, at_tz timestamptz, day date)")
    when = (
        "new.at > '2000-01-01' AND new.at_tz - interval '1 mon' > '2000-01-01' AND new.day - 1 > '9999-12-30'"
        " OR new.day BETWEEN '0100-01-01 BC' AND '0001-01-01'"
    )
    config = make_config(
        [{"name": "r", "workflow": "m:f", "table": "shifts", "on": ["insert"], "when": when}]
    )
    async with running_ingest(dsn, config) as run:
        for n, (at, at_tz, day) in enumerate(VALUES):
            sql.execute("INSERT INTO shifts VALUES (%s, %s, %s, %s)", [n, at, at_tz, day])
        await wait_caught_up(run, dsn)
    got = [e["payload"]["new"] for e in events(dsn)]
    assert got == [  # not -infinity
        {"id": n, "at": at, "at_tz": at_tz, "day": day}
        for n, (at, at_tz, day) in enumerate(VALUES)
        if at != "-infinity"
    ]
