"""pgoutput messages → TxnBegin, Change…, TxnCommit: the transaction framing of the stream."""

from __future__ import annotations

from listener.errors import ProtocolError
from listener.pg import pgoutput as po
from listener.pg.changes import Change, TxnBegin, TxnCommit
from listener.pg.lsn import format_lsn
from listener.pg.relations import RelationInfo, relation_info
from listener.pg.types import TypeRegistry


class Assembler:
    """Turns pgoutput messages into TxnBegin, Change…, TxnCommit.  Pure and synchronous.

    Changes are handed out one at a time as they arrive (never a whole transaction in a list: a
    transaction may be gigabytes).  A Relation message replaces the cached description of its table, so
    an ALTER TABLE mid-stream applies to the changes after it.
    """

    def __init__(self, types: TypeRegistry) -> None:
        self.types = types
        self.relations: dict[int, RelationInfo] = {}
        self._begin: po.Begin | None = None
        self._commit_text = ""
        self._ordinals: dict[int, int] = {}

    @property
    def in_transaction(self) -> bool:
        return self._begin is not None

    @property
    def begin(self) -> po.Begin | None:
        """The Begin message of the open transaction."""
        return self._begin

    def relation(self, msg: po.Relation) -> RelationInfo:
        info = relation_info(msg, self.types)
        self.relations[msg.oid] = info
        return info

    def feed(self, lsn: int, msg: po.PgOutputMessage) -> TxnBegin | Change | TxnCommit | None:
        kind = type(msg)
        if kind is po.Insert or kind is po.Update or kind is po.Delete:
            return self._change(lsn, msg)  # type: ignore[arg-type]
        if kind is po.Begin:
            assert isinstance(msg, po.Begin)
            if self._begin is not None:
                raise ProtocolError("Begin inside an open transaction", offset=0, lsn=lsn)
            self._begin = msg
            self._commit_text = format_lsn(msg.final_lsn)
            self._ordinals = {}
            return TxnBegin(msg.final_lsn, msg.xid, msg.commit_time)
        if kind is po.Commit:
            assert isinstance(msg, po.Commit)
            if self._begin is None:
                raise ProtocolError("Commit without Begin", offset=0, lsn=lsn)
            self._begin = None
            return TxnCommit(msg.commit_lsn, msg.end_lsn, msg.commit_time)
        if kind is po.Relation:
            assert isinstance(msg, po.Relation)
            self.relation(msg)
            return None
        if kind is po.Truncate:
            assert isinstance(msg, po.Truncate)
            return self._truncate(lsn, msg)
        if kind in (po.StreamStart, po.StreamStop, po.StreamCommit, po.StreamAbort):
            raise ProtocolError(
                f"unexpected {kind.__name__}: listener does not request streaming", offset=0, lsn=lsn
            )
        return None  # Origin, Type, Message (handled by callers that want them), two-phase (not requested)

    def _txn(self, lsn: int) -> po.Begin:
        if self._begin is None:
            raise ProtocolError("row change outside a transaction", offset=0, lsn=lsn)
        return self._begin

    def peek_ordinal(self, oid: int) -> int:
        """The ordinal the next change of table ``oid`` in the open transaction will get."""
        return self._ordinals.get(oid, 0)

    def set_next_ordinal(self, oid: int, ordinal: int) -> None:
        """The next change of table ``oid`` in the open transaction takes ``ordinal`` (changes counted
        elsewhere, e.g. kept raw in a compact chunk)."""
        self._ordinals[oid] = ordinal

    def next_ordinal(self, oid: int) -> int:
        """The ordinal of the next change of table ``oid`` in the open transaction."""
        n = self._ordinals.get(oid, 0)
        self._ordinals[oid] = n + 1
        return n

    def _lookup(self, oid: int, lsn: int) -> RelationInfo:
        try:
            return self.relations[oid]
        except KeyError:
            raise ProtocolError(
                f"change for relation OID {oid} before its Relation message", offset=1, lsn=lsn
            ) from None

    def _change(self, lsn: int, msg: po.Insert | po.Update | po.Delete) -> Change:
        begin = self._txn(lsn)
        rel = self._lookup(msg.relation_oid, lsn)
        ordinal = self.next_ordinal(msg.relation_oid)
        commit, text, xid, at = begin.final_lsn, self._commit_text, begin.xid, begin.commit_time
        if type(msg) is po.Insert:
            return Change("insert", lsn, commit, text, xid, at, rel, ordinal, msg.new)
        if type(msg) is po.Update:
            assert isinstance(msg, po.Update)
            return Change("update", lsn, commit, text, xid, at, rel, ordinal, msg.new, msg.old, msg.old_kind)
        assert isinstance(msg, po.Delete)
        return Change("delete", lsn, commit, text, xid, at, rel, ordinal, None, msg.old, msg.old_kind)

    def _truncate(self, lsn: int, msg: po.Truncate) -> Change:
        begin = self._txn(lsn)
        if not msg.relation_oids:
            raise ProtocolError("Truncate of no relation", offset=1, lsn=lsn)
        tables = tuple((self._lookup(oid, lsn), self.next_ordinal(oid)) for oid in msg.relation_oids)
        first, ordinal = tables[0]
        return Change(
            "truncate", lsn, begin.final_lsn, self._commit_text, begin.xid, begin.commit_time, first, ordinal,
            truncated=tables,
        )  # fmt: skip
