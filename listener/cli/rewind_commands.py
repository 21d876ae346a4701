"""`listener rewind` and `replay`: evaluating the rules again on changes already read."""

from __future__ import annotations

import sys

import click

from listener.cli import views
from listener.cli.options import (
    EXIT_RUNTIME,
    Options,
    databases,
    err_console,
    load,
)
from listener.cli.render import dumps, markup_safe, stdout_console
from listener.ops import runs as runs_mod
from listener.pg import conninfo
from listener.rules.config import Config


@click.command()
@click.option("--to-lsn", metavar="LSN", help="Re-read from this WAL position (e.g. 0/16B3748).")
@click.option(
    "--to-time",
    metavar="TIME",
    help="Re-read what committed at or after TIME: ISO 8601, or a duration ago (2h, 90m, 1d).",
)
@click.option(
    "--rerun", metavar="RULE", help="Make one new run per matching change of RULE (a new generation)."
)
@click.option("--dry-run", is_flag=True, help="Count per rule what the rewind would produce; write nothing.")
@click.option("--wait", is_flag=True, help="Wait until `listener run` has finished the rewind.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: one JSON object.")
@click.pass_obj
def rewind(
    opts: Options,
    to_lsn: str | None,
    to_time: str | None,
    rerun: str | None,
    dry_run: bool,
    wait: bool,
    as_json: bool,
) -> None:
    """Re-read the retained stream from an earlier position and evaluate every rule again.

    Events whose idempotency keys exist are skipped, so only new rules and new matches make work.  The
    target must lie within the retention window (`retain:`; `listener status` shows it).  The rewind is
    recorded, and `listener run` carries it out: at once if it is running, else when it starts, with the
    rules it runs (restart it first after changing the configuration).

    --rerun RULE makes, for each change of RULE in the range, one new run (id KEY#N, N fixed by this
    rewind), also for events that already ran.  --dry-run re-reads the range on a temporary copy of the
    slot and prints, per rule, the events it holds, how many already exist, and the runs it would make.
    """
    from listener.ops import rewind as rw
    from listener.ops import rewind_dry_run

    config = load(opts)
    with (
        databases(opts, config) as (dsn, state_dsn),
        conninfo.connection(dsn) as source,
        runs_mod.connect(state_dsn, config.state_schema) as state,
    ):
        target = rw.plan(config, source, state, to_lsn=to_lsn, to_time=to_time, rerun=rerun)
        for warning in target.warnings:
            err_console.print(
                f"[yellow]warning:[/yellow] {markup_safe(warning)}: a rewind re-reads only what was published"
                " when the change was written",
                highlight=False,
            )
        if dry_run:
            result = rewind_dry_run.run_dry(config, dsn, state_dsn, target)
            if as_json:
                click.echo(dumps(result.to_json()))
            else:
                views.print_dry_run(stdout_console(), result)
            return
        recorded = rw.record(config, source, state, target)
        err_console.print(markup_safe(rw.describe(target, recorded)), highlight=False)
        if target.slot_active_pid is not None:
            err_console.print(
                f"the running listener (PID {target.slot_active_pid}) starts it now, with the rules it runs",
                highlight=False,
            )
        else:
            err_console.print("`listener run` starts it when it starts", highlight=False)
        click.echo(recorded.id)
        if wait:
            err_console.print(
                f"waiting for rewind {recorded.id} to finish "
                "(Ctrl-C stops waiting; the rewind stays recorded)",
                highlight=False,
            )
            row = rw.wait_finished(state, recorded.id)
            views.print_finished(err_console, row)
            if row.error:
                sys.exit(EXIT_RUNTIME)


@click.command()
@click.option(
    "--from-time",
    "--since",
    "from_time",
    metavar="TIME",
    help="Replay what committed (was received) at or after TIME: ISO 8601, or a duration ago (2h, 3d).",
)
@click.option("--to-time", metavar="TIME", help="... and before TIME (default: up to now).")
@click.option(
    "--webhook", metavar="NAME", help="Replay webhook NAME's kept requests (its `keep:`), not the journal."
)
@click.option(
    "--queue", metavar="NAME", help="Retry queue NAME's parked messages instead (`listener queues parked`)."
)
@click.option("--part", metavar="PART", help="With --queue and --position: the part of that message.")
@click.option(
    "--position",
    metavar="POSITION",
    help="With --queue: only the message at POSITION (1234, 1700000000000-0, or PART:POSITION).",
)
@click.option(
    "--rule", metavar="RULE", help="Only this rule (default: every rule on a table, or the webhook)."
)
@click.option(
    "--rerun", is_flag=True, help="With --rule: one new run per matching change (a new generation)."
)
@click.option("--dry-run", is_flag=True, help="Count per rule what the replay would produce; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
@click.pass_obj
def replay(
    opts: Options,
    from_time: str | None,
    to_time: str | None,
    webhook: str | None,
    queue: str | None,
    part: str | None,
    position: str | None,
    rule: str | None,
    rerun: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Evaluate the current rules again on the change journal (`journal:`), beyond the WAL the slot keeps;
    or, with --webhook, on a webhook's kept requests (its `keep:`).

    Reads the journal's changes committed in the range, decodes them as ingest does and inserts the
    events of the rules of this configuration.  Events whose idempotency keys exist are skipped, so only
    new rules and new matches make work (as with `listener rewind`).  Works whether `listener run` is
    running or not: it writes only events and runs.

    --rerun (with --rule) makes, for each change of RULE in the range, one new run (id KEY#N), also for
    events that already ran.  --dry-run prints, per rule, the events the range holds, how many already
    exist, and the runs a replay would make.

    --queue NAME reads queue NAME's parked messages again (`listener queues parked`) with the current
    configuration's `format:` and rules: each one that reads now makes its events, under the keys it would
    have had live, and is marked retried in the same transaction; one that still fails stays parked with
    the reason of now.  Retrying again makes nothing twice.
    """
    from listener.ops import replay as journal

    if queue is not None:
        given = [name for name, value in (("--from-time", from_time), ("--to-time", to_time),
                 ("--webhook", webhook), ("--rule", rule)) if value is not None]  # fmt: skip
        if given or rerun:
            raise click.UsageError(
                f"--queue retries parked messages: it takes no {(given or ['--rerun'])[0]}"
            )
    elif part is not None or position is not None:
        raise click.UsageError("--part and --position go with --queue NAME")
    elif from_time is None:
        raise click.UsageError(
            "Missing option '--from-time' / '--since' (or --queue NAME to retry a queue's parked messages)."
        )
    config = load(opts)
    if queue is not None:
        _replay_queue(opts, config, queue, part, position, dry_run, as_json)
        return
    assert from_time is not None
    if webhook is not None:
        _replay_webhook(opts, config, webhook, from_time, to_time, rule, rerun, dry_run, as_json)
        return
    with (
        databases(opts, config) as (dsn, state_dsn),
        runs_mod.connect(state_dsn, config.state_schema) as state,
    ):
        plan = journal.plan_replay(
            config, state, from_time=from_time, to_time=to_time, rule=rule, rerun=rerun
        )
        if not as_json:
            err_console.print(journal.describe(plan), highlight=False)
        if as_json:
            result = journal.run_replay(config, dsn, state_dsn, plan, dry_run=dry_run)
        else:
            with views.replay_progress(err_console) as progress:
                result = journal.run_replay(config, dsn, state_dsn, plan, dry_run=dry_run, progress=progress)
    if as_json:
        click.echo(dumps(result.to_json()))
    else:
        views.print_replay(stdout_console(), result)


def _replay_webhook(
    opts: Options,
    config: Config,
    webhook: str,
    from_time: str,
    to_time: str | None,
    rule: str | None,
    rerun: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    from listener.ops import replay as journal
    from listener.ops import webhook_replay

    with (
        databases(opts, config) as (_, state_dsn),
        runs_mod.connect(state_dsn, config.state_schema) as state,
    ):
        plan = webhook_replay.plan_webhook_replay(
            config, state, webhook=webhook, from_time=from_time, to_time=to_time, rule=rule, rerun=rerun
        )
    if as_json:
        result = webhook_replay.run_webhook_replay(config, state_dsn, plan, dry_run=dry_run)
        click.echo(dumps(result.to_json()))
        return
    err_console.print(journal.describe(plan), highlight=False)
    with views.replay_progress(err_console, f"webhook {webhook}'s requests", "requests") as progress:
        result = webhook_replay.run_webhook_replay(
            config, state_dsn, plan, dry_run=dry_run, progress=progress
        )
    views.print_replay(stdout_console(), result)


def _replay_queue(
    opts: Options,
    config: Config,
    queue: str,
    part: str | None,
    position: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    from listener.ops import queues as queues_mod
    from listener.rules.catalog import read_tables

    with (
        databases(opts, config) as (dsn, state_dsn),
        conninfo.connection(dsn) as source,
        runs_mod.connect(state_dsn, config.state_schema) as state,
    ):
        plan = queues_mod.plan_queue_replay(config, state, queue=queue, part=part, position=position)
        _, collation = read_tables(source, ())  # the live source compares text in the source's collation
    if as_json:
        result = queues_mod.run_queue_replay(config, state_dsn, plan, collation=collation, dry_run=dry_run)
        click.echo(dumps(result.to_json()))
        return
    with views.replay_progress(err_console, f"queue {queue}'s parked messages", "messages") as progress:
        result = queues_mod.run_queue_replay(
            config, state_dsn, plan, collation=collation, dry_run=dry_run, progress=progress
        )
    views.print_queue_replay(stdout_console(), result)


COMMANDS = [rewind, replay]
