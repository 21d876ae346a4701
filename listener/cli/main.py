"""The `listener` command.

Every option can also come from an environment variable (shown in --help).  Where no DSN is given —
neither --dsn, LISTENER_DSN nor `dsn:` in the config — listener starts the embedded PostgreSQL server
(data in .listener/pgdata, reused across runs, stopped on exit) and prints its DSN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from listener import install as setup
from listener.cli import views
from listener.cli.render import dumps, markup_safe, printable, stdout_console, write_json_lines
from listener.defaults import DEFAULT_CONFIG_FILE, RUNS_LIST_LIMIT
from listener.errors import DatabaseError, ListenerError, ProtocolError
from listener.ops import runs as runs_mod
from listener.pg import conninfo
from listener.pg.embedded import DEFAULT_DATA_DIR, EmbeddedPostgres, client_program
from listener.rules.config import Config, load_config, parse_config

err_console = Console(stderr=True, soft_wrap=True, highlight=False)


@dataclass
class Options:
    config_path: str | None
    dsn: str | None
    state_dsn: str | None
    data_dir: str
    verbose: int = 0


@contextlib.contextmanager
def _databases(opts: Options, config: Config, *, create: bool = True) -> Iterator[tuple[str, str]]:
    """(source DSN, state DSN); starts the embedded server when no DSN is given anywhere.  Without
    ``create`` (commands that only read or change existing state) a missing embedded cluster is an error,
    never a new cluster in the current directory."""
    dsn = opts.dsn or config.dsn
    server: EmbeddedPostgres | None = None
    if dsn is None:
        if not create and not Path(opts.data_dir).exists():
            raise ListenerError(
                f"no database given, and no embedded server in {Path(opts.data_dir).absolute()}",
                hint="give --dsn / LISTENER_DSN (or `dsn:` in the config), or run this where `listener run`"
                " ran (or pass its --data-dir)",
            )
        server = EmbeddedPostgres(opts.data_dir)
        dsn = server.start()
        err_console.print(f"[dim]embedded PostgreSQL ({opts.data_dir}): {dsn}[/dim]")
    try:
        yield dsn, opts.state_dsn or config.state_dsn or dsn
    finally:
        if server is not None:
            server.stop()


@contextlib.contextmanager
def _state(opts: Options, config: Config) -> Iterator[runs_mod.Conn]:
    """A connection to the existing state schema (never a new embedded cluster)."""
    with (
        _databases(opts, config, create=False) as (_, state_dsn),
        runs_mod.connect(state_dsn, config.state_schema) as conn,
    ):
        yield conn


def _load(opts: Options, *, required: bool = True) -> Config:
    path = opts.config_path
    if path is None:
        if Path(DEFAULT_CONFIG_FILE).exists():
            path = DEFAULT_CONFIG_FILE
        elif required:
            raise ListenerError(
                f"no configuration file: {DEFAULT_CONFIG_FILE} is not in the current directory",
                hint="pass --config FILE (or LISTENER_CONFIG); see README 'Configuration'",
            )
        else:
            return parse_config("rules: []\n", filename="<defaults>")
    return load_config(path)


# Exit codes (README "Exit codes"): a script can tell a failed check from a crash.
EXIT_OK = 0
EXIT_PROBLEMS = 1  # `check` found problems, `rules test` did not match
EXIT_USAGE = 2  # a usage or configuration error (click's own usage errors exit 2 too)
EXIT_RUNTIME = 3  # a runtime failure: a database or protocol error, or a bug (traceback)


def _fail(exc: ListenerError) -> None:
    err_console.print(f"[bold red]error:[/bold red] {markup_safe(exc.message)}", highlight=False)
    if exc.hint:
        err_console.print(f"  [bold]fix:[/bold] {markup_safe(exc.hint)}", highlight=False)
    sys.exit(EXIT_RUNTIME if isinstance(exc, DatabaseError | ProtocolError) else EXIT_USAGE)


def _set_verbosity(verbose: int) -> None:
    level = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def _late_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the command (`listener tail --config x.yaml`): it wins."""
    if value is None or value == 0 or param.name is None:
        return
    opts = ctx.find_object(Options)
    if opts is None:
        return
    if param.name == "verbose":
        opts.verbose += value
        _set_verbosity(opts.verbose)
    else:
        setattr(opts, param.name, value)


def _late(*decls: str, help: str, count: bool = False) -> click.Option:
    return click.Option(
        list(decls),
        help=help,
        count=count,
        callback=_late_global,
        expose_value=False,
        is_eager=True,
        show_default=False,
    )


def _global_options() -> list[click.Option]:
    """The global options once more, for every command: accepted before or after the command's name."""
    return [
        _late("-c", "--config", "config_path", help="Config file (as before the command)."),
        _late("--dsn", help="Database to watch (as before the command)."),
        _late("--state-dsn", help="State database (as before the command)."),
        _late("--data-dir", help="Embedded server's data directory (as before the command)."),
        _late("-v", "--verbose", count=True, help="More logging (as before the command)."),
    ]


class _Command(click.Command):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_global_options())


class _Group(click.Group):
    command_class = _Command

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ListenerError as exc:
            _fail(exc)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception:
            # A bug, not something the user did: the traceback, and the runtime failure's exit code.
            traceback.print_exc()
            sys.exit(EXIT_RUNTIME)
        return None


class _SubGroup(_Group):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_global_options())


_Group.group_class = _SubGroup


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar="LISTENER_CONFIG",
    show_envvar=True,
    help=f"Config file (default: ./{DEFAULT_CONFIG_FILE}).",
)
@click.option(
    "--dsn",
    envvar="LISTENER_DSN",
    show_envvar=True,
    help="Database to watch (libpq conninfo or URI; PG* variables apply).",
)
@click.option(
    "--state-dsn",
    envvar="LISTENER_STATE_DSN",
    show_envvar=True,
    help="Database for the queue and checkpoint (default: the watched one).",
)
@click.option(
    "--data-dir",
    envvar="LISTENER_DATA_DIR",
    show_envvar=True,
    default=str(DEFAULT_DATA_DIR),
    help="Data directory of the embedded server, used when no DSN is given.",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="listener", message="listener %(version)s")
@click.pass_context
def main(
    ctx: click.Context,
    config_path: str | None,
    dsn: str | None,
    state_dsn: str | None,
    data_dir: str,
    verbose: int,
) -> None:
    """listener: PostgreSQL row changes → durable, exactly-once workflow runs.

    The options above are accepted after the command's name too (`listener tail -c x.yaml`).

    \b
    Exit codes: 0 ok; 1 problems found (`check`) or no match (`rules test`);
    2 a usage or configuration error; 3 a runtime failure (database, protocol, a bug).
    """
    _set_verbosity(verbose)
    ctx.obj = Options(config_path, dsn, state_dsn, data_dir, verbose)


def _workflow_checks(config: Config, errors: Mapping[str, ListenerError]) -> list[setup.CheckResult]:
    """One failed check per rule whose workflow does not import, or one line saying they all do."""
    if not errors:
        dirs = ", ".join(str(d) for d in config.import_dirs())
        return [setup.CheckResult("workflows", True, f"{len(config.rules)} rule(s) import (from {dirs})")]
    return [
        setup.CheckResult(f"workflow of rule {rule}", False, exc.message, exc.hint)
        for rule, exc in errors.items()
    ]


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts (see above).")
@click.pass_obj
def check(opts: Options, as_json: bool) -> None:
    """Validate the config and check the database prerequisites; print the fix for each failure.

    Exits 0 when ready (perhaps after `listener init`), 1 when a check failed.

    \b
    --json writes one JSON object: config (the file), rules (their number), ok (no failed check),
      needs_init, checks [{name, ok, warning, detail, fix}]
    """
    from listener import service

    config = _load(opts)
    with _databases(opts, config) as (dsn, state_dsn):
        results = setup.check(config, dsn, state_dsn)
    results += _workflow_checks(config, service.workflow_errors(config))
    failed = [r for r in results if not r.ok and r.fix != "listener init"]
    needs_init = [r for r in results if not r.ok and r.fix == "listener init"]
    if as_json:
        doc = {
            "config": config.source_path,
            "rules": len(config.rules),
            "ok": not failed,
            "needs_init": bool(needs_init),
            "checks": [
                {"name": r.name, "ok": r.ok, "warning": r.warning, "detail": r.detail, "fix": r.fix}
                for r in results
            ],
        }
        click.echo(json.dumps(doc))
        if failed:
            sys.exit(EXIT_PROBLEMS)
        return
    # One line per check and the fix on a line of its own, never wrapped: people copy the SQL.
    out = Console(soft_wrap=True, highlight=False)
    out.print(f"[bold]listener check[/bold]: {len(config.rules)} rule(s), {config.source_path or 'no file'}")
    for r in results:
        mark = "[yellow]![/]" if r.ok and r.warning else ("[green]✓[/]" if r.ok else "[red]✗[/]")
        # names, rule texts and SQL are not markup: `when: new.tags[1] = 'x'` prints as written
        out.print(f"{mark} {markup_safe(r.name)}: {markup_safe(r.detail)}")
        if r.fix:  # several statements: one a line, aligned
            out.print("    fix: " + markup_safe(r.fix).replace("\n", "\n         "))
    if failed:
        err_console.print(f"[red]{len(failed)} problem(s): apply the fixes above[/red]")
        sys.exit(EXIT_PROBLEMS)
    if needs_init:
        err_console.print("[yellow]ready: run `listener init` (or `listener run`, which does it)[/yellow]")


@main.command()
@click.pass_obj
def init(opts: Options) -> None:
    """Apply the state schema, create the publication and the replication slot (safe to run twice)."""
    config = _load(opts)
    with _databases(opts, config) as (dsn, state_dsn):
        done = setup.init(config, dsn, state_dsn)
    for line in done or ["nothing to do: already initialised"]:
        click.echo(line)


@main.command()
@click.pass_obj
def drop(opts: Options) -> None:
    """Drop the replication slot, the publications and its checkpoint (the state schema and events stay)."""
    config = _load(opts)
    with _databases(opts, config) as (dsn, state_dsn):
        done = setup.drop(config, dsn, state_dsn)
    for line in done or ["nothing to drop"]:
        click.echo(line)


@main.command()
@click.option("--no-workers", is_flag=True, help="Only ingest; run workers elsewhere.")
@click.pass_obj
def run(opts: Options, no_workers: bool) -> None:
    """Ingest changes into the durable queue and run workflows (until SIGTERM / Ctrl-C)."""
    from listener import service

    config = _load(opts)
    with _databases(opts, config) as (dsn, state_dsn), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(service.run(config, dsn, state_dsn, workers=not no_workers))


@main.command()
@click.option(
    "--concurrency", type=click.IntRange(min=1), help="Workflows at once (default: worker.concurrency)."
)
@click.pass_obj
def worker(opts: Options, concurrency: int | None) -> None:
    """Run workflows only (no ingest): start as many as you like, on any machines, against one state db."""
    from listener import service

    config = _load(opts)
    with _databases(opts, config) as (_, state_dsn), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(service.run_workers(config, state_dsn, concurrency=concurrency))


@main.command()
@click.option("--max", "max_changes", type=click.IntRange(min=1), help="Stop after N changes.")
@click.pass_obj
def tail(opts: Options, max_changes: int | None) -> None:
    """Print the decoded changes of the configured tables as JSON lines (temporary slot)."""
    from listener import service
    from listener.ops import tail as tail_mod

    config = _load(opts)

    async def go(dsn: str) -> None:
        stop = asyncio.Event()
        remove = service.install_signal_handlers(stop)
        try:
            output = views.JsonLines(sys.stdout, sys.stderr)
            await tail_mod.tail(config, dsn, output=output, max_changes=max_changes, stop=stop)
        finally:
            remove()

    with _databases(opts, config) as (dsn, _), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(go(dsn))


@main.command()
@click.option("--rows", default=6, type=click.IntRange(min=1), help="Sample rows to write.")
@click.pass_obj
def demo(opts: Options, rows: int) -> None:
    """Create a sample schema, rules and workflows, write rows, and watch workflows react."""
    from listener.ops import demo as demo_mod

    console = Console()

    def on_streaming() -> None:
        console.print("[bold]listener is streaming.[/bold] Writing sample rows...\n")

    with _databases(opts, parse_config("rules: []\n")) as (dsn, _):
        done = asyncio.run(demo_mod.demo(dsn, rows=rows, on_streaming=on_streaming))
    if done is not None:
        views.print_demo(console, done)


@main.group(invoke_without_command=True)
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
    config = _load(opts, required=False)
    with _state(opts, config) as conn:
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
    config = _load(opts, required=False)
    with _state(opts, config) as conn:
        detail = runs_mod.show_run(conn, run_id)
    if as_json:
        click.echo(dumps(detail.to_json()))
    else:
        views.print_run(stdout_console(), detail)


@main.command()
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
      runs {pending, running, dead}, rewinds [{id, from_lsn, up_to, position, rerun_rule,
      generation, events_inserted, runs_rerun, created_at, started_at, finished_at, error}],
      backfills [{id, rule, table_name, where_sql, status, rows_read, rows_dropped, rows_total,
      ...} as `listener backfill status --json`], warnings [text]
    """
    from listener.ops import status as status_mod

    config = _load(opts, required=False)
    with (
        _databases(opts, config, create=False) as (dsn, state_dsn),
        conninfo.connection(dsn) as source,
        runs_mod.connect(state_dsn, config.state_schema) as state,
    ):
        found = status_mod.gather(config, source, state)
    if as_json:
        click.echo(dumps(found.to_json()))
    else:
        views.print_status(stdout_console(), found)


@main.command()
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

    config = _load(opts)
    with (
        _databases(opts, config) as (dsn, state_dsn),
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
            result = rw.run_dry(config, dsn, state_dsn, target)
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


@main.group(invoke_without_command=True)
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
    config = _load(opts)
    with (
        _databases(opts, config) as (dsn, state_dsn),
        conninfo.connection(dsn) as source,
        runs_mod.connect(state_dsn, config.state_schema) as state,
    ):
        request = bf.plan(config, source, rule, where)
        from listener.queue import migrations

        # a service not restarted since an upgrade lacks the table
        migrations.migrate(state, config.state_schema)
        backfill_id = bf.record(config, state, request)
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
        row = source.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [config.slot]
        ).fetchone()
        if row is None or row[0] is None:
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

    config = _load(opts, required=False)
    with (
        _databases(opts, config, create=False) as (_, state_dsn),
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

    config = _load(opts, required=False)
    with (
        _databases(opts, config, create=False) as (_, state_dsn),
        runs_mod.connect(state_dsn, config.state_schema) as state,
    ):
        row = bf.cancel(state, config.state_schema, backfill_id)
    click.echo(f"cancelled backfill {row.id} after {row.rows_read:,} row(s)")


@main.command()
@click.option(
    "--from-time",
    metavar="TIME",
    required=True,
    help="Replay what committed at or after TIME: ISO 8601, or a duration ago (2h, 90m, 3d).",
)
@click.option("--to-time", metavar="TIME", help="... and before TIME (default: up to now).")
@click.option("--rule", metavar="RULE", help="Only this rule (default: every rule on a table).")
@click.option(
    "--rerun", is_flag=True, help="With --rule: one new run per matching change (a new generation)."
)
@click.option("--dry-run", is_flag=True, help="Count per rule what the replay would produce; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
@click.pass_obj
def replay(
    opts: Options,
    from_time: str,
    to_time: str | None,
    rule: str | None,
    rerun: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Evaluate the current rules again on the change journal (`journal:`), beyond the WAL the slot keeps.

    Reads the journal's changes committed in the range, decodes them as ingest does and inserts the
    events of the rules of this configuration.  Events whose idempotency keys exist are skipped, so only
    new rules and new matches make work (as with `listener rewind`).  Works whether `listener run` is
    running or not: it writes only events and runs.

    --rerun (with --rule) makes, for each change of RULE in the range, one new run (id KEY#N), also for
    events that already ran.  --dry-run prints, per rule, the events the range holds, how many already
    exist, and the runs a replay would make.
    """
    from listener.ops import replay as journal

    config = _load(opts)
    with (
        _databases(opts, config) as (dsn, state_dsn),
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


@main.command()
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
    config = _load(opts, required=False)
    with _state(opts, config) as conn:
        done = runs_mod.retry(conn, run_id, schema=config.state_schema, rerun=rerun)
    if done.id == done.retried:
        message = f"run {done.id} was {done.was}, is pending again (a new attempt; recorded steps kept)"
    else:
        message = (
            f"run {done.id} (generation {done.generation}) is pending; run {done.retried} stays {done.was}"
        )
    err_console.print(message, highlight=False)
    click.echo(done.id)


@main.command()
@click.argument("run_id", metavar="ID")
@click.pass_obj
def cancel(opts: Options, run_id: str) -> None:
    """Cancel a pending or running run; it will not run (again).

    A running run is cancelled at once in the queue: its worker's next step record, heartbeat, completion
    or failure is refused (fenced, as for a lost lease), but code the workflow is executing right now is
    not interrupted.  `listener retry ID` runs a cancelled run's event again.
    """
    config = _load(opts, required=False)
    with _state(opts, config) as conn:
        done = runs_mod.cancel(conn, run_id)
    if done.was == "running":
        click.echo(
            f"cancelled run {done.id} (was running attempt {done.attempt}; "
            "its worker's remaining writes will be refused)"
        )
    else:
        click.echo(f"cancelled run {done.id} (was pending)")


@main.command()
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the service's answer.")
@click.pass_obj
def reload(opts: Options, timeout: float) -> None:
    """Make the running service re-read its config file; new rules apply from a precise LSN on.

    Same as sending it SIGHUP, but works from any machine that reaches the state database, and prints
    the answer: the LSN from which the new rules apply, or why the new config was refused (the old rules
    keep running).

    The request is a row of the state schema's reload_requests table (so asking needs a privilege on that
    schema, not just a connection), and the answer is read from that row."""
    from listener import service

    config = _load(opts)
    with _state(opts, config) as conn:
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


@main.group()
def db() -> None:
    """The embedded PostgreSQL server, for development: run it while you create your tables.

    \b
    listener db start     start it (it keeps running); print its DSN
    listener db status    running or not, and the DSN (exit 1 when not running)
    listener db stop      stop it
    listener db psql      psql on it (starting it if need be); psql's own options after --,
                          e.g. listener db psql -- -c 'SELECT 1'

    Its data lives in --data-dir (default .listener/pgdata); its port is stable per data directory, so a
    printed DSN keeps working across restarts.
    """


@db.command("start")
@click.pass_obj
def db_start(opts: Options) -> None:
    """Start the embedded server (or find it running) and print its DSN; it runs until `listener db stop`."""
    server = EmbeddedPostgres(opts.data_dir)
    dsn = server.start()
    state = "started" if server.started_here else "already running"
    err_console.print(f"embedded PostgreSQL {state} ({server.data_dir}); `listener db stop` stops it")
    click.echo(dsn)


@db.command("stop")
@click.pass_obj
def db_stop(opts: Options) -> None:
    """Stop the embedded server (fast shutdown: sessions end, data is flushed)."""
    if not Path(opts.data_dir).exists():
        click.echo(f"no embedded server in {Path(opts.data_dir).absolute()}")
        return
    stopped = EmbeddedPostgres(opts.data_dir).shutdown()
    click.echo("stopped" if stopped else "not running")


@db.command("status")
@click.pass_obj
def db_status(opts: Options) -> None:
    """Whether the embedded server runs, and its DSN; exit 1 when it does not."""
    path = Path(opts.data_dir).absolute()
    if not path.exists():
        click.echo(f"no embedded server in {path} (`listener db start` creates one)")
        sys.exit(EXIT_PROBLEMS)
    server = EmbeddedPostgres(path)
    port = server.running()
    if port is None:
        click.echo(f"not running ({path})")
        sys.exit(EXIT_PROBLEMS)
    server.port = port
    click.echo(f"running ({path}): {server.dsn()}")


@db.command("psql", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def db_psql(opts: Options, args: tuple[str, ...]) -> None:
    """psql on the embedded server, started if need be (and left running)."""
    import os

    server = EmbeddedPostgres(opts.data_dir)
    psql = client_program("psql", server.bin)
    dsn = server.start()
    os.execv(psql, [str(psql), dsn, *args])


@main.group()
def rules() -> None:
    """Try rules out."""


def _json_row(value: str | None, option: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        row = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from None
    if not isinstance(row, dict):
        raise click.BadParameter('give a JSON object of column values, e.g. {"id": 1}', param_hint=option)
    return row


@rules.command("test")
@click.argument("rule")
@click.option("--new", "new", metavar="JSON", help='The new row, e.g. \'{"id": 1, "status": "signed"}\'.')
@click.option("--old", "old", metavar="JSON", help="The old row (updates and deletes).")
@click.option("--op", type=click.Choice(["insert", "update", "delete"]), help="Default: from --new/--old.")
@click.pass_obj
def rules_test(opts: Options, rule: str, new: str | None, old: str | None, op: str | None) -> None:
    """Evaluate RULE against a sample row, as ingest would; exit 0 if it matches, 1 if not."""
    from listener.ops import ruletest

    config = _load(opts)
    with _databases(opts, config) as (dsn, _):
        result = ruletest.test_rule(config, dsn, rule, _json_row(new, "--new"), _json_row(old, "--old"), op)
    if result.matched:
        click.echo(f"rule {result.rule}: {result.op} matches")
        click.echo(json.dumps(result.event, indent=2))
    else:
        click.echo(printable(f"rule {result.rule}: {result.op} does not match: {result.reason}"))
        sys.exit(EXIT_PROBLEMS)


if __name__ == "__main__":
    main()
