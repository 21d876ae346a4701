"""`listener replay`: the change journal's rows evaluated again with the current rules.

`listener replay --from-time T` reads the journal rows committed in a time range (see
:mod:`listener.ingest.journal`), decodes them with the expander's code
(:func:`listener.ingest.expand.stored_changes`), evaluates the *current* rules with ingest's matching
(:func:`listener.rules.events.append_change_events`) and inserts the events under their usual idempotency
keys: existing keys insert nothing, so only new rules and new matches make work -- the semantics of a
rewind, without needing the WAL.  It writes only events and runs, so it works whether `listener run` is
running or not.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from listener.defaults import REPLAY_BATCH_EVENTS, REPLAY_PREFETCH_ROWS
from listener.errors import ListenerError, OutsideJournal, utc_text
from listener.ingest.expand import decode_relation, stored_changes
from listener.ops.rewind_dry_run import RuleCount, tally
from listener.ops.rewind_window import Conn, parse_time
from listener.pg import pgoutput as po
from listener.pg.conninfo import connect_async
from listener.pg.relations import RelationInfo
from listener.pg.types import TypeRegistry
from listener.queue import queries
from listener.queue.batches import EventBatch, RewindPlan
from listener.queue.store import StateStore
from listener.rules.compile import compile_rules
from listener.rules.config import Config
from listener.rules.events import append_change_events

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# `listener replay`: planning (synchronous, psycopg), then reading, matching and inserting (asyncpg).


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """Replay the journal rows committed in [from_time, to_time) (to_time None: up to now) with the rules
    ``rules`` (every table rule, or the one of --rule); ``rerun``: a new run generation for that rule."""

    from_time: datetime
    to_time: datetime | None
    since: datetime  # the journal holds every change committed since then
    rules: tuple[str, ...]
    tables: tuple[str, ...]  # their tables, as journal.table_name names them
    rerun: bool
    webhook: str | None = None  # a webhook's kept requests instead (listener.ops.webhook_replay)


def plan_replay(
    config: Config,
    state: Conn,
    *,
    from_time: str,
    to_time: str | None = None,
    rule: str | None = None,
    rerun: bool = False,
    now: datetime | None = None,
) -> ReplayPlan:
    """Check a replay request against the configuration and the journal; refuse clearly."""
    where = config.source_path or "the configuration"
    table_rules = [r for r in config.rules if r.table is not None]
    if rule is not None:
        names = [r.name for r in config.rules]
        if rule not in names:
            close = difflib.get_close_matches(rule, names, n=1)
            raise ListenerError(
                f"--rule {rule}: no rule named {rule!r} in {where}",
                hint=(f"did you mean {close[0]!r}? " if close else "")
                + ("rules: " + ", ".join(names) if names else "the configuration has no rules"),
            )
        table_rules = [r for r in table_rules if r.name == rule]
        if not table_rules:
            raise ListenerError(
                f"--rule {rule}: rule {rule!r} has no `table:`; the journal holds row changes only",
                hint="replay a rule on a table",
            )
    elif rerun:
        raise ListenerError(
            "--rerun needs --rule: it makes a new run generation for one rule's changes",
            hint="e.g. listener replay --from-time 2d --rule summarize_ticket --rerun",
        )
    if not config.journal.enabled:
        raise ListenerError(
            f"nothing to replay: {where} sets no change journal (`journal:`)",
            hint="add e.g.\n    journal:\n      keep: 7d\n  and restart `listener run`; from then on it "
            "keeps the rule tables' changes for 7 days (README 'Beyond the window: the change journal')",
        )
    start, end = time_range(from_time, to_time, now=now)
    row = state.execute(queries.get("journal_horizon"), [config.slot]).fetchone()
    if row is None:
        raise ListenerError(
            f"the change journal of slot {config.slot!r} is empty: `listener run` has not run with "
            "`journal:` (or ran without it since)",
            hint="start `listener run` with `journal:` in its configuration; the journal fills from then on",
        )
    since = row[0]
    assert isinstance(since, datetime)
    if start < since:
        raise OutsideJournal(
            f"--from-time {from_time!r} ({utc_text(start)})", since=since, keep=config.journal.keep
        )
    return ReplayPlan(
        from_time=start,
        to_time=end,
        since=since,
        rules=tuple(r.name for r in table_rules),
        tables=tuple(sorted({f"{r.schema_name}.{r.table_name}" for r in table_rules})),
        rerun=rerun,
    )


def time_range(
    from_time: str, to_time: str | None, *, now: datetime | None, option: str = "--from-time"
) -> tuple[datetime, datetime | None]:
    """[start, end) of a replay (end None: up to now); refused when the end is not after the start."""
    start = parse_time(from_time, now=now, option=option)
    end = parse_time(to_time, now=now, option="--to-time") if to_time is not None else None
    if end is not None and end <= start:
        raise ListenerError(
            f"--to-time {to_time!r} ({utc_text(end)}) is not after "
            f"{option} {from_time!r} ({utc_text(start)})",
            hint=f"give a --to-time after {option}, or leave it out (up to now)",
        )
    return start, end


@dataclass
class ReplayResult:
    plan: ReplayPlan
    dry_run: bool
    rows: int = 0  # journal rows read
    changes: int = 0
    rules: dict[str, RuleCount] = field(default_factory=dict)
    inserted: int = 0  # events inserted (0 in a dry run)
    reruns: int = 0  # runs of the --rerun generation made
    generation: int | None = None

    def runs(self, rule: str) -> int:
        """New runs: one per new event, or for the --rerun rule one per matching change."""
        count = self.rules[rule]
        return count.events if self.plan.rerun else count.new

    def to_json(self) -> dict[str, Any]:
        return {
            "webhook": self.plan.webhook,
            "from_time": self.plan.from_time,
            "to_time": self.plan.to_time,
            "journal_since": self.plan.since,
            "dry_run": self.dry_run,
            "rerun": self.plan.rules[0] if self.plan.rerun else None,
            "generation": self.generation,
            "journal_rows": self.rows,
            "changes": self.changes,
            "events_inserted": self.inserted,
            "runs_rerun": self.reruns,
            "rules": {
                name: {**asdict(count), "new": count.new, "runs": self.runs(name)}
                for name, count in self.rules.items()
            },
        }


_COUNT_ROWS = queries.get("count_journal")
_READ_ROWS = queries.get("read_journal")
# The generation of a replay's --rerun: above every run of the rule (any commit LSN), and above every
# rewind's rerun of it (sql/queries/rewind.sql, next_generation).
_NEXT_GENERATION = queries.query("next_generation")
NO_END_LSN = (1 << 64) - 1  # a --rerun applies to every change replayed


class ReplaySink:
    """Where a replay's events go: batches of ``REPLAY_BATCH_EVENTS``, each counted per rule (new or
    already present) and, unless a dry run, inserted; with ``--rerun`` as a new generation of its rule."""

    def __init__(self, state: StateStore, result: ReplayResult) -> None:
        self.state = state
        self.result = result
        self.rewind: RewindPlan | None = None
        self.batch = EventBatch()

    async def start(self) -> None:
        """Take the --rerun's generation (above every run of the rule), unless a dry run."""
        plan, result = self.result.plan, self.result
        if plan.rerun and not result.dry_run:
            generation = await self.state.pool.fetchval(
                _NEXT_GENERATION.asyncpg,
                *_NEXT_GENERATION.args(
                    rule=plan.rules[0], event_key=None, up_to=None, finished_too=True, **{"from": None}
                ),
            )
            result.generation = int(generation)
            self.rewind = RewindPlan(0, 0, NO_END_LSN, None, plan.rules[0], result.generation, plan.rules)
        self.batch = EventBatch(rewind=self.rewind)

    async def flush(self, *, unless_below: int = 0) -> None:
        """Count and insert the batch (when it holds at least ``unless_below`` events)."""
        batch, result = self.batch, self.result
        if len(batch) < unless_below:
            return
        await tally(self.state, batch, result.rules)
        if not result.dry_run and batch.payload:
            inserted, _, reruns = await self.state.insert_events(batch)
            result.inserted += inserted
            result.reruns += reruns
        self.batch = EventBatch(rewind=self.rewind)


async def replay(
    config: Config,
    source_dsn: str,
    state_dsn: str,
    plan: ReplayPlan,
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Read the plan's journal rows, decode them as the expander does, evaluate the current rules as ingest
    does and insert the events (existing keys insert nothing); with ``dry_run`` only count.  ``progress``
    is called with (changes read, changes in the range), first with 0 before the first row."""
    result = ReplayResult(plan, dry_run)
    result.rules = {name: RuleCount() for name in plan.rules}
    wanted = frozenset(plan.rules)
    catalog = await connect_async(source_dsn)
    state = await StateStore.connect(state_dsn, schema=config.state_schema, slot=config.slot, max_size=2)
    try:
        rules = await compile_rules(config, catalog)
        types = TypeRegistry()
        relations: dict[tuple[int, bytes], RelationInfo] = {}
        sink = ReplaySink(state, result)
        await sink.start()
        args = (plan.from_time, plan.to_time, list(plan.tables))
        count = await state.pool.fetchrow(_COUNT_ROWS, *args)
        assert count is not None

        total = int(count[1])
        if progress is not None:
            progress(0, total)
        async with state.pool.acquire() as conn, conn.transaction(readonly=True):
            async for row in conn.cursor(_READ_ROWS, *args, prefetch=REPLAY_PREFETCH_ROWS):
                info = relations.get((row["protocol"], row["relation"]))
                if info is None:
                    info = await _relation(row["protocol"], row["relation"], types, catalog)
                    relations[(row["protocol"], row["relation"])] = info
                by_op = rules.for_table(info.schema, info.name)
                for change in stored_changes(
                    row["protocol"], info, row["data"], commit_text=row["commit_lsn"], xid=row["xid"],
                    at=row["commit_time"], first_ordinal=row["first_ordinal"],
                ):  # fmt: skip
                    matched = tuple(r for r in by_op.get(change.op, ()) if r.name in wanted)
                    if matched:
                        append_change_events(sink.batch, change, matched)
                result.rows += 1
                result.changes += row["changes"]
                if progress is not None:
                    progress(result.changes, total)
                await sink.flush(unless_below=REPLAY_BATCH_EVENTS)
        await sink.flush()
    finally:
        await state.close()
        await catalog.close()
    return result


async def _relation(
    protocol: int, relation: bytes, types: TypeRegistry, catalog: psycopg.AsyncConnection[Any]
) -> RelationInfo:
    """A stored Relation message's table, its user-defined types looked up in the source catalog first."""
    msg = po.Decoder(protocol).decode(relation)
    if isinstance(msg, po.Relation):
        unknown = types.unknown(c.type_oid for c in msg.columns)
        if unknown:
            await types.resolve(catalog, unknown)
    return decode_relation(protocol, relation, types)


def run_replay(
    config: Config,
    source_dsn: str,
    state_dsn: str,
    plan: ReplayPlan,
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    return asyncio.run(replay(config, source_dsn, state_dsn, plan, dry_run=dry_run, progress=progress))


def describe(plan: ReplayPlan) -> str:
    end = utc_text(plan.to_time) if plan.to_time is not None else "now"
    if plan.webhook is not None:
        return f"replay: webhook {plan.webhook}'s requests received from {utc_text(plan.from_time)} to {end}"
    return f"replay: journal changes committed from {utc_text(plan.from_time)} to {end}"
