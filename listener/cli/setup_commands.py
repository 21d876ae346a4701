"""`listener check`, `init` and `drop`: the prerequisites, setting up and tearing down."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from listener import install as setup
from listener.cli.options import (
    EXIT_PROBLEMS,
    Options,
    databases,
    err_console,
    load,
)
from listener.cli.render import markup_safe


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts (see above).")
@click.option(
    "--standby",
    "standby_dsn",
    metavar="DSN",
    envvar="LISTENER_STANDBY_DSN",
    show_envvar=True,
    help="A standby that should keep the slot (slot_failover: true): its settings are checked too.",
)
@click.pass_obj
def check(opts: Options, as_json: bool, standby_dsn: str | None) -> None:
    """Validate the config and check the database prerequisites; print the fix for each failure.

    Exits 0 when ready (perhaps after `listener init`), 1 when a check failed.

    \b
    --json writes one JSON object: config (the file), rules (their number), ok (no failed check),
      needs_init, checks [{name, ok, warning, detail, fix}]
    """
    from listener import service

    config = load(opts)
    with databases(opts, config) as (dsn, state_dsn):
        results = setup.check(config, dsn, state_dsn, standby_dsn=standby_dsn)
    results += service.workflow_checks(config)
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


@click.command()
@click.pass_obj
def init(opts: Options) -> None:
    """Apply the state schema, create the publication and the replication slot (safe to run twice)."""
    config = load(opts)
    with databases(opts, config) as (dsn, state_dsn):
        done = setup.init(config, dsn, state_dsn)
    for line in done or ["nothing to do: already initialised"]:
        click.echo(line)


@click.command()
@click.pass_obj
def drop(opts: Options) -> None:
    """Drop the replication slot, the publications and its checkpoint (the state schema and events stay)."""
    config = load(opts)
    with databases(opts, config) as (dsn, state_dsn):
        done = setup.drop(config, dsn, state_dsn)
    for line in done or ["nothing to drop"]:
        click.echo(line)


COMMANDS = [check, init, drop]
