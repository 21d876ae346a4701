"""`listener queues` and `queues parked`: where each queue source stands, and the messages it parked
(`listener replay --queue` reads them again: listener.cli.rewind_commands)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import click

from listener.cli import views
from listener.cli.options import Options, load, state_tables
from listener.cli.render import dumps, stdout_console, write_json_lines
from listener.defaults import PARKED_LIST_LIMIT
from listener.ops import queues as queues_mod
from listener.ops.runs import Conn
from listener.rules.config import Config


@contextlib.contextmanager
def _queue_tables(opts: Options) -> Iterator[tuple[Conn, Config]]:
    config = load(opts, required=False)
    with state_tables(opts, config, "queue tables") as conn:
        yield conn, config


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines for scripts (see above).")
@click.pass_context
def queues(ctx: click.Context, as_json: bool) -> None:
    """List the queue sources: broker, each part's stored position, parked messages.

    A part is a Kafka topic's partition (topic:partition), a Redis stream or a JetStream stream; its
    position is that of the last message whose events are durable (a Kafka offset, a Redis entry id
    ms-seq, a JetStream sequence), and `moved` when it last moved.  `parked` counts the messages that
    could not be read and wait for `listener replay --queue NAME`; `listener queues parked` lists them.
    Queues the configuration no longer names are listed while the state tables hold them.

    \b
    --json writes one JSON object per line, with these keys:
      name, broker (kafka, redis_stream, jetstream, or null: not configured), configured,
      parts [{part, position, updated_at}], parked, last_parked (ISO 8601 in UTC, or null)
    """
    if ctx.invoked_subcommand is not None:
        return
    opts: Options = ctx.obj
    with _queue_tables(opts) as (conn, config):
        found = queues_mod.overview(conn, config)
    if as_json:
        for view in found:
            click.echo(dumps(view.to_json()))
    else:
        views.print_queues(stdout_console(), found)


@queues.command("parked")
@click.option("--queue", "queue", metavar="NAME", help="Only queue NAME's messages.")
@click.option("--all", "everything", is_flag=True, help="Retried messages too (with when).")
@click.option(
    "--limit", default=PARKED_LIST_LIMIT, type=click.IntRange(min=1), help="Show at most N messages."
)
@click.option(
    "--show",
    metavar="POSITION",
    help="Print one message whole (with --queue): its position (1234, 1700000000000-0) or PART:POSITION.",
)
@click.option("--part", metavar="PART", help="With --show: the part, when several hold that position.")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts (see above).")
@click.pass_obj
def queues_parked(
    opts: Options,
    queue: str | None,
    everything: bool,
    limit: int,
    show: str | None,
    part: str | None,
    as_json: bool,
) -> None:
    """List the parked messages, oldest first: those a queue source could not read (not UTF-8, not JSON
    for `format: json`, a value jsonb refuses, a `when:` failing on it), kept whole with the reason.

    Once the cause is fixed in the configuration, `listener replay --queue NAME` reads them again and
    makes their events, under the keys they would have had.

    \b
    --json writes one JSON object per line, with these keys:
      queue, part, position (as the broker shows it), topic, sent_at, parked_at,
      bytes, reason, retried_at (ISO 8601 in UTC, or null)
    --show --json writes one object: those keys, plus
      key (text, base64:... when not UTF-8, or null), headers, body_text (null when
      not UTF-8), body_base64
    """
    if part is not None and show is None:
        raise click.UsageError("--part goes with --show POSITION")
    with _queue_tables(opts) as (conn, config):
        if show is not None:
            if queue is None:
                raise click.UsageError("--show needs --queue NAME: positions are per queue")
            message = queues_mod.show_parked(conn, config, queue=queue, position=show, part=part)
        else:
            rows = queues_mod.list_parked(conn, config, queue=queue, everything=everything, limit=limit)
    if show is not None:
        if as_json:
            click.echo(dumps(message.to_json()))
        else:
            views.print_parked_message(stdout_console(), message)
    elif as_json:
        write_json_lines(sys.stdout, rows)
    else:
        views.print_parked(stdout_console(), rows, limit=limit, everything=everything)


COMMANDS = [queues]
