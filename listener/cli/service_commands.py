"""`listener run`, `worker`, `reload` and `status`: the service, its workers, and where it stands."""

from __future__ import annotations

import contextlib
import sys

import click

from listener import logs, metrics, supervise
from listener.cli.options import (
    EXIT_RUNTIME,
    EXIT_USAGE,
    Options,
    databases,
    err_console,
    load,
    state_connection,
)
from listener.cli.render import dumps, markup_safe, stdout_console
from listener.defaults import RELOAD_TIMEOUT_S
from listener.ops import runs as runs_mod
from listener.pg import conninfo
from listener.rules.config.validators import parse_listen


@click.command()
@click.option("--no-workers", is_flag=True, help="Only ingest; run workers elsewhere.")
@click.option(
    "--worker-processes",
    type=click.IntRange(min=0),
    help="`listener worker` processes to start beside this one (default: worker.processes, or 1 on a "
    "machine with 2 cores or more).",
)
@click.pass_obj
def run(opts: Options, no_workers: bool, worker_processes: int | None) -> None:
    """Ingest changes into the durable queue and run workflows (until SIGTERM / Ctrl-C)."""
    from listener import service
    from listener.runtime import processes

    config = load(opts)
    logs.set_context(slot=config.slot)
    if config.http is not None:  # /metrics sums this process's and its worker processes' counts
        metrics.share_with_children()
    else:
        metrics.in_memory()
    if worker_processes is None:
        worker_processes = config.worker.processes
    if worker_processes is None:
        worker_processes = processes.auto_count()
    with databases(opts, config) as (dsn, state_dsn), contextlib.suppress(KeyboardInterrupt):
        supervise.run(
            service.run(
                config,
                dsn,
                state_dsn,
                workers=not no_workers,
                processes=worker_processes,
                verbose=opts.verbose,
                log_format=opts.log_format,
            )
        )


def _listen(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            parse_listen(value)
        except ValueError as exc:
            raise click.BadParameter(f"{exc} (e.g. 127.0.0.1:9188, [::1]:9188)") from None
    return value


@click.command()
@click.option(
    "--concurrency", type=click.IntRange(min=1), help="Workflows at once (default: worker.concurrency)."
)
@click.option("--stop-with-parent", is_flag=True, hidden=True, help="Stop when standard input closes.")
@click.option(
    "--http",
    "listen",
    metavar="HOST:PORT",
    callback=_listen,
    help="Serve this worker's /healthz, /readyz and /metrics on HOST:PORT (e.g. 0.0.0.0:9188).",
)
@click.pass_obj
def worker(opts: Options, concurrency: int | None, stop_with_parent: bool, listen: str | None) -> None:
    """Run workflows only (no ingest): start as many as you like, on any machines, against one state db."""
    from listener import service

    config = load(opts)
    if stop_with_parent:  # a child of `listener run`: its counts go to the parent's /metrics
        metrics.share_with_children(child=True)
    else:
        metrics.in_memory()
    with databases(opts, config) as (_, state_dsn), contextlib.suppress(KeyboardInterrupt):
        supervise.run(
            service.run_workers(
                config, state_dsn, concurrency=concurrency, stop_with_parent=stop_with_parent, listen=listen
            )
        )


@click.command()
@click.option(
    "--timeout", default=RELOAD_TIMEOUT_S, show_default=True, help="Seconds to wait for the service's answer."
)
@click.pass_obj
def reload(opts: Options, timeout: float) -> None:
    """Make the running service re-read its config file; new rules apply from a precise LSN on.

    Same as sending it SIGHUP, but works from any machine that reaches the state database, and prints
    the answer: the LSN from which the new rules apply, or why the new config was refused (the old rules
    keep running).

    The request is a row of the state schema's reload_requests table (so asking needs a privilege on that
    schema, not just a connection), and the answer is read from that row."""
    from listener import service

    config = load(opts)
    with state_connection(opts, config) as conn:
        found = service.ask_reload(conn, config.state_schema, config.slot, timeout=timeout)
    if found is not None:
        ok, answer = found
        if ok:
            lsn, _, count = answer.removeprefix("ok ").partition(" ")
            click.echo(f"reloaded: the new rules apply from LSN {lsn}")
            if count:
                click.echo(count)
            return
        err_console.print(f"[red]{markup_safe(answer)}[/red]")
        sys.exit(EXIT_USAGE)
    err_console.print(
        f"[red]no answer within {timeout:g}s: is `listener run` running against this state database?[/red]"
    )
    sys.exit(EXIT_RUNTIME)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts (see above).")
@click.pass_obj
def status(opts: Options, as_json: bool) -> None:
    """Where ingest stands, the WAL the slot keeps, the rewindable range, rewinds and run counts.

    \b
    --json writes one JSON object with the keys:
      slot, slot_exists, active_pid, checkpoint_lsn, checkpoint_at, confirmed_flush_lsn,
      restart_lsn, current_wal_lsn, wal_status, retained_wal_bytes, warn_wal_bytes,
      retain {duration, size} or null, rewindable {from_lsn, from_time, to_lsn} or null,
      journal {keep, since, oldest_commit_time, bytes} or null,
      runs {pending, running, dead}, run_retention {keep, workflows, pruned_events, pruned_runs,
      last_pruned, oldest_finished} or null, rewinds [{id, from_lsn, up_to, position, rerun_rule,
      generation, events_inserted, runs_rerun, created_at, started_at, finished_at, error}],
      backfills [{id, rule, table_name, where_sql, status, rows_read, rows_dropped, rows_total,
      ...} as `listener backfill status --json`], warnings [text]
    """
    from listener.ops import status as status_mod

    config = load(opts, required=False)
    with (
        databases(opts, config, create=False) as (dsn, state_dsn),
        conninfo.connection(dsn) as source,
        runs_mod.connect(state_dsn, config.state_schema) as state,
    ):
        found = status_mod.gather(config, source, state)
    if as_json:
        click.echo(dumps(found.to_json()))
    else:
        from listener.cli import views

        views.print_status(stdout_console(), found)


COMMANDS = [run, worker, reload, status]
