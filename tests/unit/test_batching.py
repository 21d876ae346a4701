"""Batched (listener.runtime.batching): what many runs submit at once goes in one batch; each submitter
gets its own outcome; a lost connection keeps the batch for the supervisor's retry."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from listener.runtime.batching import Batched


class Sender:
    """Records the batches it is sent; doubles each item, and refuses negative ones as theirs alone."""

    def __init__(self, fail_with: list[BaseException] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_with = fail_with or []

    async def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        if self.fail_with:
            raise self.fail_with.pop(0)
        return [ValueError(f"negative: {i}") if i < 0 else 2 * i for i in items]


async def test_what_is_submitted_meanwhile_goes_in_one_batch_with_each_outcome_its_own() -> None:
    batched: Batched[int, int] = Batched()
    send = Sender()
    server = asyncio.create_task(batched.serve(send))
    try:
        results = await asyncio.gather(*(batched.submit(i) for i in (1, 2, -3, 4)), return_exceptions=True)
        assert results[:2] == [2, 4] and results[3] == 8
        assert isinstance(results[2], ValueError) and str(results[2]) == "negative: -3"
        assert send.batches == [[1, 2, -3, 4]]  # one batch
        assert await batched.submit(5) == 10  # the next one
        assert send.batches[-1] == [5]
    finally:
        server.cancel()


async def test_a_lost_connection_keeps_the_batch_for_the_retry() -> None:
    batched: Batched[int, int] = Batched()
    send = Sender(fail_with=[ConnectionResetError("lost")])
    submitted = asyncio.gather(batched.submit(1), batched.submit(2))
    with pytest.raises(ConnectionResetError):  # the supervisor sees it and retries serve
        await batched.serve(send)
    server = asyncio.create_task(batched.serve(send))
    try:
        assert list(await submitted) == [2, 4]
        assert send.batches == [[1, 2], [1, 2]]
    finally:
        server.cancel()


async def test_any_other_failure_of_the_sender_is_every_items_and_is_raised() -> None:
    batched: Batched[int, int] = Batched()
    send = Sender(fail_with=[RuntimeError("the statement is wrong")])
    submitted = asyncio.gather(batched.submit(1), batched.submit(2), return_exceptions=True)
    with pytest.raises(RuntimeError):
        await batched.serve(send)
    assert [str(r) for r in await submitted] == ["the statement is wrong"] * 2


async def test_a_cancelled_submitter_does_not_disturb_the_others() -> None:
    batched: Batched[int, int] = Batched()
    send = Sender()
    gone = asyncio.create_task(batched.submit(1))
    kept = asyncio.create_task(batched.submit(2))
    await asyncio.sleep(0)  # both submitted
    gone.cancel()
    server = asyncio.create_task(batched.serve(send))
    try:
        assert await kept == 4
        assert send.batches == [[1, 2]]  # a cancelled wait does not take the item back
    finally:
        server.cancel()
