"""JournalBuffer (listener.ingest.journal): the change journal's rows, filled from the golden capture.

The buffer keeps each Insert/Update/Delete message as the server sent it, one row per transaction and
table; a row closes at ``chunk_bytes`` (a huge transaction makes several, with consecutive ordinals), when
its table changes shape (``close``) and at the commit (``take``).
"""

from __future__ import annotations

import struct

from listener.ingest.journal import JournalBuffer
from listener.pg import pgoutput as po
from listener.pg.assembler import Assembler
from listener.pg.types import TypeRegistry
from listener.queue.batches import RawChunk
from tests.unit.test_reader import captured

_head = struct.Struct(">QI")


class Replay:
    """Feeds the v1 capture to an assembler and a journal buffer the way the reader does: the buffer
    first (before the assembler counts the change), Relation messages kept as sent."""

    def __init__(self, chunk_bytes: int | None = None) -> None:
        self.decoder = po.Decoder(1)
        self.assembler = Assembler(TypeRegistry())
        self.relations: dict[int, bytes] = {}
        self.journal = JournalBuffer(1, chunk_bytes=chunk_bytes)
        self.full: list[RawChunk] = []  # rows handed back by add (full)
        self.closed: list[RawChunk] = []  # rows closed by a Relation message (the table's shape)
        self.committed: list[tuple[po.Begin, list[RawChunk]]] = []  # rows taken at each commit
        self.sent: dict[int, list[tuple[int, bytes]]] = {}  # table -> its changes as sent
        self.shapes: dict[int, list[bytes]] = {}  # table -> its Relation messages as sent

    def feed(self, lsn: int, data: bytes) -> None:
        if data[0] in b"IUD":
            oid = struct.unpack_from(">I", data, 1)[0]
            self.sent.setdefault(oid, []).append((lsn, data))
            row = self.journal.add(lsn, data, self.assembler, self.relations)
            if row is not None:
                self.full.append(row)
        msg = self.decoder.decode(data)
        if isinstance(msg, po.Relation):
            self.relations[msg.oid] = data
            self.shapes.setdefault(msg.oid, []).append(data)
            row = self.journal.close(msg.oid)  # the table changed shape: its later changes in a new row
            if row is not None:
                self.closed.append(row)
        begin = self.assembler.begin
        self.assembler.feed(lsn, msg)
        if isinstance(msg, po.Commit):
            assert begin is not None
            self.committed.append((begin, self.journal.take()))


def changes_of(row: RawChunk) -> list[tuple[int, bytes]]:
    """A journal row's (LSN, message) pairs, read back from its data."""
    data, out, at = bytes(row.data), [], 0
    while at < len(data):
        lsn, size = _head.unpack_from(data, at)
        at += _head.size
        out.append((lsn, data[at : at + size]))
        at += size
    return out


def test_one_row_per_transaction_and_table_holding_its_changes_as_sent() -> None:
    replay = Replay()
    for lsn, data in captured("v1"):
        replay.feed(lsn, data)
    assert not replay.full  # nothing reached the 1 MB bound
    # the server re-sends Relation messages mid-transaction (t_parent, t_child, t_alter): rows closed
    assert replay.closed
    kept: dict[int, list[tuple[int, bytes]]] = {}
    for row in replay.closed:
        kept.setdefault(row.relation_oid, []).extend(changes_of(row))
    for begin, taken in replay.committed:
        oids = [row.relation_oid for row in taken]
        assert len(oids) == len(set(oids))  # one row per table in a transaction
        for row in taken:
            assert row.commit_lsn == begin.final_lsn and row.xid == begin.xid
            assert row.changes == len(changes_of(row))
            assert bytes(row.relation) in replay.shapes[row.relation_oid]  # a shape its table had
            assert row.protocol == 1 and row.rules == ""
            kept.setdefault(row.relation_oid, []).extend(changes_of(row))
    # every change kept once, byte for byte (rows closed early were gathered first: compare by LSN)
    assert {oid: sorted(v) for oid, v in kept.items()} == {oid: sorted(v) for oid, v in replay.sent.items()}


def test_the_changes_of_one_table_in_one_transaction_share_a_row() -> None:
    replay = Replay()
    for lsn, data in captured("v1"):
        replay.feed(lsn, data)
    sizes = sorted(row.changes for _, taken in replay.committed for row in taken)
    assert sizes[-2:] == [3, 4]  # t_full: insert, update, delete; t_index: insert, two updates, delete


def test_a_row_closes_at_chunk_bytes_and_the_next_continues_the_ordinals() -> None:
    replay = Replay(chunk_bytes=200)
    for lsn, data in captured("v1"):
        replay.feed(lsn, data)
    assert replay.full  # some rows filled up before their commit
    for row in replay.full:
        assert len(row.data) >= 200
    # per transaction and table, the rows (full ones, then the one taken at the commit) cover the
    # ordinals 0..n-1 without gap or overlap
    rows = [*replay.full, *replay.closed, *(row for _, taken in replay.committed for row in taken)]
    spans: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for row in rows:
        spans.setdefault((row.commit_lsn, row.relation_oid), []).append((row.first_ordinal, row.changes))
    for found in spans.values():
        found.sort()
        expected = 0
        for first, count in found:
            assert first == expected and count > 0
            expected += count
    assert sum(row.changes for row in rows) == sum(len(v) for v in replay.sent.values())


def test_close_hands_back_the_open_row_of_one_table_and_take_the_rest() -> None:
    replay = Replay()
    messages = list(captured("v1"))
    # up to the t_full transaction's update: its insert is in an open row
    names = {}
    for lsn, data in messages:
        msg = po.Decoder(1).decode(data) if data[0] == ord("R") else None
        if isinstance(msg, po.Relation):
            names[msg.oid] = msg.name
        if data[0] == ord("U") and names.get(struct.unpack_from(">I", data, 1)[0]) == "t_full":
            break
        replay.feed(lsn, data)
    journal = replay.journal
    (oid,) = journal.open
    assert names[oid] == "t_full"
    row = journal.close(oid)
    assert row is not None and row.changes == 1 and not journal.open
    assert journal.close(oid) is None  # nothing open any more
    assert journal.take() == []


def test_a_change_outside_a_transaction_is_left_to_the_assembler() -> None:
    replay = Replay()
    insert = next((lsn, data) for lsn, data in captured("v1") if data[0] == ord("I"))
    assert replay.journal.add(*insert, replay.assembler, replay.relations) is None
    assert not replay.journal.open
