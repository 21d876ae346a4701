"""The source seam (listener.ingest.source): a source plugged in through ``Ingest.sources`` alone, beside
the slot and NOTIFY, gets its events committed by the writer and is acknowledged only after the commit;
a redelivery with the same keys inserts nothing twice (DESIGN.md, invariant 11)."""

from __future__ import annotations

import asyncio
import json

import psycopg

from listener.ingest.source import BatchQueue
from listener.queue.batches import EventBatch
from listener.rules.compile import RuleSet
from listener.rules.config import parse_config
from tests.support import _wait_for, events, make_config, running_ingest, wait_caught_up

# The events' group: what a rule gives them.  Rules on a channel make events whose commit text is free
# (not an LSN), as a new kind of source's would be.
TICKS = RuleSet(parse_config("rules: [{name: ticks, channel: ticks, workflow: m:f}]").rules).channels["ticks"]


class Ticks:
    """A schedule-like source: each tick is one event keyed by the tick's time; it sends every tick
    twice (a redelivery), and notes, at each acknowledgement, which ticks were durable then."""

    name = "ticks"

    def __init__(self, dsn: str, ticks: list[str]) -> None:
        self.dsn = dsn
        self.ticks = ticks
        self.acked: list[tuple[list[str], list[str]]] = []  # (ticks of the batch, ticks durable then)
        self.done = asyncio.Event()

    def batch(self, tick: str) -> EventBatch:
        batch = EventBatch()
        (rule,) = TICKS
        group = batch.group_id(rule, "tick", None, f"tick/{tick}", None, None)
        batch.add(group, 0, 0, json.dumps({"tick": tick}))
        return batch

    async def run(self, out: BatchQueue) -> None:
        for tick in self.ticks:
            for _ in range(2):
                await out.put(self.batch(tick), self)
        await asyncio.Event().wait()  # an origin that stays open

    def committed(self, batch: EventBatch) -> None:
        sent = [json.loads(p)["tick"] for p in batch.payload]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            durable = [str(r[0]) for r in conn.execute("SELECT payload->>'tick' FROM listener.events")]
        self.acked.append((sent, durable))
        if len(self.acked) == 2 * len(self.ticks):
            self.done.set()


async def test_a_source_plugged_in_beside_the_others_is_acknowledged_after_its_events_commit(
    dsn: str, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    sql.execute("CREATE TABLE items (id int PRIMARY KEY)")
    config = make_config([{"name": "on_insert", "table": "items", "on": ["insert"], "workflow": "m:f"}])
    ticks = ["2026-12-06T02:00:00Z", "2026-12-07T02:00:00Z"]
    source = Ticks(dsn, ticks)
    async with running_ingest(dsn, config, sources=[source]) as run:
        sql.execute("INSERT INTO items VALUES (1)")
        await _wait_for(lambda: source.done.is_set() or run.task.done(), "the ticks to be acknowledged")
        await wait_caught_up(run, dsn)
    got = events(dsn)
    assert sorted(e["idempotency_key"] for e in got if e["rule"] == "ticks") == [
        f"ticks/tick/{t}/0" for t in ticks
    ]
    assert [e["rule"] for e in got].count("on_insert") == 1  # the slot's source beside it
    for sent, durable in source.acked:  # each acknowledgement came after its events were durable
        assert set(sent) <= set(durable)
