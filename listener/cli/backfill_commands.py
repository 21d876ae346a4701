"""`listener backfill`, `backfill status` and `backfill cancel`: a table's rows to a rule."""

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
from listener.errors import ListenerError
from listener.ops import runs as runs_mod
from listener.pg import conninfo


@click.group(invoke_without_command=True)
@click.option("--rule", metavar="RULE", help="The table rule whose workflow gets the table's rows.")
@click.option(
    "--where", metavar="SQL", help="Only rows where this boolean expression over the columns holds."
)
@click.option("--detach", is_flag=True, help="Record it and print its id; do not show the progress.")
@click.pass_context
def backfill(ctx: click.Context, rule: str | None, where: str | None, detach: bool) -> None:
    """Give a rule the rows its table holds now, while the live stream goes on.

    The running `listener run` reads the table in primary-key order, chunk by chunk, and drops a row that
    a live change superseded meanwhile, so a workflow never gets a row state older than one it already
    got.  Each row makes one event (op "read"), keyed RULE/backfill/ID/KEY.  The command records the
    backfill and shows its progress; Ctrl-C stops watching, not the backfill.

    \b
    listener backfill status        the backfills and their progress (--json)
    listener backfill cancel ID     read no further chunk
    """
    if ctx.invoked_subcommand is not None:
        return
    from listener.ops import backfill_requests as bf

    opts: Options = ctx.obj
    if rule is None:
        raise ListenerError(
            "which rule? give --rule RULE",
            hint="e.g. listener backfill --rule onboard_user --where 'id > 100'",
        )
    config = load(opts)
    with (
        databases(opts, config) as (dsn, state_dsn),
        conninfo.connection(dsn) as source,
        runs_mod.connect(state_dsn, config.state_schema) as state,
    ):
        backfill_id, request = bf.submit(config, source, state, rule, where)
        estimate = f", about {request.estimate:,} row(s)" if request.estimate is not None else ""
        err_console.print(
            f"backfill {backfill_id}: rule {rule}, table {request.table}"
            + (f" where {request.where}" if request.where else "")
            + estimate,
            highlight=False,
        )
        click.echo(backfill_id)
        if detach:
            return
        if not bf.service_running(source, config.slot):
            err_console.print("`listener run` is not running: it starts the backfill when it starts")
        try:
            with views.backfill_progress(err_console) as progress:
                done = bf.follow(state, backfill_id, progress)
        except KeyboardInterrupt:
            err_console.print(
                f"backfill {backfill_id} goes on in `listener run`; `listener backfill status` shows it, "
                f"`listener backfill cancel {backfill_id}` stops it",
                highlight=False,
            )
            return
        if done.status != "done":
            err_console.print(
                f"[red]backfill {backfill_id} {done.status}: {markup_safe(done.error or '')}[/red]"
            )
            sys.exit(EXIT_RUNTIME)
        err_console.print(
            f"backfill {backfill_id} done: {done.rows_read:,} row(s) read, {done.rows_dropped:,} superseded "
            "by live changes",
            highlight=False,
        )


@backfill.command("status")
@click.option("--json", "as_json", is_flag=True, help="JSON lines for scripts.")
@click.pass_obj
def backfill_status(opts: Options, as_json: bool) -> None:
    """The open backfills and the last finished ones, with their progress."""
    from listener.ops import backfill_requests as bf

    config = load(opts, required=False)
    with (
        databases(opts, config, create=False) as (_, state_dsn),
        runs_mod.connect(state_dsn, config.state_schema) as state,
    ):
        found = bf.list_backfills(state, config.slot)
    if as_json:
        for row in found:
            click.echo(dumps(row.to_json()))
        return
    views.print_backfills(stdout_console(), found)


@backfill.command("cancel")
@click.argument("backfill_id", metavar="ID", type=int)
@click.pass_obj
def backfill_cancel(opts: Options, backfill_id: int) -> None:
    """Stop a backfill: no further chunk is read (events already made stay)."""
    from listener.ops import backfill_requests as bf

    config = load(opts, required=False)
    with (
        databases(opts, config, create=False) as (_, state_dsn),
        runs_mod.connect(state_dsn, config.state_schema) as state,
    ):
        row = bf.cancel(state, config.state_schema, backfill_id)
    click.echo(f"cancelled backfill {row.id} after {row.rows_read:,} row(s)")


COMMANDS = [backfill]
