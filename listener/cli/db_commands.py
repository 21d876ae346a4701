"""`listener db`: the embedded PostgreSQL server, for development."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from listener.cli.options import (
    EXIT_PROBLEMS,
    Options,
    err_console,
)
from listener.pg.embedded import EmbeddedPostgres, client_program


@click.group()
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


COMMANDS = [db]
