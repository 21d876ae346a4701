"""The `listener` command.

Every option can also come from an environment variable (shown in --help).  Where no DSN is given —
neither --dsn, LISTENER_DSN nor `dsn:` in the config — listener starts the embedded PostgreSQL server
(data in .listener/pgdata, reused across runs, stopped on exit) and prints its DSN.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from listener import logs
from listener.cli.options import EXIT_RUNTIME, EXIT_USAGE, Options, err_console
from listener.cli.render import markup_safe
from listener.defaults import DEFAULT_CONFIG_FILE
from listener.errors import DatabaseError, ListenerError, ProcessDied, ProtocolError
from listener.logs import STARTUP_LOGGER
from listener.pg.embedded import DEFAULT_DATA_DIR


def _fail(exc: ListenerError) -> None:
    err_console.print(f"[bold red]error:[/bold red] {markup_safe(exc.message)}", highlight=False)
    if exc.hint:
        err_console.print(f"  [bold]fix:[/bold] {markup_safe(exc.hint)}", highlight=False)
    sys.exit(EXIT_RUNTIME if isinstance(exc, DatabaseError | ProtocolError | ProcessDied) else EXIT_USAGE)


def _set_logging(verbose: int, log_format: str) -> None:
    level = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    logs.configure(level, "json" if log_format == "json" else "text")
    # the service's startup line, and where the HTTP server listens, are said even without -v
    for name in (STARTUP_LOGGER, "listener.http.server"):
        logging.getLogger(name).setLevel(min(level, logging.INFO))


def _late_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the command (`listener tail --config x.yaml`): it wins."""
    if value is None or value == 0 or param.name is None:
        return
    opts = ctx.find_object(Options)
    if opts is None:
        return
    if param.name == "verbose":
        opts.verbose += value
        _set_logging(opts.verbose, opts.log_format)
    elif param.name == "log_format":
        opts.log_format = value
        _set_logging(opts.verbose, opts.log_format)
    else:
        setattr(opts, param.name, value)


def _late(*decls: str, help: str, count: bool = False, choices: Sequence[str] = ()) -> click.Option:
    return click.Option(
        list(decls),
        help=help,
        count=count,
        type=click.Choice(choices) if choices else None,
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
        _late(
            "--log-format", help="Log lines as text or JSON (as before the command).", choices=logs.FORMATS
        ),
    ]


# Each command's module, imported when the command is looked up (to run it, or by `--help`, which lists
# them all): `listener worker` starts without importing ingest, the installer or the renderers it does not
# use.  tests/unit/test_cli_commands.py checks this table against each module's COMMANDS.
COMMAND_MODULES = {
    "check": "setup_commands",
    "init": "setup_commands",
    "drop": "setup_commands",
    "run": "service_commands",
    "worker": "service_commands",
    "reload": "service_commands",
    "status": "service_commands",
    "runs": "runs_commands",
    "retry": "runs_commands",
    "cancel": "runs_commands",
    "rewind": "rewind_commands",
    "replay": "rewind_commands",
    "backfill": "backfill_commands",
    "db": "db_commands",
    "tail": "try_commands",
    "demo": "try_commands",
    "rules": "try_commands",
    "schedules": "schedule_commands",
    "queues": "queue_commands",
}


class _Group(click.Group):
    """The `listener` group: a ListenerError prints its message and fix, a bug its traceback; each with
    its exit code.  Its commands are loaded from their modules when first looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMAND_MODULES.get(cmd_name)
        if module_name is not None and cmd_name not in self.commands:
            module = importlib.import_module(f"listener.cli.{module_name}")
            for command in module.COMMANDS:
                if command.name not in self.commands:
                    self.add_command(_with_global_options(command))
        return super().get_command(ctx, cmd_name)

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
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    default="text",
    envvar="LISTENER_LOG_FORMAT",
    show_envvar=True,
    help='Log lines as text, or as one JSON object per line (fields: README "Logs").',
)
@click.version_option(package_name="listener", message="listener %(version)s")
@click.pass_context
def main(
    ctx: click.Context,
    config_path: str | None,
    dsn: str | None,
    state_dsn: str | None,
    data_dir: str,
    verbose: int,
    log_format: str,
) -> None:
    """listener: PostgreSQL row changes → durable, exactly-once workflow runs.

    The options above are accepted after the command's name too (`listener tail -c x.yaml`).

    \b
    Exit codes: 0 ok; 1 problems found (`check`) or no match (`rules test`);
    2 a usage or configuration error; 3 a runtime failure (database, protocol, a bug).
    """
    _set_logging(verbose, log_format)
    ctx.obj = Options(config_path, dsn, state_dsn, data_dir, verbose, log_format)


def _with_global_options(command: click.Command) -> click.Command:
    """``command`` (and, for a group, its commands) accepting the global options after its name."""
    command.params.extend(_global_options())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_global_options(sub)
    return command


if __name__ == "__main__":
    main()
