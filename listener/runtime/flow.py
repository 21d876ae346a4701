"""Flow control: which pending gated runs may start now, a pure decision.

The worker (:meth:`listener.runtime.worker.Worker._claim_gated`) reads, under the claim lock, the pending
gated runs (in claim order: priority, run_after, seq), the running ones, the head of each ordered key and
what is left of each rate limit; :func:`choose` decides, and the worker claims what it chose.  The SQL
only fetches: every rule of the decision is here.

A run is held back when starting it would pass its workflow's ``concurrency``, its workflow's
``rate_limit`` (what is left in the current period), its key's ``key_limit``, or -- for an ordered key --
when it is not the oldest pending or running run of its key, or a run of its key is running.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from listener.rules.config import WorkflowLimit


class Candidate(Protocol):
    """A pending gated run as the claim query returns it (an asyncpg record): ``id``, ``workflow``,
    ``key``, ``key_limit``, ``ordered``, ``seq``."""

    def __getitem__(self, name: str, /) -> Any: ...


def ordered_keys(candidates: Iterable[Candidate]) -> list[str]:
    """The keys whose head (oldest pending or running run) the decision needs: those of ordered runs."""
    return sorted({c["key"] for c in candidates if c["ordered"] and c["key"] is not None})


def choose(
    candidates: Sequence[Candidate],
    *,
    running: Iterable[tuple[str, str | None]],
    heads: Mapping[str, int],
    rate_left: Mapping[str, int],
    limits: Mapping[str, WorkflowLimit],
    free: int,
) -> tuple[list[str], bool]:
    """The ids of the candidates to start, in their order, at most ``free``; and whether a limit held
    some back.  ``running``: (workflow, key) of each running gated run; ``heads``: ordered key -> the
    seq of its oldest pending or running run; ``rate_left``: workflow -> starts left in its rate
    period."""
    by_workflow: Counter[str] = Counter()
    by_key: Counter[str] = Counter()
    for workflow, key in running:
        by_workflow[workflow] += 1
        if key is not None:
            by_key[key] += 1
    left = dict(rate_left)
    chosen: list[str] = []
    held = False
    for c in candidates:
        workflow, key = c["workflow"], c["key"]
        limit = limits.get(workflow)
        if (
            (
                limit is not None
                and limit.concurrency is not None
                and by_workflow[workflow] >= limit.concurrency
            )
            or (workflow in left and left[workflow] <= 0)
            or (key is not None and c["key_limit"] is not None and by_key[key] >= c["key_limit"])
            or (key is not None and c["ordered"] and (heads.get(key) != c["seq"] or by_key[key] > 0))
        ):
            held = True
            continue
        chosen.append(c["id"])
        by_workflow[workflow] += 1
        if key is not None:
            by_key[key] += 1
        if workflow in left:
            left[workflow] -= 1
        if len(chosen) >= free:
            break
    return chosen, held
