"""`listener tail`, `demo` and `rules test`: trying listener and rules out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import click
from rich.console import Console

from listener import supervise
from listener.cli import views
from listener.cli.options import (
    EXIT_PROBLEMS,
    Options,
    databases,
    load,
)
from listener.cli.render import printable
from listener.defaults import DEMO_ROWS
from listener.rules.config import parse_config


@click.command()
@click.option("--max", "max_changes", type=click.IntRange(min=1), help="Stop after N changes.")
@click.pass_obj
def tail(opts: Options, max_changes: int | None) -> None:
    """Print the decoded changes of the configured tables as JSON lines (temporary slot)."""
    from listener.ops import tail as tail_mod

    config = load(opts)
    with databases(opts, config) as (dsn, _), contextlib.suppress(KeyboardInterrupt):
        output = views.JsonLines(sys.stdout, sys.stderr)
        asyncio.run(tail_mod.tail_until_signal(config, dsn, output=output, max_changes=max_changes))


@click.command()
@click.option("--rows", default=DEMO_ROWS, type=click.IntRange(min=1), help="Sample rows to write.")
@click.pass_obj
def demo(opts: Options, rows: int) -> None:
    """Create a sample schema, rules and workflows, write rows, and watch workflows react."""
    from listener.ops import demo as demo_mod

    console = Console()

    def on_streaming() -> None:
        console.print("[bold]listener is streaming.[/bold] Writing sample rows...\n")

    with databases(opts, parse_config("rules: []\n")) as (dsn, _):
        done = supervise.run(demo_mod.demo(dsn, rows=rows, on_streaming=on_streaming))
        if done is not None:  # printed before an embedded server stops, as it always was
            views.print_demo(console, done)


@click.group()
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

    config = load(opts)
    with databases(opts, config) as (dsn, _):
        result = ruletest.test_rule(config, dsn, rule, _json_row(new, "--new"), _json_row(old, "--old"), op)
    if result.matched:
        click.echo(f"rule {result.rule}: {result.op} matches")
        click.echo(json.dumps(result.event, indent=2))
    else:
        click.echo(printable(f"rule {result.rule}: {result.op} does not match: {result.reason}"))
        sys.exit(EXIT_PROBLEMS)


COMMANDS = [tail, demo, rules]
