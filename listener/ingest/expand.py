"""The expander: compact chunks of bulk changes → events and runs, a bounded number ahead of the workers.

Ingest stores the bulk of a large transaction as raw pgoutput messages (``event_chunks``, see
sql/0002_event_chunks.sql), which costs the server one row per chunk instead of an event and a run per
change.  The expander decodes a chunk with the same decoder and renders the same payloads the direct path
would have made, and inserts them -- with the same idempotency keys, duplicates skipped -- in the
transaction that deletes the chunk.  Chunks are expanded oldest first, and only while fewer than
``ahead`` ungated runs wait: a million-row transaction becomes a million runs as fast as workers take
them, not all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from listener.defaults import EXPAND_IDLE_POLL_S, EXPAND_POLL_S, EXPAND_SLICE_ROWS
from listener.errors import ProtocolError
from listener.ingest.backfill_table import chunk_from_row
from listener.pg import pgoutput as po
from listener.pg.changes import Change
from listener.pg.lsn import parse_lsn
from listener.pg.relations import RelationInfo, relation_info
from listener.pg.types import TypeRegistry
from listener.queue.batches import EventBatch
from listener.queue.store import StateStore
from listener.rules.events import chunk_events

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Plain:
    """The run policy of a rule whose events were stored compactly: ungated (see CompiledRule)."""

    name: str
    workflow: str
    priority: int = 0
    gated: bool = False
    key_limit: int | None = None
    ordered: bool = False
    source: str = "table"


@dataclass(slots=True)
class ExpandStats:
    chunks: int = 0
    changes: int = 0
    events_inserted: int = 0


def decode_relation(protocol: int, relation: bytes, types: TypeRegistry) -> RelationInfo:
    """The table a chunk's (or a journal row's) changes belong to, from its stored Relation message."""
    msg = po.Decoder(protocol).decode(relation)
    if not isinstance(msg, po.Relation):
        raise ProtocolError("a stored relation is not a Relation message", offset=0)
    return relation_info(msg, types)


def stored_changes(
    protocol: int,
    info: RelationInfo,
    data: bytes,
    *,
    commit_text: str,
    xid: int,
    at: datetime,
    first_ordinal: int,
) -> Iterator[Change]:
    """The changes of stored raw pgoutput messages (per change: 8-byte LSN, 4-byte length, the message),
    exactly as the assembler made them when they streamed: ordinals count on from ``first_ordinal``."""
    decode = po.Decoder(protocol).decode
    commit_lsn = parse_lsn(commit_text)
    view = memoryview(data)
    pos, end, ordinal = 0, len(view), first_ordinal
    while pos < end:
        lsn = int.from_bytes(view[pos : pos + 8], "big")
        size = int.from_bytes(view[pos + 8 : pos + 12], "big")
        pos += 12
        msg = decode(view[pos : pos + size])
        pos += size
        if isinstance(msg, po.Insert):
            op, new, old, old_kind = "insert", msg.new, None, None
        elif isinstance(msg, po.Update):
            op, new, old, old_kind = "update", msg.new, msg.old, msg.old_kind
        elif isinstance(msg, po.Delete):
            op, new, old, old_kind = "delete", None, msg.old, msg.old_kind
        else:
            raise ProtocolError(f"stored changes hold a {type(msg).__name__} message", offset=pos, lsn=lsn)
        yield Change(op, lsn, commit_lsn, commit_text, xid, at, info, ordinal, new, old, old_kind)
        ordinal += 1


def decode_chunk(row: Any, types: TypeRegistry) -> EventBatch:
    """The events of one ``event_chunks`` row, exactly as the direct path would have made them."""
    info = decode_relation(row["protocol"], row["relation"], types)
    rules: dict[str, list[tuple[str, str, int]]] = json.loads(row["rules"])
    policies = {op: [_Plain(*rule) for rule in matched] for op, matched in rules.items()}
    commit_text, xid, at = row["commit_lsn"], row["xid"], row["commit_time"]
    table = row["table_name"]
    batch = EventBatch()
    count = 0
    for change in stored_changes(
        row["protocol"], info, row["data"], commit_text=commit_text, xid=xid, at=at,
        first_ordinal=row["first_ordinal"],
    ):  # fmt: skip
        count += 1
        matched = policies.get(change.op)
        if matched:
            op, lsn, ordinal = change.op, change.lsn, change.ordinal
            payload = change.payload_json()
            for policy in matched:
                batch.add(batch.group_id(policy, op, table, commit_text, xid, at), lsn, ordinal, payload)
    if count != row["changes"]:
        raise ProtocolError(
            f"event chunk {row['id']} holds {count} changes, not {row['changes']}", offset=len(row["data"])
        )
    return batch


class Expander:
    """Expands chunks in order while fewer than ``ahead`` ungated runs are pending.

    ``resolve`` looks up user-defined types by OID in the source database's catalog (the ingest's)."""

    def __init__(
        self,
        store: StateStore,
        types: TypeRegistry,
        resolve: Callable[[Sequence[int]], Awaitable[None]],
        *,
        ahead: int,
    ) -> None:
        self.store = store
        self.types = types
        self.resolve = resolve
        self.ahead = ahead
        self.wake = asyncio.Event()  # set by ingest after it stored chunks
        # Cleared by ingest in the middle of a bulk transaction: on a small machine expanding would
        # compete for the CPU with the stream it has to keep up with.
        self.free = asyncio.Event()
        self.free.set()
        self.stats = ExpandStats()

    async def expand_available(self) -> bool:
        """Expand chunks until none is left or enough runs wait.  Returns whether chunks remain."""
        while True:
            if await self.store.runs_ahead(self.ahead) >= self.ahead:
                return (
                    await self.store.next_chunk() is not None
                    or await self.store.next_backfill_chunk() is not None
                )
            row = await self.store.next_chunk()
            if row is not None:
                await self.expand(row)
                continue
            row = await self.store.next_backfill_chunk()
            if row is None:
                return False
            await self.expand_backfill(row)

    async def expand(self, row: Any) -> int:
        """Expand one chunk row; returns the events inserted."""
        relation = po.Decoder(row["protocol"]).decode(row["relation"])
        if isinstance(relation, po.Relation):
            unknown = self.types.unknown(c.type_oid for c in relation.columns)
            if unknown:
                await self.resolve(unknown)
        batch = decode_chunk(row, self.types)
        inserted = await self.store.expand_chunk(row["id"], batch)
        if inserted is not None:
            self.stats.chunks += 1
            self.stats.changes += row["changes"]
            self.stats.events_inserted += inserted
        return inserted or 0

    async def expand_backfill(self, row: Any) -> int:
        """Expand one ``backfill_chunks`` row (COPY text lines) into its events; returns those inserted."""

        chunk, shape = chunk_from_row(row)
        unknown = self.types.unknown(c[1] for c in shape.columns)
        if unknown:
            await self.resolve(unknown)
        info = relation_info(shape.relation(), self.types)
        lines = bytes(chunk.data).split(b"\n")
        events: list[tuple[str, str, str | None]] = []
        for start in range(0, len(lines), EXPAND_SLICE_ROWS):
            piece = b"\n".join(lines[start : start + EXPAND_SLICE_ROWS])
            events += chunk_events(
                piece, info, chunk.key_positions, None, chunk.rule, chunk.backfill_id, chunk.read_at
            )
            await asyncio.sleep(0)  # let the ingest's other tasks run: a backfill's next chunk, the reader
        inserted = await self.store.expand_backfill_chunk(row["id"], chunk, events)
        if inserted is not None:
            self.stats.chunks += 1
            self.stats.changes += chunk.rows
            self.stats.events_inserted += inserted
        return inserted or 0

    async def run(self) -> None:
        """Expand forever: right after ingest stores chunks, and while held back, every EXPAND_POLL_S."""
        while True:
            self.wake.clear()
            await self.free.wait()  # not while ingest streams a bulk transaction: leave it the CPU
            backlog = await self.expand_available()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EXPAND_POLL_S if backlog else EXPAND_IDLE_POLL_S):
                    await self.wake.wait()
