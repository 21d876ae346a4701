"""The retention of finished work (``runs: keep:``): the slot's leader prunes old done and cancelled runs.

Every ``RUNS_PRUNE_INTERVAL_S`` the pruner goes through the workflows that have finished runs (one index
probe each) and, for each one whose period is not ``forever``, deletes the events whose runs are all done
or cancelled and finished more than that period ago, with those runs, their steps and attempts: at most
``RUNS_PRUNE_BATCH_ROWS`` runs per transaction, oldest first, found through an index that holds finished
runs only (sql/0011_run_retention.sql), so the pending runs the workers claim are never read.

Only the leader prunes (it runs beside the stream, like the journal's pruner): one pruner per slot, and
none on a standby or in a `listener worker`.  Two at once -- an old leader's last pass while a new one
starts -- are harmless all the same: candidates are locked ``FOR UPDATE SKIP LOCKED``, so each run is
deleted by one of them, and an event is deleted only when every run of it is prunable.

An event goes whole or not at all.  Dead runs are never pruned: they wait for an operator (``listener
retry`` or a fix); nor is an event that has one, or a run still pending or running (a retry's new
generation).  Once pruned, the event's idempotency key is forgotten: a redelivery of the same event would
run again.  The configuration therefore refuses a period shorter than the windows through which listener
delivers events again (``retain.duration``, ``journal.keep``, a webhook's ``keep``; README "Retention of
finished runs").
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from listener.defaults import RUNS_PRUNE_BATCH_ROWS, RUNS_PRUNE_INTERVAL_S
from listener.logs import fields
from listener.queue.store import StateStore
from listener.rules.config import Config
from listener.supervise import sleep_unless

logger = logging.getLogger(__name__)

# Before the first run a pass looks at (no finished_at is older): where the keyset of a pass starts.
FIRST_BATCH = (datetime(1, 1, 1, tzinfo=UTC), "")


@dataclass(frozen=True, slots=True)
class RunRetention:
    """``runs:`` as the pruner uses it: the default period and the workflows' own (seconds; None: for
    ever)."""

    keep_s: float | None
    workflows: dict[str, float | None] = field(default_factory=dict)
    interval_s: float = RUNS_PRUNE_INTERVAL_S
    batch_rows: int = RUNS_PRUNE_BATCH_ROWS

    @classmethod
    def from_config(cls, config: Config) -> RunRetention | None:
        """The policy of ``config``, or None when it never prunes anything."""
        runs = config.runs
        if not runs.enabled:
            return None
        workflows = {name: runs.keep_of(name) for name in runs.workflows}
        return cls(runs.keep_s, workflows, interval_s=RUNS_PRUNE_INTERVAL_S, batch_rows=RUNS_PRUNE_BATCH_ROWS)

    def keep_of(self, workflow: str) -> float | None:
        return self.workflows.get(workflow, self.keep_s)


@dataclass(slots=True)
class Pruned:
    """What one pass deleted."""

    events: int = 0
    runs: int = 0


async def prune_once(store: StateStore, policy: RunRetention, stop: asyncio.Event | None = None) -> Pruned:
    """One pass: every workflow's finished runs older than its period, a batch per transaction."""
    total = Pruned()
    for workflow in await store.finished_workflows():
        keep_s = policy.keep_of(workflow)
        if keep_s is None:
            continue
        after = FIRST_BATCH
        while stop is None or not stop.is_set():
            events, runs, last = await store.prune_runs(workflow, keep_s, after, batch_rows=policy.batch_rows)
            total.events += events
            total.runs += runs
            if last is None:  # fewer than a batch were due: this workflow is done
                break
            after = last
    return total


async def prune_forever(store: StateStore, policy: RunRetention, stop: asyncio.Event) -> None:
    """:func:`prune_once` every ``interval_s`` until ``stop``.  Runs supervised (the leader's
    ``ingest-run-retention`` task): a lost connection is retried after a backoff (finished runs only
    accumulate meanwhile), any other failure stops the service."""
    while not stop.is_set():
        pruned = await prune_once(store, policy, stop)
        if pruned.runs:
            logger.info(
                "runs: pruned %d finished run(s) of %d event(s) older than runs: keep:",
                pruned.runs,
                pruned.events,
                extra=fields(slot=store.slot),
            )
        await sleep_unless(stop, policy.interval_s)
