"""The queue between ingest's reader and writer is bounded in bytes, not only in batches."""

from __future__ import annotations

import asyncio

import pytest

from listener.ingest.source import BatchQueue
from listener.queue.batches import EventBatch


class Quiet:
    """A source that acknowledges nothing."""

    name = "test"

    async def run(self, out: BatchQueue) -> None:
        return None

    def committed(self, batch: EventBatch) -> None:
        return None


SOURCE = Quiet()


def batch(nbytes: int) -> EventBatch:
    b = EventBatch()
    b.nbytes = nbytes
    return b


async def test_a_put_waits_while_the_queued_bytes_would_pass_the_bound() -> None:
    queue = BatchQueue(max_batches=10, max_bytes=100)
    big = batch(150)
    await queue.put(big, SOURCE)  # one batch always goes through, however big
    assert queue.held == 150
    second = asyncio.create_task(queue.put(batch(10), SOURCE))
    await asyncio.sleep(0.05)
    assert not second.done()  # waits for the writer
    got = await queue.get()
    assert got is not None and got[0] is big and got[1] is SOURCE
    queue.written(big)
    await asyncio.wait_for(second, 5)
    assert queue.held == 10
    await asyncio.wait_for(queue.room(), 5)  # under the bound: room at once


async def test_small_batches_pass_up_to_the_bound() -> None:
    queue = BatchQueue(max_batches=10, max_bytes=100)
    for _ in range(5):
        await asyncio.wait_for(queue.put(batch(20), SOURCE), 5)
    assert queue.held == 100 and queue.qsize() == 5


async def test_ending_a_writer_that_fails_with_the_queue_full_raises_its_failure() -> None:
    """A lost connection ends the reader and the writer at once: the writer, failing, takes no more
    batches from its full queue; ending it must raise its failure, never wait for room in that queue
    (the session then never ended: ingest stopped streaming for good after a server restart)."""
    queue = BatchQueue(max_batches=1)
    await queue.put(batch(10), SOURCE)  # full: the writer was busy committing the batch before

    async def writer() -> None:
        await asyncio.sleep(0.05)
        raise ConnectionResetError("the state database's connection was lost")

    task = asyncio.create_task(writer())
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(queue.end(task), 10)
