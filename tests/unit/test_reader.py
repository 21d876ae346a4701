"""The reader loop (listener.ingest.reader.PgoutputSource) fed the golden pgoutput captures, no database.

A fake session hands out the captured XLogData payloads (tests/fixtures/pgoutput/, written by
tests/fixtures/capture_pgoutput.py) the way ReplicationSession.read does; the batches the reader puts on
its queue are checked against a reference walk of the decoded messages: idempotency keys
(``rule/commit LSN/ordinal``), ordinals per table, checkpoints at transaction ends, a restart that skips
what is below the checkpoint, and a huge transaction cut into batches that move no checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, cast

import pytest

from listener.ingest.reader import PgoutputSource
from listener.ingest.source import BatchQueue
from listener.ingest.state import IngestState
from listener.pg import pgoutput as po
from listener.pg.lsn import format_lsn
from listener.pg.replication import ReplicationSession
from listener.queue.batches import EventBatch
from listener.queue.store import StateStore
from listener.rules.compile import RuleSet
from listener.rules.config import parse_config

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pgoutput"
# The v3 and v4 captures hold streamed and two-phase transactions, which listener does not ask for (it
# streams with proto_version 1 or 2, no streaming, no two_phase): only v1 is the stream the reader sees.
VERSIONS = {"v1": 1}

RULES = """
rules:
  - {name: types, table: public.t_types, on: [insert, update, delete], workflow: m:f}
  - {name: full, table: public.t_full, on: [insert, update, delete, truncate], workflow: m:f}
  - {name: alter, table: public.t_alter, on: [insert], workflow: m:f}
  - {name: tx, message: tx-prefix, workflow: m:f}
"""
TABLE_RULES = {  # table -> (rule, operations), as RULES says
    "t_types": ("types", {"insert", "update", "delete"}),
    "t_full": ("full", {"insert", "update", "delete", "truncate"}),
    "t_alter": ("alter", {"insert"}),
}
OPS = {po.Insert: "insert", po.Update: "update", po.Delete: "delete"}


@cache
def captured(name: str) -> tuple[tuple[int, bytes], ...]:
    document = json.loads((FIXTURES / f"{name}.json").read_text())
    return tuple(
        (int(m["lsn"].split("/")[0], 16) << 32 | int(m["lsn"].split("/")[1], 16), bytes.fromhex(m["data"]))
        for m in document["messages"]
    )


class EndOfCapture(Exception):
    """The fake session has handed out every message: the test's end of the stream."""


class FakeSession:
    """What the reader uses of a ReplicationSession: reads of (LSN, payload) lists, then the end."""

    def __init__(self, messages: list[tuple[int, bytes]], protocol: int, per_read: int = 7) -> None:
        self.protocol_version = protocol
        self.reads = [messages[i : i + per_read] for i in range(0, len(messages), per_read)]
        self.drained = False
        self.keepalive_lsn = 0
        self.confirmed: list[int] = []

    async def read(self, max_messages: int = 0, *, block: bool = True, wait_s: float | None = None) -> Any:
        if self.reads:
            self.drained = len(self.reads) == 1
            return [(lsn, memoryview(data)) for lsn, data in self.reads.pop(0)]
        if block:
            raise EndOfCapture
        return []

    def confirm(self, lsn: int) -> None:
        self.confirmed.append(lsn)


class NoCatalog:
    """A catalog that knows no user type: enums and domains of the capture load as text."""

    async def execute(self, query: str, params: Any) -> NoCatalog:
        return self

    async def fetchall(self) -> list[Any]:
        return []


def offline_ingest(batch_events: int = 5000) -> IngestState:
    ingest = IngestState(
        source_dsn="",
        store=cast(StateStore, None),  # the reader never writes: its batches go to the queue
        rules=RuleSet(parse_config(RULES).rules),
        slot="s",
        publication="p",
        batch_events=batch_events,
    )
    ingest.catalog = cast(Any, NoCatalog())
    ingest.empty_checkpoint_interval = 0.0  # every transaction's end is a checkpoint
    return ingest


async def read_all(
    messages: list[tuple[int, bytes]], protocol: int, *, resume_lsn: int = 0, batch_events: int = 5000
) -> tuple[list[EventBatch], FakeSession]:
    """The batches the reader makes of ``messages``, in order."""
    ingest = offline_ingest(batch_events)
    session = FakeSession(messages, protocol)
    queue = BatchQueue(max_batches=100_000)
    source = PgoutputSource(ingest, cast(ReplicationSession, session), resume_lsn)
    with pytest.raises(EndOfCapture):
        await source.run(queue)
    batches = []
    while queue.qsize():
        item = await queue.get()
        assert item is not None and item[1] is source
        batches.append(item[0])
    return batches, session


def keys(batches: list[EventBatch]) -> list[str]:
    """Each event's idempotency key, as the state schema assembles it: rule/commit LSN/ordinal."""
    out = []
    for batch in batches:
        for group, ordinal in zip(batch.group, batch.ordinal, strict=True):
            rule, commit = batch.groups[group - 1][0], batch.groups[group - 1][4]
            out.append(f"{rule}/{commit}/{ordinal}")
    return out


def plain_transactions(name: str) -> Iterator[tuple[po.Begin, list[Any], po.Commit]]:
    """The capture's Begin..Commit transactions, decoded (the v1 capture has only those)."""
    decoder = po.Decoder(VERSIONS[name])
    body: list[Any] = []
    begin: po.Begin | None = None
    for _, data in captured(name):
        msg = decoder.decode(data)
        if isinstance(msg, po.Begin):
            begin, body = msg, []
        elif isinstance(msg, po.Commit):
            assert begin is not None
            yield begin, body, msg
            begin = None
        elif begin is not None or isinstance(msg, po.Relation):
            body.append(msg)


def expected_keys(name: str, resume_lsn: int = 0) -> list[str]:
    """The reference: each matched change's key, its ordinal counted per table within its transaction
    (a truncate takes one per table), transactional messages counted per prefix."""
    tables: dict[int, str] = {}
    out = []
    for begin, body, _ in plain_transactions(name):
        ordinals: dict[int, int] = {}
        commit = format_lsn(begin.final_lsn)
        skip = begin.final_lsn < resume_lsn
        for msg in body:
            if isinstance(msg, po.Relation):
                tables[msg.oid] = msg.name
                continue
            if isinstance(msg, po.Message):
                if msg.prefix == "tx-prefix" and not skip:
                    out.append(f"tx/{commit}/0")
                continue
            if not isinstance(msg, po.Insert | po.Update | po.Delete | po.Truncate):
                continue  # Type, Origin
            oids = msg.relation_oids if isinstance(msg, po.Truncate) else (msg.relation_oid,)
            op = "truncate" if isinstance(msg, po.Truncate) else OPS[type(msg)]
            for oid in oids:
                ordinal = ordinals[oid] = ordinals.get(oid, -1) + 1
                rule = TABLE_RULES.get(tables[oid])
                if rule is not None and op in rule[1] and not skip:
                    out.append(f"{rule[0]}/{commit}/{ordinal}")
    return out


async def test_each_matched_change_makes_one_event_keyed_by_commit_lsn_and_table_ordinal() -> None:
    batches, _ = await read_all(list(captured("v1")), 1)
    expected = expected_keys("v1")
    assert len(expected) > 10  # the rules match a fair part of the capture
    assert keys(batches) == expected
    # the payload of an insert carries the row, as text
    inserted = json.loads(batches[0].payload[0])
    assert inserted["new"]["t"] == "hello"


async def test_checkpoints_are_transaction_ends_in_order_and_the_last_is_the_last_commit() -> None:
    batches, _ = await read_all(list(captured("v1")), 1)
    ends = [commit.end_lsn for _, _, commit in plain_transactions("v1")]
    checkpoints = [b.checkpoint for b in batches if b.checkpoint is not None]
    assert checkpoints and set(checkpoints) <= set(ends)
    assert checkpoints == sorted(checkpoints)
    assert checkpoints[-1] == ends[-1]
    for batch in batches:  # no batch holds part of a transaction beyond its checkpoint
        if batch.checkpoint is not None and batch.lsn:
            assert max(batch.lsn) < batch.checkpoint


async def test_a_restart_skips_the_transactions_committed_below_the_checkpoint() -> None:
    transactions = list(plain_transactions("v1"))
    middle = transactions[len(transactions) // 2][0].final_lsn
    batches, _ = await read_all(list(captured("v1")), 1, resume_lsn=middle)
    got = keys(batches)
    assert got == expected_keys("v1", resume_lsn=middle)
    assert 0 < len(got) < len(expected_keys("v1"))


def huge_transaction(copies: int) -> list[tuple[int, bytes]]:
    """The capture's first transaction (two inserts into t_types) with its first insert repeated
    ``copies`` times: one big source transaction, from real bytes."""
    messages = list(captured("v1"))
    decoder = po.Decoder(1)
    kinds = [type(decoder.decode(data)) for _, data in messages]
    commit = kinds.index(po.Commit)
    first_insert = kinds.index(po.Insert)
    insert = messages[first_insert]
    return [*messages[:first_insert], *[insert] * copies, *messages[first_insert + 1 : commit + 1]]


async def test_a_huge_transaction_is_cut_into_batches_and_only_its_last_moves_the_checkpoint() -> None:
    messages = huge_transaction(25)
    whole, _ = await read_all(messages, 1)
    cut, _ = await read_all(messages, 1, batch_events=4)
    assert keys(cut) == keys(whole)  # the same events, the same keys
    assert len(keys(cut)) == 26 and len(set(keys(cut))) == 26  # ordinals 0..25 of one table
    assert [k.rsplit("/", 1)[1] for k in keys(cut)] == [str(n) for n in range(26)]
    with_events = [b for b in cut if len(b)]
    assert len(with_events) >= 26 // 4
    assert all(len(b) <= 4 for b in cut)
    # the cut batches commit their events without the checkpoint: a crash re-reads the transaction
    assert all(b.checkpoint is None for b in with_events[:-1])
    assert with_events[-1].checkpoint is not None or cut[-1].checkpoint is not None
