"""What each supported PostgreSQL version offers listener, and what listener does without it.

listener runs on PostgreSQL 14 to 18 and adapts to the server it connects to: the version decides the
pgoutput protocol version (:func:`listener.pg.replication.protocol_version_for`), the collation query
(:mod:`listener.rules.catalog`), whether rules are pushed down (:mod:`listener.rules.pushdown`), how a
backfill's watermarks are flushed (:mod:`listener.ingest.backfill`) and whether the slot may fail over
(:mod:`listener.install`).
This module lists what an older server lacks, for ``listener check`` (one line per missing feature) and
README's version table.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_SERVER_VERSION = 140000  # the oldest PostgreSQL listener supports
FAILOVER_SLOTS = 170000  # pg_create_logical_replication_slot(..., failover => true)


@dataclass(frozen=True, slots=True)
class Feature:
    """A server feature listener uses where the server has it."""

    since: int  # server_version_num of the first version that has it
    name: str
    without: str  # what listener does on an older server


FEATURES = (
    Feature(
        150000,
        "publication row filters or column lists",
        "every change of the rule tables leaves the server; listener applies `when:` and `payload:` itself",
    ),
    Feature(
        150000,
        "skipping empty transactions",
        "every transaction of the database is streamed, empty when it touches no rule table; listener "
        "writes no checkpoint for each",
    ),
    Feature(
        170000,
        "the flush flag of pg_logical_emit_message",
        "a backfill's watermarks reach the stream once the WAL writer flushes them (wal_writer_delay)",
    ),
    Feature(
        FAILOVER_SLOTS,
        "failover slots",
        "the slot lives on the primary only: after a failover to a standby, `listener init` makes a new "
        "one, and rows changed in between come back only by a backfill",
    ),
)


def major(server_version: int) -> str:
    """``140023`` -> ``14``; ``90624`` -> ``9.6``."""
    if server_version >= 100000:
        return str(server_version // 10000)
    return f"{server_version // 10000}.{server_version // 100 % 100}"


def missing(server_version: int) -> list[Feature]:
    """The features listener uses that ``server_version`` lacks."""
    return [f for f in FEATURES if server_version < f.since]


def describe(feature: Feature, server_version: int) -> str:
    """One line for ``listener check``: what is missing, from which version on, and what happens instead."""
    since = major(feature.since)
    return f"PostgreSQL {major(server_version)} has no {feature.name} ({since}+): {feature.without}"
