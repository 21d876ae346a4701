"""`listener schedules`, `schedules pause`, `resume` and `trigger`: the configured schedules."""

from __future__ import annotations

import contextlib
import zoneinfo
from collections.abc import Iterator

import click
from rich.table import Table

from listener.cli.options import Options, err_console, load, state_tables
from listener.cli.render import cell, dumps, stdout_console
from listener.defaults import SCHEDULE_NEXT_SHOWN
from listener.ops import schedules as schedules_mod
from listener.ops.runs import Conn
from listener.rules.config import Config


@contextlib.contextmanager
def _schedules_table(opts: Options) -> Iterator[tuple[Conn, Config]]:
    config = load(opts)
    with state_tables(opts, config, "schedules table") as conn:
        yield conn, config


@click.group(invoke_without_command=True)
@click.option(
    "--next",
    "count",
    default=SCHEDULE_NEXT_SHOWN,
    type=click.IntRange(min=1, max=1000),
    help="Show this many upcoming ticks of each schedule.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines for scripts (see above).")
@click.pass_context
def schedules(ctx: click.Context, count: int, as_json: bool) -> None:
    """List the config's schedules: spec, state and next ticks (when each fires, jitter included).

    A tick is one event keyed schedule/NAME/<tick in UTC>/0, exactly once however many `listener run`
    replicas fire it.  `last done` is the last tick fired, skipped or missed: a restart makes up the later
    ones within `catchup:`.

    \b
    --json writes one JSON object per line, with these keys:
      name, spec, workflow, overlap, catchup, paused, paused_by,
      last_tick (ISO 8601 in UTC, or null), next_ticks (ISO 8601 in UTC)
    """
    if ctx.invoked_subcommand is not None:
        return
    opts: Options = ctx.obj
    with _schedules_table(opts) as (conn, config):
        found = schedules_mod.list_schedules(conn, config, count=count)
    if as_json:
        for view in found:
            click.echo(dumps(view.to_json()))
        return
    console = stdout_console()
    if not found:
        console.print("no schedules: add a `schedules:` section to the config")
        return
    table = Table(caption="times in each schedule's time zone", caption_justify="left")
    table.add_column("name", overflow="fold")
    table.add_column("spec", overflow="fold")
    table.add_column("workflow", overflow="fold")
    table.add_column("overlap", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("last done", min_width=10)
    table.add_column("next", min_width=10)
    for view in found:
        zone = zoneinfo.ZoneInfo(view.zone)
        state = f"paused by {view.paused_by}" if view.paused else "active"
        last = view.last_tick.astimezone(zone).isoformat(" ") if view.last_tick else "never"
        upcoming = "\n".join(t.astimezone(zone).isoformat(" ") for t in view.next_ticks)
        table.add_row(
            cell(view.name), cell(view.spec), cell(view.workflow), view.overlap, state, last, upcoming
        )
    console.print(table)


@schedules.command("pause")
@click.argument("name")
@click.pass_obj
def schedules_pause(opts: Options, name: str) -> None:
    """Skip NAME's ticks from now on, until `schedules resume` (they are not made up)."""
    with _schedules_table(opts) as (conn, config):
        schedules_mod.pause(conn, config, name)
    click.echo(f"schedule {name} paused: its ticks are skipped until `listener schedules resume {name}`")


@schedules.command("resume")
@click.argument("name")
@click.pass_obj
def schedules_resume(opts: Options, name: str) -> None:
    """Tick NAME again from now; the ticks skipped while it was paused are not made up."""
    with _schedules_table(opts) as (conn, config):
        was_paused = schedules_mod.resume(conn, config, name)
    if was_paused:
        click.echo(f"schedule {name} resumed")
    else:
        err_console.print(f"schedule {name} was not paused: nothing to do", highlight=False)


@schedules.command("trigger")
@click.argument("name")
@click.pass_obj
def schedules_trigger(opts: Options, name: str) -> None:
    """Run NAME's workflow once now, beside its ticks (trigger "manual"); print the run's id."""
    with _schedules_table(opts) as (conn, config):
        run_id = schedules_mod.trigger(conn, config, name)
    err_console.print(f"schedule {name} triggered; its run:", highlight=False)
    click.echo(run_id)


COMMANDS = [schedules]
