"""`listener rewind --dry-run` (and `listener replay --dry-run`'s counting): re-read a range on a
temporary copy of the slot and count, per rule, the events it holds and those already in the queue.
Writes nothing; the slot and a running ingest are not touched."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from listener.ops.rewind import Target
from listener.pg.lsn import format_lsn
from listener.queue import batches, queries, store
from listener.rules.config import Config


@dataclass
class RuleCount:
    events: int = 0  # changes in the range the rule matches: one event each
    present: int = 0  # of those, events already in the queue

    @property
    def new(self) -> int:
        return self.events - self.present


@dataclass
class DryRun:
    from_lsn: int
    up_to: int
    rerun_rule: str | None
    transactions: int = 0
    rules: dict[str, RuleCount] = field(default_factory=dict)

    def runs(self, rule: str) -> int:
        """New runs the rewind would make for ``rule``: one per new event, or, for the rerun rule, one per
        matching change."""
        count = self.rules[rule]
        return count.events if rule == self.rerun_rule else count.new

    def to_json(self) -> dict[str, Any]:
        return {
            "from_lsn": format_lsn(self.from_lsn),
            "up_to": format_lsn(self.up_to),
            "rerun_rule": self.rerun_rule,
            "transactions": self.transactions,
            "rules": {
                name: {**asdict(count), "new": count.new, "runs": self.runs(name)}
                for name, count in self.rules.items()
            },
        }


_EXISTING = queries.get("existing_events")


async def tally(state: store.StateStore, batch: batches.EventBatch, counts: dict[str, RuleCount]) -> None:
    """Count a batch's events per rule, and those whose keys are already in the queue (dry runs)."""
    keys = [batch.event_key(index) for index in range(len(batch))]  # as stored
    rules = [batch.groups[gid - 1][0] for gid in batch.group]
    for rule, n in Counter(rules).items():
        counts[rule].events += n
    if keys:
        for rule, n in await state.pool.fetch(_EXISTING, keys, rules):
            counts[rule].present += n


async def dry_run(config: Config, source_dsn: str, state_dsn: str, target: Target) -> DryRun:
    """Re-read the target's range on a temporary copy of the slot; count, per rule, the events it holds
    and those already present.  Writes nothing; the slot and a running ingest are not touched."""
    from listener.ingest import Ingest
    from listener.queue.batches import EventBatch, RewindPlan
    from listener.queue.store import StateStore

    state = await StateStore.connect(state_dsn, schema=config.state_schema, slot=config.slot, max_size=1)
    result = DryRun(target.from_lsn, target.up_to, target.rerun_rule)
    result.rules = {rule.name: RuleCount() for rule in config.rules}
    try:
        ingest = Ingest.from_config(config, source_dsn=source_dsn, store=state)

        async def count(batch: EventBatch) -> None:
            await tally(state, batch, result.rules)

        plan_ = RewindPlan(0, target.from_lsn, target.up_to, None, target.rerun_rule, None, ())
        await ingest.count_rewind(plan_, count)
        result.transactions = ingest.stats.rewound
    finally:
        await state.close()
    return result


def run_dry(config: Config, source_dsn: str, state_dsn: str, target: Target) -> DryRun:
    return asyncio.run(dry_run(config, source_dsn, state_dsn, target))
