"""Writes that many runs make at once, sent together: one statement and one commit for all that are
waiting (a group commit made by the worker), instead of a transaction, a fence and a WAL flush each.
The worker sends its runs' completions and their steps' records this way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from listener.errors import is_transient

T = TypeVar("T")
R = TypeVar("R")

#: Sends a batch; returns each item's outcome, in order: its result, or the exception that is its own.
Send = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]


class Batched(Generic[T, R]):
    """Items submitted by many tasks, sent in batches by one task (:meth:`serve`).  Each submitter waits
    for its own item's outcome.  While one batch is being sent, the next one gathers."""

    def __init__(self) -> None:
        self._items: list[tuple[T, asyncio.Future[R]]] = []
        self._ready = asyncio.Event()

    async def submit(self, item: T) -> R:
        """Send ``item`` with the next batch and return its outcome (or raise its exception).  Cancelling
        the wait does not take the item back: it may still be sent."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._items.append((item, fut))
        self._ready.set()
        return await fut

    async def serve(self, send: Send[T, R]) -> None:
        """Send what is waiting, batch after batch, until cancelled.  A lost connection keeps the batch for
        the next try (the supervisor's backoff: ``send`` must then be safe to repeat); any other failure
        of ``send`` is every item's, and is raised."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._items = self._items, []
            if not batch:
                continue
            try:
                outcomes = await send([item for item, _ in batch])
            except Exception as exc:
                if is_transient(exc):
                    self._items[:0] = batch
                    self._ready.set()
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                raise
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if fut.done():  # its submitter was cancelled
                    continue
                if isinstance(outcome, BaseException):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)
