"""A Redis stream read through a consumer group (redis-py's asyncio client), for
:class:`listener.ingest.queues.QueueSource`.

An entry's position is its id, ``ms-seq``.  At start the group is created at the stored position (or,
without one, at the stream's beginning), or, if it exists, moved there (``XGROUP SETID``): the entries
after it are delivered again, whatever the group's pending list says.  A group that exists while no
position is stored is moved back to its oldest pending entry, so what an earlier reader left
unacknowledged is read too.  With a stored position, the entries up to it that the group still counts
pending (durable, their acknowledgement lost in a crash) are acknowledged at start: the group is never
set back before them again, so nothing else would, and ``XAUTOCLAIM`` elsewhere would read them twice.
An entry's ``body`` field is its body and its other fields its headers; an
entry without a ``body`` field is read as the JSON object of its fields.  Fetched entries not yet durable
are claimed again every ``QUEUE_EXTEND_S`` (resetting their idle time), so an ``XAUTOCLAIM`` elsewhere does
not take them.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ResponseError

from listener.defaults import QUEUE_CONNECT_TIMEOUT_S
from listener.ingest.brokers import Message, header_value, position_label, shown_position
from listener.rules.config.models import RedisStreamSettings

_BODY = b"body"
_ACK_CHUNK = 1000  # pending entries acknowledged at once at start


def entry_position(entry: bytes | str) -> tuple[int, int]:
    text = entry.decode() if isinstance(entry, bytes) else entry
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


def before(position: tuple[int, int]) -> str:
    """The id just before ``position`` (SETID there delivers ``position`` again)."""
    ms, seq = position
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-18446744073709551615" if ms > 0 else "0"


class RedisStreamBroker:
    def __init__(self, queue: str, settings: RedisStreamSettings) -> None:
        self.queue = queue
        self.settings = settings
        self.consumer = f"listener-{socket.gethostname()}-{os.getpid()}"
        self._client: Any = None

    async def start(self, positions: Mapping[str, tuple[int, ...]]) -> None:
        s = self.settings
        self._client = redis.from_url(
            s.url, socket_connect_timeout=QUEUE_CONNECT_TIMEOUT_S, health_check_interval=30
        )
        stored = positions.get(s.stream)
        start = shown_position(stored) if stored is not None else "0"
        try:
            await self._client.xgroup_create(s.stream, s.group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            if stored is None:
                pending = await self._client.xpending(s.stream, s.group)
                if not pending or not pending.get("pending"):
                    return  # the group's own position: nothing was left unacknowledged
                start = before(entry_position(pending["min"]))
            await self._client.xgroup_setid(s.stream, s.group, start)
        if stored is not None:
            await self._ack_through(start)

    async def _ack_through(self, last: str) -> None:
        """XACK the entries up to ``last`` (included) that the group counts pending."""
        s = self.settings
        while True:
            pending = await self._client.xpending_range(
                s.stream, s.group, min="-", max=last, count=_ACK_CHUNK
            )
            if pending:
                await self._client.xack(s.stream, s.group, *(p["message_id"] for p in pending))
            if len(pending) < _ACK_CHUNK:
                return

    async def fetch(self, limit: int, wait_s: float) -> list[Message]:
        s = self.settings
        reply = await self._client.xreadgroup(
            s.group, self.consumer, {s.stream: ">"}, count=limit, block=max(1, int(wait_s * 1000))
        )
        messages = []
        for _stream, entries in reply or ():
            for entry, values in entries:
                position = entry_position(entry)
                body, headers = _split(values or {})
                messages.append(
                    Message(
                        part=s.stream,
                        position=position,
                        label=position_label(s.stream, position),
                        topic=s.stream,
                        body=body,
                        headers=headers,
                        sent_at=datetime.fromtimestamp(position[0] / 1000, UTC),
                        token=entry,
                    )
                )
        return messages

    async def ack(self, messages: Sequence[Message]) -> None:
        if messages:
            await self._client.xack(self.settings.stream, self.settings.group, *(m.token for m in messages))

    async def extend(self, messages: Sequence[Message]) -> None:
        if messages:
            s = self.settings
            await self._client.xclaim(
                s.stream, s.group, self.consumer, 0, [m.token for m in messages], justid=True
            )

    async def hold(self) -> None:
        """Nothing to do while fetching is stopped: a consumer group keeps no session."""

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _split(values: Mapping[bytes, bytes]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(body, headers) of an entry's fields: its ``body`` field and the others, or, without one, the JSON
    object of all of them."""
    names = [(name.decode("utf-8", "backslashreplace"), value) for name, value in values.items()]
    if _BODY in values:
        return values[_BODY], [(name, value) for name, value in names if name != "body"]
    whole = {name: header_value(value) for name, value in names}
    return json.dumps(whole, ensure_ascii=False).encode(), []
