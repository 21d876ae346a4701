"""Change → events: which rules an event goes to, its payload, and every idempotency key, in one place.

A source hands this module what happened (a row change, a logical decoding message, a NOTIFY, a row read
by a backfill) and an :class:`EventSink` (the queue's ``EventBatch``); it evaluates the rules and adds one
event per matching rule, each with its idempotency key (invariant 2):

- a CDC change: ``rule/commit LSN/ordinal`` (assembled by the queue's insert from the event's group: the
  same text :func:`cdc_key` makes);
- a logical decoding message: the same, with the transaction's commit LSN (or the message's own LSN when
  it is not transactional) and its ordinal among its prefix's;
- a NOTIFY: ``rule/<session>/ordinal``, the session standing in for a commit LSN;
- a backfill row: ``rule/backfill/<backfill id>/<primary key>`` (:func:`backfill_key`).

Pure and synchronous: no IO, no asyncio.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from listener.errors import RuleEvaluationError
from listener.pg import pgoutput as po
from listener.pg.changes import Change
from listener.pg.copytext import Key, line_values
from listener.pg.lsn import format_lsn
from listener.pg.relations import RelationInfo
from listener.pg.values import carried_as_text, json_or_text
from listener.rules.compile import CompiledRule, RuleSet, changed_matches
from listener.rules.predicate import EvaluationError, MissingValue

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class RunPolicy(Protocol):
    """What an event's group takes from its rule (a :class:`CompiledRule`, or a backfill's stand-in)."""

    @property
    def name(self) -> str: ...
    @property
    def workflow(self) -> str: ...
    @property
    def gated(self) -> bool: ...
    @property
    def key_limit(self) -> int | None: ...
    @property
    def ordered(self) -> bool: ...
    @property
    def priority(self) -> int: ...
    @property
    def source(self) -> str: ...


class EventSink(Protocol):
    """Where events go: the queue's ``EventBatch`` (or a test's list)."""

    def add(self, group: int, lsn: int, ordinal: int, payload: str, key: str | None = None) -> None: ...

    def group_id(
        self,
        rule: RunPolicy,
        op: str | None,
        table: str | None,
        commit: str,
        xid: int | None,
        at: datetime | None,
    ) -> int: ...


def event_key(rule: str, commit: str, ordinal: int) -> str:
    """The idempotency key of a streamed event: ``rule/commit/ordinal``, ``commit`` being the commit LSN's
    text (for NOTIFY, the ``notify/<session>`` that stands in for it).  The queue's insert builds the same
    text in SQL (sql/queries/events.sql, ``insert_events``); tests/integration/test_event_keys.py checks
    that they agree."""
    return f"{rule}/{commit}/{ordinal}"


def cdc_key(rule: str, commit_lsn: int, ordinal: int) -> str:
    """The idempotency key of a CDC change's (or a transactional message's) event."""
    return event_key(rule, format_lsn(commit_lsn), ordinal)


def key_text(key: Key) -> str:
    """The primary key in an event key: the value's text, or a JSON array of them for several columns."""
    texts = [b.decode() if b is not None else None for b in key]
    if len(texts) == 1:
        return texts[0] or ""
    return json.dumps(texts, ensure_ascii=False, separators=(",", ":"))


def backfill_key(rule: str, backfill_id: int, key: Key) -> str:
    """The idempotency key of a backfill event: a pure function of the backfill and the row's key."""
    return f"{rule}/backfill/{backfill_id}/{key_text(key)}"


def chunk_events(
    lines: bytes,
    info: RelationInfo,
    key_positions: Sequence[int],
    rule: CompiledRule | None,
    rule_name: str,
    backfill_id: int,
    read_at: datetime,
) -> list[tuple[str, str, str | None]]:
    """(idempotency key, payload, run key) for each row that passes the rule's ``when:``.  The payload is
    a CDC insert's (``new`` the row, ``old`` null), or the rule's ``payload:`` shape.  ``rule`` None: a
    rule that needs nothing from the row (the expander's case)."""
    out: list[tuple[str, str, str | None]] = []
    for line in lines.split(b"\n"):
        if not line:
            continue
        values = line_values(line)
        key = backfill_key(rule_name, backfill_id, tuple(values[p] for p in key_positions))
        change = Change("read", 0, 0, "", 0, read_at, info, 0, values)
        if rule is None:
            out.append((key, change.payload_json(), None))
            continue
        new, old = raw_rows(change)
        if rule.predicate is not None and not rule_matches(rule, change, new, old):
            continue
        payload = shaped_payload(rule, change, new, old) if rule.payload else change.payload_json()
        out.append((key, payload, run_key(rule, change) if rule.gated else None))
    return out


def run_key(rule: CompiledRule, change: Change) -> str | None:
    """The flow-control key of a gated rule's run: its key template filled from the row, or by default
    the row's key (the primary key, see ``TableInfo.row_key``: from the new row, or the old row of a
    delete), the same for a live change and a backfill read.  Scoped by rule.  None when the row has no
    such values (then the run is limited by workflow only)."""
    if rule.key_fields:
        rows = {"new": change.new_json() or {}, "old": change.old_json() or {}}
        parts = [rows[side].get(column) for side, column in rule.key_fields]
    else:
        rel = change.relation
        assert rel is not None
        row = (change.new_json() if change.op != "delete" else change.old_json()) or {}
        parts = [row.get(column) for column in rule.key_columns or rel.key_columns]
    if not parts or all(part is None for part in parts):
        return None
    return rule.name + ":" + "|".join("" if part is None else str(part) for part in parts)


def append_change_events(
    batch: EventSink, change: Change, matched: tuple[CompiledRule, ...], *, huge: bool = False
) -> None:
    rel = change.relation
    assert rel is not None
    whole: str | None = None  # the payload of rules without `payload:`, made once
    rows: tuple[Row | None, Row | None] | None = None  # the raw new and old values, by column
    commit = change.commit_text
    for rule in matched:
        if rule.filters or rule.payload:
            if rows is None:
                rows = raw_rows(change)
            if rule.filters and not rule_matches(rule, change, *rows):
                continue
        if rule.payload:
            assert rows is not None
            payload = shaped_payload(rule, change, *rows)
        else:
            if whole is None:
                whole = change.payload_json(huge=huge)
            payload = whole
        batch.add(
            batch.group_id(rule, change.op, rel.qualified, commit, change.xid, change.commit_time),
            change.lsn,
            change.ordinal,
            payload,
            run_key(rule, change) if rule.gated else None,
        )


Row = dict[str, bytes | None]


def raw_rows(change: Change) -> tuple[Row | None, Row | None]:
    """The new and old values the server sent, by column name, as PostgreSQL text (None: SQL NULL).

    What the server did not send is left out, so a predicate that needs it raises instead of guessing:
    an unchanged TOAST value is taken from the old row when that row is whole, and an update without an
    old tuple (replica identity DEFAULT, key unchanged) knows only the key columns' old values."""
    rel = change.relation
    assert rel is not None
    unchanged = po.UNCHANGED_TOAST
    old: Row | None = None
    if change.old is not None:
        key_only = change.old_kind == "K"
        old = {
            c.name: v  # type: ignore[misc]
            for c, v in zip(rel.columns, change.old, strict=False)
            if v is not unchanged and (c.is_key or not key_only)
        }
    elif change.op == "update" and change.new is not None:
        old = {
            c.name: v  # type: ignore[misc]
            for c, v in zip(rel.columns, change.new, strict=False)
            if c.is_key and v is not unchanged
        }
    new: Row | None = None
    if change.new is not None:
        new = {}
        for c, v in zip(rel.columns, change.new, strict=False):
            if v is unchanged:
                if old is not None and c.name in old:
                    new[c.name] = old[c.name]
            else:
                new[c.name] = v  # type: ignore[assignment]
    return new, old


def rule_matches(rule: CompiledRule, change: Change, new: Row | None, old: Row | None) -> bool:
    """Whether ``change`` passes the rule's ``changed:`` and ``when:``; a value the rule needs but the
    server did not send raises :class:`RuleEvaluationError` (never a guess)."""
    if rule.changed and change.op == "update":
        try:
            if not changed_matches(rule, new, old):
                return False
        except MissingValue as exc:
            raise _failed(rule, change, f"changed: needs {exc}", _FULL_HINT) from exc
    if rule.predicate is None:
        return True
    try:
        return bool(rule.predicate.matches(new, old, change.commit_time))
    except MissingValue as exc:
        raise _failed(rule, change, f"when: needs {exc}, which the server did not send", _FULL_HINT) from exc
    except EvaluationError as exc:
        raise _failed(
            rule, change, f"when: {exc}", "correct `when:` (e.g. cast to bigint or numeric), then restart"
        ) from exc


_FULL_HINT = (
    "ALTER TABLE <table> REPLICA IDENTITY FULL, so updates and deletes carry the whole old row; then restart"
)


def shaped_payload(rule: CompiledRule, change: Change, new: Row | None, old: Row | None) -> str:
    """``{"data": {name: value, ...}, "unchanged_toast": [...]}``: the columns ``payload:`` picks, renamed,
    rendered like the whole-row payload; a value the server did not send is listed, never null."""
    rel = change.relation
    assert rel is not None
    data: dict[str, Any] = {}
    missing: list[str] = []
    as_text: list[str] = []
    for out, side, column in rule.payload:
        row = new if side == "new" else old
        if row is None:
            data[out] = None
        elif column not in row:
            missing.append(out)
        else:
            value = row[column]
            data[out] = None if value is None else rel.columns[rel.positions[column]].render(value)
            if carried_as_text(data[out]):
                as_text.append(out)
    if as_text:
        return _dumps({"data": data, "unchanged_toast": missing, "as_text": as_text})
    return _dumps({"data": data, "unchanged_toast": missing})


def append_message_events(
    batch: EventSink,
    msg: po.Message,
    begin: po.Begin | None,
    ordinal: int,
    matched: tuple[CompiledRule, ...],
) -> None:
    """Events of a logical decoding message.  Transactional: keyed by the commit LSN and the message's
    ordinal among its prefix's in the transaction; otherwise by the message's own LSN."""
    content = _message_text(msg.content)
    fields = {"content": content, "prefix": msg.prefix, "transactional": msg.transactional}
    payload = _dumps({**_content_data(content), **fields})
    commit = format_lsn(begin.final_lsn if begin is not None else msg.lsn)
    xid = begin.xid if begin is not None else msg.xid
    at = begin.commit_time if begin is not None else None
    for rule in matched:
        batch.add(batch.group_id(rule, "message", None, commit, xid, at), msg.lsn, ordinal, payload)


def _message_text(content: bytes) -> str:
    """A message's content as text, or as ``\\x`` hex when it is not text: not UTF-8, or holding NUL
    (which no PostgreSQL text holds, and the queue's jsonb refuses)."""
    if b"\0" not in content:
        with contextlib.suppress(UnicodeDecodeError):
            return content.decode()
    return "\\x" + content.hex()


def _content_data(content: str) -> dict[str, Any]:
    """A message's or a NOTIFY's content as JSON, for ``ctx.event.data``: None when it is not JSON; the
    text itself, listed in ``as_text``, when it is JSON Python cannot carry (too deep, a huge number)."""
    data, as_text = json_or_text(content)
    return {"data": data, "as_text": ["data"]} if as_text else {"data": data}


def append_notify_events(
    batch: EventSink, channel: str, content: str, pid: int, session: str, ordinal: int, rules: RuleSet
) -> None:
    payload = _dumps({**_content_data(content), "content": content, "channel": channel, "pid": pid})
    for rule in rules.channels.get(channel, ()):
        batch.add(batch.group_id(rule, "notify", None, session, None, None), 0, ordinal, payload)


def _failed(rule: CompiledRule, change: Change, what: str, hint: str) -> RuleEvaluationError:
    return RuleEvaluationError(
        rule.name, change.table, lsn=change.lsn, commit_lsn=change.commit_lsn, what=what, hint=hint
    )


def append_truncate_events(batch: EventSink, change: Change, rules: RuleSet) -> None:
    """A truncate of several tables is one change per table: each rule's event uses its table's ordinal."""
    payload = _dumps(
        {
            "new": None,
            "old": None,
            "unchanged_toast": [],
            "tables": [r.qualified for r, _ in change.truncated],
        }
    )
    commit = change.commit_text
    for rel, ordinal in change.truncated:
        for rule in rules.match(rel.schema, rel.name, "truncate"):
            gid = batch.group_id(rule, "truncate", rel.qualified, commit, change.xid, change.commit_time)
            batch.add(
                gid, change.lsn, ordinal, payload, f"{rule.name}:{rel.qualified}" if rule.gated else None
            )
