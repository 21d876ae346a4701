"""Row changes: one row change (or a truncate) of a committed transaction, and its renderings.

Two renderings exist:

* typed Python values (``Decimal``, ``datetime``, ``UUID``, ``bytes``, lists, dicts):
  :meth:`Change.new_values`;
* JSON values (see :mod:`listener.pg.values`) — :meth:`Change.new_json`, and the queue's payload as JSON
  text, :meth:`Change.payload_json`.

Columns whose TOASTed value the server did not send are left out and listed in ``unchanged_toast``;
they are never NULL.  An old key tuple ('K') carries only the replica identity columns.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from psycopg import postgres

from listener.defaults import HUGE_TEXT_BYTES, HUGE_TEXT_PIECE_BYTES
from listener.errors import ProtocolError
from listener.pg import pgoutput as po
from listener.pg.lsn import format_lsn
from listener.pg.relations import RelationInfo
from listener.pg.values import (
    BAD_VALUE,
    JsonValue,
    carried_as_text,
    dumps,
    encode_str,
    text_fragment,
    value_fragment,
)

_STAND_IN = re.compile(r'"\\u0000(\d+)"')


@dataclass(slots=True)
class Change:
    """One row change (or a truncate of several tables) inside a committed transaction."""

    op: str
    lsn: int
    commit_lsn: int
    commit_text: str  # commit_lsn as PostgreSQL prints it, formatted once per transaction
    xid: int
    commit_time: datetime
    relation: RelationInfo | None
    ordinal: int
    new: po.TupleData | None = None
    old: po.TupleData | None = None
    old_kind: str | None = None
    # truncate only: every table truncated, with each table's ordinal
    truncated: tuple[tuple[RelationInfo, int], ...] = field(default=())

    @property
    def table(self) -> str | None:
        return self.relation.qualified if self.relation is not None else None

    def _tuple_json(self, values: po.TupleData, *, key_only: bool) -> dict[str, JsonValue]:
        assert self.relation is not None
        out: dict[str, JsonValue] = {}
        for col, value in zip(self.relation.columns, values, strict=True):
            if value is po.UNCHANGED_TOAST or (key_only and not col.is_key):
                continue
            if value is None:
                out[col.name] = None
            elif isinstance(value, bytes):
                out[col.name] = col.render(value)
            else:  # BinaryValue: we never request binary; keep its bytes visible rather than guess
                out[col.name] = "\\x" + value.data.hex()  # type: ignore[union-attr]
        return out

    def _tuple_fragment(self, values: po.TupleData, *, key_only: bool, as_text: set[str]) -> str:
        """JSON text of a tuple, column by column; the same values as :meth:`_tuple_json`.  The names of
        json columns carried as text are added to ``as_text``.

        The hot path of ingest (every event's payload): one comprehension over precomputed
        (key, fragment) pairs."""
        rel = self.relation
        assert rel is not None
        cols = rel.fragments
        if len(values) != len(cols):
            raise ProtocolError(
                f"a tuple of {len(values)} columns for {rel.qualified}, which has {len(cols)}",
                offset=0,
                lsn=self.lsn,
            )
        unchanged = po.UNCHANGED_TOAST
        if rel.has_json:
            parts = []
            for col, v in zip(rel.columns, values, strict=False):  # lengths checked above
                if v is unchanged or (key_only and not col.is_key):
                    continue
                if col.json and v.__class__ is bytes:
                    rendered = col.render(v)
                    if carried_as_text(rendered):
                        as_text.add(col.name)
                    parts.append(col.key + dumps(rendered))
                else:
                    parts.append(col.key + value_fragment(col.fragment, v))
        elif key_only:
            parts = [
                k + value_fragment(f, v)
                for (k, f, is_key), v in zip(cols, values, strict=False)  # lengths checked above
                if is_key and v is not unchanged
            ]
        else:
            parts = [
                k + (f(v) if v.__class__ is bytes else value_fragment(f, v))
                for (k, f, _), v in zip(cols, values, strict=False)
                if v is not unchanged
            ]
        return "{" + ",".join(parts) + "}"

    def payload_json(self, *, huge: bool = False) -> str:
        """``{"new": .., "old": .., "unchanged_toast": [..]}`` as JSON text: the queue's event payload.

        With ``huge`` (a change whose message is megabytes), the same text is made holding less memory
        (see :meth:`_huge_payload_json`).  A value that is not its type's text raises
        :class:`ProtocolError` naming its offset."""
        try:
            return self._huge_payload_json() if huge else self._payload_json()
        except BAD_VALUE as exc:
            raise self._bad_value(exc) from None

    def _huge_payload_json(self) -> str:
        """:meth:`_payload_json` of a huge row, built in one string that grows in place: each text value of
        HUGE_TEXT_BYTES or more is decoded and escaped a piece at a time onto its end.  Memory then holds
        the row's values and the payload, not also a decoded copy, an escaped copy and the concatenations
        of each value (invariant 6)."""
        rel = self.relation
        assert rel is not None
        held: list[bytes] = []  # the huge values, each replaced by NUL and its number in the skeleton

        def stand_in(values: po.TupleData | None) -> po.TupleData | None:
            if values is None or len(values) != len(rel.fragments):
                return values  # (a wrong column count is reported by _payload_json)
            out: list[po.Value] = []
            for (_, fragment, _), v in zip(rel.fragments, values, strict=True):
                if fragment is text_fragment and isinstance(v, bytes) and len(v) >= HUGE_TEXT_BYTES:
                    out.append(b"\0%d" % len(held))
                    held.append(v)
                else:
                    out.append(v)
            return tuple(out)

        skeleton = replace(self, new=stand_in(self.new), old=stand_in(self.old))._payload_json()
        # PostgreSQL text never holds NUL, so "\u0000<n>" as a whole JSON string is only ever a stand-in
        pieces = _STAND_IN.split(skeleton)
        del skeleton
        payload = pieces[0]
        for i in range(1, len(pieces), 2):
            data = memoryview(held[int(pieces[i])])
            decode = codecs.getincrementaldecoder("utf-8")().decode
            payload += '"'
            for start in range(0, len(data), HUGE_TEXT_PIECE_BYTES):
                # in place: ``payload`` is only referenced here (CPython appends to a string so held)
                payload += encode_str(decode(data[start : start + HUGE_TEXT_PIECE_BYTES]))[1:-1]
            payload += encode_str(decode(b"", True))[1:-1] + '"' + pieces[i + 1]
        return payload

    def _payload_json(self) -> str:
        as_text: set[str] = set()
        tuple_fragment = self._tuple_fragment
        new = "null" if self.new is None else tuple_fragment(self.new, key_only=False, as_text=as_text)
        key_only = self.old_kind == "K"
        old = "null" if self.old is None else tuple_fragment(self.old, key_only=key_only, as_text=as_text)
        toast = dumps(self.unchanged_toast()) if self.op == "update" else "[]"
        # one join, not a chain of +: a huge row's text is copied once more, not once per piece
        if as_text:
            assert self.relation is not None
            listed = dumps([c.name for c in self.relation.columns if c.name in as_text])
            return "".join(
                ('{"new":', new, ',"old":', old, ',"unchanged_toast":', toast, ',"as_text":', listed, "}")
            )
        return "".join(('{"new":', new, ',"old":', old, ',"unchanged_toast":', toast, "}"))

    def as_text(self, new: dict[str, JsonValue] | None, old: dict[str, JsonValue] | None) -> list[str]:
        """The json columns of rendered rows whose values are carried as text, in column order."""
        rel = self.relation
        if rel is None or not rel.has_json:
            return []
        return [
            c.name
            for c in rel.columns
            if c.json and any(row and carried_as_text(row.get(c.name)) for row in (new, old))
        ]

    def new_json(self) -> dict[str, JsonValue] | None:
        if self.new is None:
            return None
        try:
            return self._tuple_json(self.new, key_only=False)
        except BAD_VALUE as exc:
            raise self._bad_value(exc) from None

    def old_json(self) -> dict[str, JsonValue] | None:
        if self.old is None:
            return None
        try:
            return self._tuple_json(self.old, key_only=self.old_kind == "K")
        except BAD_VALUE as exc:
            raise self._bad_value(exc) from None

    def _bad_value(self, exc: Exception) -> ProtocolError:
        """The value that could not be rendered, found again column by column, with its offset in the
        change's message (type byte, relation OID, then each tuple: marker, Int16 count, and per
        column a kind byte, and for a value an Int32 length and the bytes)."""
        rel = self.relation
        assert rel is not None
        sides = {"insert": ("new",), "update": ("old", "new"), "delete": ("old",)}.get(self.op, ())
        pos = 5
        for side in sides:
            values = self.new if side == "new" else self.old
            if values is None:
                continue
            pos += 3
            for col, value in zip(rel.columns, values, strict=False):
                if value is None or value is po.UNCHANGED_TOAST:
                    pos += 1
                    continue
                data = value if isinstance(value, bytes) else value.data  # type: ignore[union-attr]
                try:
                    if isinstance(value, bytes):
                        dumps(col.render(value))
                        col.fragment(value)
                except BAD_VALUE as found:
                    type_name = getattr(postgres.types.get(col.type_oid), "name", f"OID {col.type_oid}")
                    return ProtocolError(
                        f"{side} value of column {col.name!r} of {rel.qualified} is not {type_name} text"
                        f" ({data[:40]!r}: {found})",
                        offset=pos + 5,
                        lsn=self.lsn,
                    )
                pos += 5 + len(data)
        return ProtocolError(f"a value of {rel.qualified} cannot be rendered: {exc}", offset=0, lsn=self.lsn)

    def unchanged_toast(self) -> list[str]:
        if self.new is None or self.relation is None:
            return []
        return [
            c.name for c, v in zip(self.relation.columns, self.new, strict=True) if v is po.UNCHANGED_TOAST
        ]

    def new_values(self) -> dict[str, Any] | None:
        """The new row as typed Python values (psycopg's loaders); unchanged TOAST columns left out."""
        if self.new is None or self.relation is None:
            return None
        return {
            c.name: (c.load(v) if isinstance(v, bytes) else v)
            for c, v in zip(self.relation.columns, self.new, strict=True)
            if v is not po.UNCHANGED_TOAST
        }


@dataclass(frozen=True, slots=True)
class TxnBegin:
    commit_lsn: int
    xid: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class TxnCommit:
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


def change_json(change: Change) -> dict[str, JsonValue]:
    """The JSON line `listener tail` prints for a change (format documented in README)."""
    base: dict[str, JsonValue] = {
        "lsn": format_lsn(change.lsn),
        "commit_lsn": format_lsn(change.commit_lsn),
        "xid": change.xid,
        "commit_time": change.commit_time.isoformat(),
    }
    if change.op == "truncate":
        base.update(
            table=None,
            tables=[rel.qualified for rel, _ in change.truncated],
            op="truncate",
            new=None,
            old=None,
            unchanged_toast=[],
        )
        return base
    new, old = change.new_json(), change.old_json()
    base.update(table=change.table, op=change.op, new=new, old=old, unchanged_toast=change.unchanged_toast())
    as_text = change.as_text(new, old)
    if as_text:
        base["as_text"] = as_text
    return base
