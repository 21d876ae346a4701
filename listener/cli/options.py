"""What every command module shares: the global options, the error console, the exit codes, and the
configuration and databases those options name (found by :mod:`listener.ops.environment`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from rich.console import Console

from listener.errors import ListenerError
from listener.logs import STARTUP_LOGGER
from listener.ops import environment
from listener.ops import runs as runs_mod
from listener.rules.config import Config

err_console = Console(stderr=True, soft_wrap=True, highlight=False)

# Exit codes (README "Exit codes"): a script can tell a failed check from a crash.
EXIT_OK = 0
EXIT_PROBLEMS = 1  # `check` found problems, `rules test` did not match
EXIT_USAGE = 2  # a usage or configuration error (click's own usage errors exit 2 too)
EXIT_RUNTIME = 3  # a runtime failure: a database or protocol error, or a bug (traceback)


@dataclass
class Options:
    config_path: str | None
    dsn: str | None
    state_dsn: str | None
    data_dir: str
    verbose: int = 0
    log_format: str = "text"  # listener.logs.FORMATS

    def announce_embedded(self, dsn: str) -> None:
        if self.log_format == "json":  # standard error holds nothing but log lines
            logging.getLogger(STARTUP_LOGGER).info("embedded PostgreSQL (%s): %s", self.data_dir, dsn)
        else:
            err_console.print(f"[dim]embedded PostgreSQL ({self.data_dir}): {dsn}[/dim]")


def load(opts: Options, *, required: bool = True) -> Config:
    """The configuration ``--config`` names (else ./listener.yaml; else, unless required, no rules)."""
    return environment.load(opts.config_path, required=required)


@contextlib.contextmanager
def databases(opts: Options, config: Config, *, create: bool = True) -> Iterator[tuple[str, str]]:
    """(source DSN, state DSN), the embedded server started where no DSN is given."""
    with environment.databases(
        config,
        dsn=opts.dsn,
        state_dsn=opts.state_dsn,
        data_dir=opts.data_dir,
        create=create,
        on_embedded=opts.announce_embedded,
    ) as found:
        yield found


@contextlib.contextmanager
def state_connection(opts: Options, config: Config) -> Iterator[runs_mod.Conn]:
    """A connection to the existing state schema (never a new embedded cluster)."""
    with environment.state(
        config,
        dsn=opts.dsn,
        state_dsn=opts.state_dsn,
        data_dir=opts.data_dir,
        on_embedded=opts.announce_embedded,
    ) as conn:
        yield conn


@contextlib.contextmanager
def state_tables(opts: Options, config: Config, what: str) -> Iterator[runs_mod.Conn]:
    """:func:`state_connection`, for a command on tables newer than the first schema (``what``: "schedules
    table"): a schema without them is an older one, brought up to date by `listener init`."""
    with state_connection(opts, config) as conn:
        try:
            yield conn
        except psycopg.errors.UndefinedTable:
            raise ListenerError(
                f"the state schema {config.state_schema!r} has no {what}: it is older than this listener",
                hint="run `listener init` (or start `listener run`) to bring it up to date",
            ) from None
