"""The rewindable window: the slot as the server shows it, the checkpoint, the retained range as the
history records it, a time's position in it; and the parsing of a rewind or replay target (``--to-lsn``,
``--to-time``, ``--from-time``).  Read-only; `listener rewind` and `listener status` read it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from listener.errors import ListenerError
from listener.ops import runs as runs_mod
from listener.pg.lsn import format_lsn, parse_lsn
from listener.pg.slots import SlotState
from listener.queue import queries
from listener.rules.config import parse_duration

Conn = runs_mod.Conn


def parse_time(text: str, *, now: datetime | None = None, option: str = "--to-time") -> datetime:
    """``--to-time``: ISO 8601 (``2025-03-01T12:00:00+00:00``; without an offset, this machine's time
    zone), or a duration ago (``2h``, ``90m``, ``1d``, ``2h ago``)."""
    raw = text.strip()
    ago = raw.removesuffix("ago").strip()
    hint = (
        "write ISO 8601, e.g. 2025-03-01T12:00:00+00:00 (no offset: this machine's time zone), "
        "or a duration ago, e.g. 2h, 90m or 1d"
    )
    out_of_range = ListenerError(
        f"{option} {text!r} is out of range: times go from year 1 to 9999", hint=hint
    )
    try:
        return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(ago))
    except ValueError:
        pass
    except OverflowError:  # further back than year 1
        raise out_of_range from None
    try:
        value = datetime.fromisoformat(raw.replace(" UTC", "+00:00"))
    except ValueError:
        raise ListenerError(f"invalid time {text!r} for {option}", hint=hint) from None
    try:
        return value if value.tzinfo is not None else value.astimezone()
    except (OverflowError, ValueError):  # year 1 in a time zone east of UTC
        raise out_of_range from None


def parse_target_lsn(text: str) -> int:
    try:
        return parse_lsn(text)
    except ListenerError as exc:
        raise ListenerError(f"{exc.message} for --to-lsn", hint=exc.hint) from None


@dataclass(frozen=True, slots=True)
class Window:
    """What `listener rewind` can reach: from ``oldest_lsn`` (committed at ``oldest_time``, when the
    history knows) up to the checkpoint."""

    oldest_lsn: int
    oldest_time: datetime | None
    checkpoint: int


def read_checkpoint(state: Conn, slot: str) -> tuple[int, datetime] | None:
    row = state.execute(queries.get("checkpoint_written"), [slot]).fetchone()
    return (parse_lsn(row[0]), row[1]) if row is not None else None


def window(state: Conn, slot: SlotState, checkpoint: int) -> Window | None:
    """The rewindable range: from the oldest history position the slot still keeps (its confirmed
    position, normally a history row itself) to the checkpoint; None when nothing lies behind it."""
    if slot.confirmed_flush is None or slot.confirmed_flush >= checkpoint:
        return None
    row = state.execute(
        queries.get("oldest_history"), [slot.name, format_lsn(slot.confirmed_flush)]
    ).fetchone()
    if row is None:
        return Window(slot.confirmed_flush, None, checkpoint)
    oldest = parse_lsn(row[0])
    if oldest >= checkpoint:
        return None
    return Window(oldest, row[1], checkpoint)


def lsn_at(state: Conn, slot: str, at: datetime, window: Window) -> tuple[int, datetime] | None:
    """The newest history position within the window whose transactions all committed before ``at``:
    starting there re-reads every transaction committed at or after ``at`` (and a few seconds more)."""
    row = state.execute(queries.get("history_before"), [slot, at, format_lsn(window.oldest_lsn)]).fetchone()
    return (parse_lsn(row[0]), row[1]) if row is not None else None
