"""What a command works on: its configuration file and its databases.

The configuration is ``--config`` or ``./listener.yaml``; the databases are the DSNs given (option,
environment, config) or, where none is, the embedded PostgreSQL server of the data directory, started for
the command and stopped after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from listener.defaults import DEFAULT_CONFIG_FILE
from listener.errors import ListenerError
from listener.ops import runs as runs_mod
from listener.pg.embedded import EmbeddedPostgres
from listener.rules.config import Config, load_config, parse_config


def load(path: str | None, *, required: bool = True) -> Config:
    """The configuration of ``path``, else of ./listener.yaml; without ``required``, no file means the
    defaults (no rules)."""
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


@contextlib.contextmanager
def databases(
    config: Config,
    *,
    dsn: str | None,
    state_dsn: str | None,
    data_dir: str,
    create: bool = True,
    on_embedded: Callable[[str], None],
) -> Iterator[tuple[str, str]]:
    """(source DSN, state DSN); starts the embedded server when no DSN is given anywhere (and tells
    ``on_embedded`` its DSN).  Without ``create`` (commands that only read or change existing state) a
    missing embedded cluster is an error, never a new cluster in the current directory."""
    dsn = dsn or config.dsn
    server: EmbeddedPostgres | None = None
    if dsn is None:
        if not create and not Path(data_dir).exists():
            raise ListenerError(
                f"no database given, and no embedded server in {Path(data_dir).absolute()}",
                hint="give --dsn / LISTENER_DSN (or `dsn:` in the config), or run this where `listener run`"
                " ran (or pass its --data-dir)",
            )
        server = EmbeddedPostgres(data_dir)
        dsn = server.start()
        on_embedded(dsn)
    try:
        yield dsn, state_dsn or config.state_dsn or dsn
    finally:
        if server is not None:
            server.stop()


@contextlib.contextmanager
def state(
    config: Config,
    *,
    dsn: str | None,
    state_dsn: str | None,
    data_dir: str,
    on_embedded: Callable[[str], None],
) -> Iterator[runs_mod.Conn]:
    """A connection to the existing state schema (never a new embedded cluster)."""
    with (
        databases(
            config, dsn=dsn, state_dsn=state_dsn, data_dir=data_dir, create=False, on_embedded=on_embedded
        ) as (_, found_dsn),
        runs_mod.connect(found_dsn, config.state_schema) as conn,
    ):
        yield conn
