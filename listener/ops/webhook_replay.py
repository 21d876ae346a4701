"""`listener replay --webhook NAME`: a webhook's kept requests evaluated again with the current rules.

A webhook with ``keep:`` keeps each verified request (``webhook_requests``, sql/0009_webhook_requests.sql)
for that long.  The replay reads those received in a time range, evaluates the webhook's current rules on
them exactly as the live handler does (:class:`listener.http.webhooks.Request`) and inserts the events
under their usual keys, ``rule/webhook/delivery id/0``: existing keys insert nothing, so only new rules
and new matches make work.  ``--rerun`` (with ``--rule``) makes a new run generation of each of that
rule's events instead.  It writes only events and runs: `listener run` may be running or not.
"""

from __future__ import annotations

import asyncio
import difflib
import json
from collections.abc import Callable
from datetime import datetime

from listener.defaults import REPLAY_BATCH_EVENTS, REPLAY_PREFETCH_ROWS
from listener.errors import ListenerError
from listener.http.webhooks import Request
from listener.ops.replay import ReplayPlan, ReplayResult, ReplaySink, time_range
from listener.ops.rewind_dry_run import RuleCount
from listener.ops.rewind_window import Conn
from listener.queue import queries
from listener.queue.store import StateStore
from listener.rules.compile import RuleSet
from listener.rules.config import Config

_COUNT = queries.get("count_webhook_requests")
_READ = queries.get("read_webhook_requests")


def plan_webhook_replay(
    config: Config,
    state: Conn,
    *,
    webhook: str,
    from_time: str,
    to_time: str | None = None,
    rule: str | None = None,
    rerun: bool = False,
    now: datetime | None = None,
) -> ReplayPlan:
    """Check a webhook replay request against the configuration; refuse clearly."""
    where = config.source_path or "the configuration"
    hooks = {hook.name: hook for hook in config.webhooks}
    hook = hooks.get(webhook)
    if hook is None:
        close = difflib.get_close_matches(webhook, list(hooks), n=1)
        raise ListenerError(
            f"--webhook {webhook}: no webhook named {webhook!r} in {where}",
            hint=(f"did you mean {close[0]!r}? " if close else "")
            + ("webhooks: " + ", ".join(hooks) if hooks else "the configuration has no `webhooks:`"),
        )
    if hook.keep is None:
        raise ListenerError(
            f"nothing to replay: webhook {webhook!r} keeps no requests (no `keep:`)",
            hint=f"add e.g. `keep: 7d` to webhook {webhook!r} and restart `listener run`; from then on its "
            "requests are kept for 7 days",
        )
    names = [r.name for r in config.rules if r.webhook == webhook]
    if rule is not None and rule not in names:
        raise ListenerError(
            f"--rule {rule}: webhook {webhook!r} has no rule named {rule!r}",
            hint="its rules: " + (", ".join(names) or "none"),
        )
    if rerun and rule is None:
        raise ListenerError(
            "--rerun needs --rule: it makes a new run generation for one rule's events",
            hint=f"e.g. listener replay --webhook {webhook} --since 2d --rerun --rule "
            + (names[0] if names else "RULE"),
        )
    start, end = time_range(from_time, to_time, now=now, option="--since")
    row = state.execute(
        "SELECT min(received_at) FROM webhook_requests WHERE webhook = %s", [webhook]
    ).fetchone()
    since = row[0] if row is not None and row[0] is not None else start
    assert isinstance(since, datetime)
    return ReplayPlan(
        from_time=start,
        to_time=end,
        since=since,
        rules=(rule,) if rule is not None else tuple(names),
        tables=(),
        rerun=rerun,
        webhook=webhook,
    )


async def replay_webhook(
    config: Config,
    state_dsn: str,
    plan: ReplayPlan,
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Evaluate the plan's rules on the kept requests in its range and insert the events (existing keys
    insert nothing); with ``dry_run`` only count.  ``progress``: (requests read, requests in the range)."""
    assert plan.webhook is not None
    result = ReplayResult(plan, dry_run)
    result.rules = {name: RuleCount() for name in plan.rules}
    wanted = [r for r in config.rules if r.name in plan.rules]
    rules = RuleSet(wanted, config.limits, tables={}, locate=config.field_place).webhooks.get(
        plan.webhook, ()
    )
    state = await StateStore.connect(state_dsn, schema=config.state_schema, slot=config.slot, max_size=2)
    try:
        sink = ReplaySink(state, result)
        await sink.start()
        args = (plan.webhook, plan.from_time, plan.to_time)
        count = await state.pool.fetchrow(_COUNT, *args)
        assert count is not None
        total = int(count["requests"])
        if progress is not None:
            progress(0, total)

        async with state.pool.acquire() as conn, conn.transaction(readonly=True):
            async for row in conn.cursor(_READ, *args, prefetch=REPLAY_PREFETCH_ROWS):
                request = Request(
                    plan.webhook,
                    row["delivery_id"],
                    row["body"],
                    json.loads(row["headers"]),
                    json.loads(row["query"]),
                    row["method"],
                    row["path"],
                )
                received = row["received_at"]
                for rule, payload, run_key in request.events(rules, received):
                    group = sink.batch.group_id(rule, None, None, request.key, None, received)
                    sink.batch.add(group, 0, 0, payload, run_key)
                result.rows += 1
                result.changes += 1
                if progress is not None:
                    progress(result.rows, total)
                await sink.flush(unless_below=REPLAY_BATCH_EVENTS)
        await sink.flush()
    finally:
        await state.close()
    return result


def run_webhook_replay(
    config: Config,
    state_dsn: str,
    plan: ReplayPlan,
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    return asyncio.run(replay_webhook(config, state_dsn, plan, dry_run=dry_run, progress=progress))
