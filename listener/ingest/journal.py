"""The change journal (``journal:``): the rule tables' changes kept for ``keep``.

Ingest keeps each row change the stream carries as the server sent it: per transaction and table, the raw
pgoutput messages with the table's Relation message (a row of ``journal``, see sql/0006_journal.sql),
written in the state-db transaction of its batch.  On the hot path that is two appends to a bytearray
per change (:class:`JournalBuffer`); nothing is decoded or rendered for it.  `listener replay`
(:mod:`listener.ops.replay`) reads them back.

The running ingest prunes rows committed more than ``keep`` ago every ``JOURNAL_PRUNE_INTERVAL_S``, in
batches of ``JOURNAL_PRUNE_BATCH_ROWS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass

from listener.defaults import JOURNAL_PRUNE_BATCH_ROWS, JOURNAL_PRUNE_INTERVAL_S, JOURNAL_ROW_BYTES
from listener.pg.assembler import Assembler
from listener.queue.batches import RawChunk
from listener.queue.store import StateStore

logger = logging.getLogger(__name__)


_unpack_oid = struct.Struct(">I").unpack_from
_pack_head = struct.Struct(">QI").pack  # a change in a journal row: its LSN and its message's length


class JournalBuffer:
    """The journal rows of the open transaction, one per table, filled with raw messages as they come.

    ``add`` is on the ingest's per-change path; ``close``/``take`` hand finished rows to a batch."""

    __slots__ = ("chunk_bytes", "open", "protocol")

    def __init__(self, protocol: int, *, chunk_bytes: int | None = None) -> None:
        self.protocol = protocol
        self.chunk_bytes = chunk_bytes or JOURNAL_ROW_BYTES
        self.open: dict[int, RawChunk] = {}

    def add(
        self, lsn: int, payload: bytes | memoryview, assembler: Assembler, relations: dict[int, bytes]
    ) -> RawChunk | None:
        """Keep one Insert/Update/Delete message (before the assembler counts it); return a full row."""
        oid = _unpack_oid(payload, 1)[0]
        chunk = self.open.get(oid)
        if chunk is None:
            begin = assembler.begin
            relation = relations.get(oid)
            info = assembler.relations.get(oid)
            if begin is None or relation is None or info is None:
                return None  # the assembler raises the protocol error for this message
            chunk = self.open[oid] = RawChunk(
                commit_lsn=begin.final_lsn,
                relation_oid=oid,
                first_ordinal=assembler.peek_ordinal(oid),
                xid=begin.xid,
                commit_time=begin.commit_time,
                table_name=info.qualified,
                protocol=self.protocol,
                relation=relation,
                rules="",
            )
        data = chunk.data
        data += _pack_head(lsn, len(payload))
        data += payload
        chunk.changes += 1
        if len(data) >= self.chunk_bytes:
            return self.open.pop(oid)
        return None

    def close(self, oid: int) -> RawChunk | None:
        """End the open row of table ``oid`` (its shape changed, or a truncate took an ordinal)."""
        return self.open.pop(oid, None)

    def take(self) -> list[RawChunk]:
        """The open rows, at the transaction's commit."""
        rows = list(self.open.values())
        self.open.clear()
        return rows


@dataclass(frozen=True, slots=True)
class JournalPolicy:
    """``journal:`` as the ingest uses it."""

    keep_s: float
    prune_interval_s: float = JOURNAL_PRUNE_INTERVAL_S
    prune_batch_rows: int = JOURNAL_PRUNE_BATCH_ROWS


async def prune_forever(store: StateStore, policy: JournalPolicy, stop: asyncio.Event) -> None:
    """Delete rows older than ``keep`` now and then, until ``stop``.  Runs supervised (ingest's
    ``ingest-journal`` task): a lost connection is retried after a backoff (the journal only grows
    meanwhile), any other failure stops the service."""
    while not stop.is_set():
        deleted = await store.prune_journal(policy.keep_s, batch_rows=policy.prune_batch_rows)
        if deleted:
            logger.info("journal: pruned %d row(s) older than %gs", deleted, policy.keep_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), policy.prune_interval_s)
