"""The worker's side of the hand-off (listener.queue.handoff), as slot accounting: it offers only its free
slots, only while it has nothing to claim, and gets them back when the batch commits or fails."""

from __future__ import annotations

from typing import Any

from listener.runtime.worker import Worker


def idle_worker(concurrency: int) -> tuple[Worker, list[Any]]:
    """A worker whose claim loop found nothing to claim (what ``Worker.run`` sets up), recording starts."""
    worker = Worker("postgresql://unused", schema="listener", concurrency=concurrency)
    started: list[Any] = []
    worker._launch = started.append
    worker._caught_up = True
    return worker, started


def test_an_offer_holds_the_free_slots_until_the_batch_commits_or_fails() -> None:
    worker, started = idle_worker(4)
    offer = worker.offer()
    assert offer is not None and offer.slots == 4 and offer.worker_id == worker.worker_id
    assert worker.offer() is None  # every slot is promised to the batch being written
    worker.withdraw(offer)  # the batch did not commit
    offer = worker.offer()
    assert offer is not None and offer.slots == 4
    rows: list[Any] = [{"id": "a"}]  # what the claim statement's rows hold, in short
    worker.hand(offer, rows, left_pending=False)  # one run handed, three slots back
    assert started == rows and worker.stats.handed == 1
    assert worker.taking_handoff


def test_a_batch_that_left_runs_on_disk_wakes_the_claims_and_a_full_worker_is_offered_nothing() -> None:
    worker, started = idle_worker(2)
    offer = worker.offer()
    assert offer is not None
    rows: list[Any] = [{"id": "a"}, {"id": "b"}]
    worker._busy.update(("a", "b"))  # what launching them does
    worker._wake.clear()
    worker.hand(offer, rows, left_pending=True)
    assert len(started) == 2
    assert worker._wake.is_set()  # the claims take the batch's leftovers at once
    assert worker.offer() is None  # both slots busy: the next batch's runs wait on disk
    worker._free_slot("a")
    offer = worker.offer()
    assert offer is not None and offer.slots == 1


def test_no_offer_from_a_worker_that_is_not_claiming() -> None:
    worker, _ = idle_worker(2)
    worker._launch = None  # stopping, or not started
    assert worker.offer() is None
    worker._launch, worker._caught_up = print, False  # behind: runs wait on disk
    assert worker.offer() is None
