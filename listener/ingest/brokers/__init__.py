"""The brokers a queue source reads (listener.ingest.queues): one module per client, each imported only
when a ``queues:`` entry uses it.  Each implements :class:`Broker`; here too is what they deliver."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(slots=True)
class Message:
    """One message as a broker delivered it."""

    part: str  # where its position is kept: "topic:partition" (Kafka), the stream (Redis, JetStream)
    position: tuple[int, ...]  # orders like the broker's: (offset,), (ms, seq), (stream sequence,)
    label: str  # the position as text, in keys and logs: "orders:3:1234", "tasks:1700000000000-0"
    topic: str  # the Kafka topic, the Redis stream, the NATS subject
    body: bytes
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    sent_at: datetime | None = None
    token: Any = None  # what the broker needs to acknowledge it


class Broker(Protocol):
    """One broker connection of a queue source (listener.ingest.brokers)."""

    async def start(self, positions: Mapping[str, tuple[int, ...]]) -> None:
        """Connect, and have the broker deliver what comes after ``positions`` (by part; a part without
        one: from where the broker's group or consumer stands, else from its first message)."""

    async def fetch(self, limit: int, wait_s: float) -> list[Message]:
        """Up to ``limit`` messages, in order per part, waiting up to ``wait_s`` for the first."""

    async def ack(self, messages: Sequence[Message]) -> None:
        """``messages`` are durable: acknowledge them (commit the offsets, XACK, ack)."""

    async def extend(self, messages: Sequence[Message]) -> None:
        """``messages`` are still being made durable: keep the broker from delivering them again."""

    async def hold(self) -> None:
        """Fetching is stopped (back-pressure), for ``QUEUE_BACKLOG_POLL_S`` more: keep the session (a
        Kafka consumer's place in its group) without taking messages."""

    async def close(self) -> None: ...


def header_value(value: bytes | str) -> Any:
    """A header's value as the rules and events see it: text when it is UTF-8 without NUL, else
    ``{"base64": ...}`` (a binary header is kept, not a reason to park the message)."""
    if isinstance(value, str):
        text: str | None = value
    else:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is not None and "\x00" not in text:
        with contextlib.suppress(UnicodeEncodeError):
            text.encode("utf-8")
            return text
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return {"base64": base64.b64encode(raw).decode("ascii")}


def header_bytes(value: Any) -> bytes:
    """A header's bytes back from :func:`header_value`'s form (text, or ``{"base64": ...}``)."""
    if isinstance(value, dict):
        return base64.b64decode(str(value["base64"]))
    return str(value).encode("utf-8")


def shown_position(position: Sequence[int]) -> str:
    """A position as its broker shows it: a Kafka offset ``1234``, a Redis entry id ``1700000000000-3``, a
    JetStream stream sequence ``42``."""
    return "-".join(map(str, position))


def position_label(part: str, position: Sequence[int]) -> str:
    """A message's label, as every broker makes it (and `listener replay --queue` again,
    for the same event keys): ``part:position shown``."""
    return f"{part}:{shown_position(position)}"
