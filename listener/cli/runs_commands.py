"""`listener runs`, `runs show`, `retry` and `cancel`: the workflow runs in the queue."""

from __future__ import annotations

import sys

import click

from listener.cli import views
from listener.cli.options import (
    Options,
    err_console,
    load,
    state_connection,
)
from listener.cli.render import dumps, stdout_console, write_json_lines
from listener.defaults import RUNS_LIST_LIMIT
from listener.ops import runs as runs_mod


@click.group(invoke_without_command=True)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(runs_mod.STATUSES),
    help="Only runs with this status (repeat for several).",
)
@click.option("--workflow", help="Only runs of this workflow (module.path:function).")
@click.option("--rule", help="Only runs of events of this rule.")
@click.option("--limit", default=RUNS_LIST_LIMIT, type=click.IntRange(min=1), help="Show at most N runs.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines for scripts (see above).")
@click.pass_context
def runs(
    ctx: click.Context,
    statuses: tuple[str, ...],
    workflow: str | None,
    rule: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first; `listener runs show ID` shows one.

    A run's id is its event's idempotency key, or KEY#N for generation N (made by `listener retry`).
    Duration is from the first start to the finish (to now while unfinished).

    \b
    --json writes one JSON object per line, always with these keys:
      id, event_key, generation, rule, workflow, status, attempt, failures,
      created_at, started_at, finished_at (ISO 8601 in UTC, or null),
      duration_s (seconds or null), last_error (full text or null)
    """
    if ctx.invoked_subcommand is not None:
        return
    opts: Options = ctx.obj
    config = load(opts, required=False)
    with state_connection(opts, config) as conn:
        found = runs_mod.list_runs(conn, statuses=statuses, workflow=workflow, rule=rule, limit=limit)
    if as_json:
        write_json_lines(sys.stdout, found)
    else:
        views.print_runs(stdout_console(), found, limit=limit)


@runs.command("show")
@click.argument("run_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts (see above).")
@click.pass_obj
def runs_show(opts: Options, run_id: str, as_json: bool) -> None:
    """Show a run: its event, steps, attempts, errors and timings.

    \b
    --json writes one JSON object: the keys of `listener runs --json`, plus
      run_after, lease_owner, lease_expires, traceback,
      event {idempotency_key, source, rule, workflow, op, table_name, lsn, commit_lsn,
             xid, commit_time, created_at, payload {new, old, ...}},
      steps [{name, attempt, started_at, finished_at, duration_s, result}],
      attempts [{attempt, worker, started_at, finished_at, duration_s, outcome, error}],
      generations [{id, generation, status}]  (every run of the event)
    """
    config = load(opts, required=False)
    with state_connection(opts, config) as conn:
        detail = runs_mod.show_run(conn, run_id)
    if as_json:
        click.echo(dumps(detail.to_json()))
    else:
        views.print_run(stdout_console(), detail)


@click.command()
@click.argument("run_id", metavar="ID")
@click.option(
    "--rerun", is_flag=True, help="Run the event again as a new generation, from scratch (also when done)."
)
@click.pass_obj
def retry(opts: Options, run_id: str, rerun: bool) -> None:
    """Run a dead or cancelled run again; print the id of the run that will run.

    By default the same run goes back to pending, as a new attempt: the steps it already recorded are
    not run again, and its failure count starts afresh.  With --rerun the event runs again as the next
    generation (id KEY#N), from scratch: its steps run again (step keys name the new run id), and the old
    run stays as it was; this also works for a done run, on purpose.  Refused while a run of the event is
    pending or running, and, without --rerun, once one is done: one run per idempotency key.
    """
    config = load(opts, required=False)
    with state_connection(opts, config) as conn:
        done = runs_mod.retry(conn, run_id, schema=config.state_schema, rerun=rerun)
    if done.id == done.retried:
        message = f"run {done.id} was {done.was}, is pending again (a new attempt; recorded steps kept)"
    else:
        message = (
            f"run {done.id} (generation {done.generation}) is pending; run {done.retried} stays {done.was}"
        )
    err_console.print(message, highlight=False)
    click.echo(done.id)


@click.command()
@click.argument("run_id", metavar="ID")
@click.pass_obj
def cancel(opts: Options, run_id: str) -> None:
    """Cancel a pending or running run; it will not run (again).

    A running run is cancelled at once in the queue: its worker's next step record, heartbeat, completion
    or failure is refused (fenced, as for a lost lease), but code the workflow is executing right now is
    not interrupted.  `listener retry ID` runs a cancelled run's event again.
    """
    config = load(opts, required=False)
    with state_connection(opts, config) as conn:
        done = runs_mod.cancel(conn, run_id)
    if done.was == "running":
        click.echo(
            f"cancelled run {done.id} (was running attempt {done.attempt}; "
            "its worker's remaining writes will be refused)"
        )
    else:
        click.echo(f"cancelled run {done.id} (was pending)")


COMMANDS = [runs, retry, cancel]
