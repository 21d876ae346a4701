"""The hand-off: runs made by the local ingest go to the local workers without a claim.

A worker that has nothing left to claim (its last claim found fewer runs than it had room for) *offers* its
free slots.  The ingest writer passes the offer to ``StateStore.write_batch``: in the batch's own
transaction, the first new ungated runs (as many as the offer has slots) are inserted already claimed by
that worker -- attempt 1, leased, logged in ``attempts`` exactly as a claim would -- and the rest pending as
usual.  Once the transaction commits, the writer *hands* the worker those runs and it starts them.

What a claim guarantees still holds: the run is durable before it starts (it commits with its event and the
checkpoint), it is leased (a worker that dies before or after the hand-off loses the lease and the run is
claimed again, attempt 2), and the attempt fences it.  What it saves is the claim: a statement, a commit and
a round trip per run, and the wake-up's latency.  When the worker is behind (a claim found as many runs
as it had room for, or every slot is busy) it offers nothing and claims in order as before, so the
hand-off never jumps a backlog; only a batch's own leftovers (more new runs than free slots), claimed at
once, may be overtaken by the next batches.  The backlog stays on disk, never in memory: a worker is
offered no more runs than it has free slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Offer:
    """Free slots of ``worker_id``: up to ``slots`` runs, leased for ``lease_seconds``."""

    worker_id: str
    lease_seconds: float
    slots: int


class Handoff(Protocol):
    """What the ingest writer needs of the local worker (listener.runtime.worker.Worker)."""

    def offer(self) -> Offer | None:
        """Free slots reserved for the next batch, or None (behind, stopping, or full)."""

    def hand(self, offer: Offer | None, rows: Sequence[Any], *, left_pending: bool) -> None:
        """After every committed batch that made runs: start the runs committed as claimed under ``offer``
        (claim-shaped rows; none without an offer) and release the rest of its slots.  ``left_pending``:
        the batch also made pending runs, so the worker claims again."""

    def withdraw(self, offer: Offer) -> None:
        """The batch was not committed: release the offer's slots."""
