"""The watermarks of a backfill, on the reader's side: synchronous hooks the reader calls in stream order.

Each chunk is read between a low and a high mark (logical decoding messages ``listener.backfill``, content
``<id>:<n>:<session>:low|high``; see :mod:`listener.ingest.backfill` for the algorithm).  A
:class:`Watermarks` holds the open windows: at the low mark it starts noting the keys of live changes to
the table, at the high mark it drops those rows from the chunk and returns the chunk for the writer;
:meth:`Watermarks.committed` tells it the writer made a chunk durable.  No IO here.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from listener.errors import ListenerError
from listener.ingest.backfill_table import TableShape
from listener.pg import pgoutput as po
from listener.pg.changes import Change
from listener.pg.copytext import Key, line_key
from listener.pg.relations import RelationInfo
from listener.queue.batches import BackfillChunk
from listener.rules.events import chunk_events

if TYPE_CHECKING:
    from listener.rules.compile import CompiledRule

PREFIX = "listener.backfill"  # the watermark messages
OPEN = ("pending", "running")

EMIT = "SELECT pg_logical_emit_message(false, %s, %s)"


def high_mark(content: str, *, flush: bool) -> str:
    """The high mark, ending the chunk's transaction in the same round trip.  ``content`` is our own token
    ([0-9a-z:]), so it can be written into the statement."""
    assert re.fullmatch(r"[0-9a-z:]+", content)
    return (
        f"SELECT pg_logical_emit_message(false, '{PREFIX}', '{content}'{', true' if flush else ''}); COMMIT"
    )


@dataclass(slots=True)
class Plan:
    """An open row of ``backfills``."""

    id: int
    rule: str
    table_name: str
    where_sql: str | None
    last_key: list[str] | None
    chunks: int


@dataclass(slots=True)
class Window:
    """One chunk between its watermarks: the keys of the live changes seen there, and the chunk's rows."""

    token: str
    plan: Plan
    rule: CompiledRule
    shape: TableShape
    info: RelationInfo
    ops: frozenset[str]  # live operations that supersede a chunk row
    seq: int
    positions: dict[int, list[int]] = field(default_factory=dict)  # relation OID -> key positions
    seen: set[Key] = field(default_factory=set)
    data: bytes = b""
    rows: int = 0
    last_key: list[str] | None = None
    final: bool = False
    read_at: datetime | None = None
    durable: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


class Watermarks:
    """The open windows of a replication session, and the reader's hooks on them."""

    def __init__(self) -> None:
        self.windows: dict[str, Window] = {}  # token -> window, from before its low mark to its high mark
        self.watched: dict[int, list[Window]] = {}  # relation OID -> windows open in the stream
        self.session = secrets.token_hex(4)
        self.rows_read = 0
        self._pending: dict[tuple[int, int], Window] = {}  # chunks handed to the writer, by (id, seq)

    def reset(self) -> None:
        """A new replication session: marks written for the old one are ignored."""
        self.windows.clear()
        self.watched.clear()
        self._pending.clear()
        self.session = secrets.token_hex(4)

    def note(self, change: Change) -> None:
        """A live change of a table with an open window: remember its key (new and old)."""
        rel = change.relation
        assert rel is not None
        for window in self.watched.get(rel.oid, ()):
            if change.op not in window.ops:
                continue
            positions = window.positions.get(rel.oid)
            if positions is None:
                positions = window.positions[rel.oid] = [rel.positions[k] for k in window.shape.key_columns]
            for values in (change.new, change.old):
                if values is not None:
                    window.seen.add(tuple(values[p] for p in positions))  # type: ignore[misc]

    def note_raw(self, payload: bytes, decoder: po.Decoder, relations: dict[int, RelationInfo]) -> None:
        """The same for a change the reader keeps raw (compact storage): decode just to read its key."""
        msg = decoder.decode(payload)
        if isinstance(msg, po.Insert):
            change = Change("insert", 0, 0, "", 0, _EPOCH, relations[msg.relation_oid], 0, msg.new)
        elif isinstance(msg, po.Update):
            change = Change("update", 0, 0, "", 0, _EPOCH, relations[msg.relation_oid], 0, msg.new, msg.old)
        elif isinstance(msg, po.Delete):
            change = Change("delete", 0, 0, "", 0, _EPOCH, relations[msg.relation_oid], 0, None, msg.old)
        else:
            return
        self.note(change)

    def mark(self, msg: po.Message) -> BackfillChunk | None:
        """A watermark: the low one opens its window, the high one closes it and returns the chunk to
        commit.  Marks of another session (before a restart) or another process are ignored."""
        token, _, kind = msg.content.decode(errors="replace").rpartition(":")
        window = self.windows.get(token)
        if window is None:
            return None
        if kind == "low":
            self.watched.setdefault(window.shape.oid, []).append(window)
            return None
        open_ = self.watched.get(window.shape.oid, [])
        if window in open_:
            open_.remove(window)
        del self.windows[token]
        try:
            return self._chunk(window, msg.lsn)
        except ListenerError as exc:  # the rule cannot be evaluated for a row: that backfill fails
            window.error = exc.message
            window.durable.set()
            return None

    def _chunk(self, window: Window, lsn: int) -> BackfillChunk:
        plan, rule, data = window.plan, window.rule, window.data
        rows, dropped = window.rows, 0
        if window.seen and data:
            kept = bytearray()
            positions = window.shape.key_positions
            for line in data.split(b"\n"):
                if not line:
                    continue
                if line_key(line, positions) in window.seen:
                    dropped += 1
                else:
                    kept += line
                    kept += b"\n"
            data, rows = bytes(kept), rows - dropped
        assert window.read_at is not None
        chunk = BackfillChunk(
            backfill_id=plan.id, seq=window.seq, rule=rule.name, workflow=rule.workflow,
            priority=rule.priority, gated=rule.gated, key_limit=rule.key_limit, ordered=rule.ordered,
            table_name=rule.qualified_table,
            columns=json.dumps([[c[0], c[1]] for c in window.shape.columns]),
            key_positions=window.shape.key_positions, lsn=lsn, read_at=window.read_at,
            last_key=window.last_key, rows_read=window.rows, rows_dropped=dropped, final=window.final,
            data=data, rows=rows,
        )  # fmt: skip
        if rule.needs_values:  # in stream order, now: when:, payload:, flow-control keys
            chunk.events = chunk_events(
                data, window.info, chunk.key_positions, rule, rule.name, plan.id, window.read_at
            )
            chunk.data, chunk.rows = b"", 0
        self._pending[(plan.id, window.seq)] = window
        return chunk

    def committed(self, chunks: Sequence[BackfillChunk]) -> None:
        """The writer committed these chunks (and their progress)."""
        for chunk in chunks:
            window = self._pending.pop((chunk.backfill_id, chunk.seq), None)
            if window is not None:
                self.rows_read += chunk.rows_read
                window.durable.set()


_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
