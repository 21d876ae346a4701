"""A NATS JetStream stream read through a durable pull consumer (nats-py), for
:class:`listener.ingest.queues.QueueSource`.

A message's position is its stream sequence.  With a stored position the durable consumer is made anew
to deliver from the sequence after it (a consumer's start cannot be moved), so what it had delivered and
not seen acknowledged is delivered again; without one, an existing durable is used as it stands, else one
is made that delivers the whole stream.  Acknowledgement is explicit, after the commit; a message fetched
and not yet durable is told in progress every ``QUEUE_EXTEND_S`` (resetting its ``ack_wait``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from listener.defaults import QUEUE_CONNECT_TIMEOUT_S, QUEUE_EXTEND_S
from listener.ingest.brokers import Message, position_label
from listener.rules.config.models import JetStreamSettings

_ACK_WAIT_S = 3 * QUEUE_EXTEND_S  # a fetched message is delivered again after this without a word


class JetStreamBroker:
    def __init__(self, queue: str, settings: JetStreamSettings) -> None:
        self.queue = queue
        self.settings = settings
        self._nc: Any = None
        self._sub: Any = None

    async def start(self, positions: Mapping[str, tuple[int, ...]]) -> None:
        s = self.settings
        self._nc = await nats.connect(
            s.url, connect_timeout=QUEUE_CONNECT_TIMEOUT_S, max_reconnect_attempts=0, allow_reconnect=False
        )
        js = self._nc.jetstream()
        stored = positions.get(s.stream)
        config = ConsumerConfig(
            durable_name=s.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=_ACK_WAIT_S,
            filter_subject=s.subject,
            deliver_policy=DeliverPolicy.ALL,
        )
        if stored is not None:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(s.stream, s.durable)
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = stored[0] + 1
            await js.add_consumer(s.stream, config)
        else:
            try:
                await js.consumer_info(s.stream, s.durable)
            except NotFoundError:
                await js.add_consumer(s.stream, config)
        self._sub = await js.pull_subscribe_bind(s.durable, stream=s.stream)

    async def fetch(self, limit: int, wait_s: float) -> list[Message]:
        s = self.settings
        try:
            fetched = await self._sub.fetch(limit, timeout=wait_s)
        except TimeoutError:
            return []
        messages = []
        for msg in fetched:
            meta = msg.metadata
            sequence = int(meta.sequence.stream)
            messages.append(
                Message(
                    part=s.stream,
                    position=(sequence,),
                    label=position_label(s.stream, (sequence,)),
                    topic=msg.subject,
                    body=msg.data or b"",
                    headers=[(name, value.encode()) for name, value in (msg.headers or {}).items()],
                    sent_at=meta.timestamp,
                    token=msg,
                )
            )
        return messages

    async def ack(self, messages: Sequence[Message]) -> None:
        for message in messages:
            await message.token.ack()
        if messages:
            await self._nc.flush()

    async def extend(self, messages: Sequence[Message]) -> None:
        for message in messages:
            await message.token.in_progress()

    async def hold(self) -> None:
        """Nothing to do while fetching is stopped: a pull consumer delivers only when asked."""

    async def close(self) -> None:
        if self._nc is not None:
            nc, self._nc = self._nc, None
            await nc.close()
