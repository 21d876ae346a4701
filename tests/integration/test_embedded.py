"""The embedded server's safety (issue 9.11): listener creates its data directory and refuses one it did not
create, never follows a link, demands a password, runs the server without root's groups and attaches only to
the server of its own data directory."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from listener.errors import ListenerError
from listener.pg import embedded
from listener.pg.embedded import PASSFILE, SERVER_OS_USER, EmbeddedPostgres
from tests.support import reachable_tmpdir

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another OS user only under root")


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with reachable_tmpdir("listener-test-embedded-") as path:
        yield path


@pytest.fixture(scope="module")
def server(base: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(base / "pgdata", settings={"fsync": "off"})
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def test_the_server_demands_the_password_that_only_the_passfile_holds(server: EmbeddedPostgres) -> None:
    dsn = server.dsn()
    info = conninfo_to_dict(dsn)
    assert info["passfile"] == str(server.passfile)
    password = server.passfile.read_text().strip().rsplit(":", 1)[1]
    assert len(password) >= 32 and password not in dsn  # the secret never appears in a printed DSN
    st = server.passfile.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    without = f"host=127.0.0.1 port={info['port']} user=postgres dbname=postgres passfile=/nonexistent"
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(without)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(without + " password=wrong")
    with psycopg.connect(dsn) as conn:  # and in pg_hba.conf, every TCP line asks for SCRAM
        rules = conn.execute("SELECT type, auth_method FROM pg_hba_file_rules").fetchall()
    assert rules and all(method == "scram-sha-256" for _, method in rules)


@as_root
def test_the_server_runs_with_its_own_group_and_no_other(server: EmbeddedPostgres) -> None:
    pid = int((server.data_dir / "postmaster.pid").read_text().splitlines()[0])
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    import pwd

    entry = pwd.getpwnam(SERVER_OS_USER)
    assert status["Uid"].split()[0] == str(entry.pw_uid)
    assert set(status["Gid"].split()) == {str(entry.pw_gid)}  # not root's group 0
    assert status["Groups"].split() in ([], [str(entry.pw_gid)])  # no supplementary groups


def test_a_second_object_attaches_to_the_running_server_after_checking_it(server: EmbeddedPostgres) -> None:
    other = EmbeddedPostgres(server.data_dir)
    assert other.start() == server.dsn() and not other.started_here


def test_a_postmaster_pid_naming_another_server_is_refused(
    server: EmbeddedPostgres, base: Path, pg_server: str
) -> None:
    """A stale (or planted) postmaster.pid with a live pid and the port of another server: not attached."""
    planted = EmbeddedPostgres(base / "stale", settings={"fsync": "off"})
    planted.start()
    planted.stop()
    pid_file = planted.data_dir / "postmaster.pid"
    other_port = conninfo_to_dict(pg_server)["port"]
    lines = (server.data_dir / "postmaster.pid").read_text().splitlines()
    lines[3] = str(other_port)  # a live postmaster's pid, another server's port
    pid_file.write_text("\n".join(lines) + "\n")
    try:
        with pytest.raises(ListenerError, match=f"postmaster.pid names port {other_port}") as info:
            EmbeddedPostgres(planted.data_dir).start()
        assert info.value.hint is not None and "postmaster.pid" in info.value.hint
    finally:
        pid_file.unlink()


def test_a_directory_listener_did_not_create_is_refused_and_its_links_are_not_followed(base: Path) -> None:
    """A planted data directory (here an old-style cluster made without a password, with a link to a
    root-owned file and a postmaster.pid) is refused before anything in it is touched."""
    planted = base / "planted"
    planted.mkdir(mode=0o700)
    secret = base / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    (planted / "PG_VERSION").write_text("18\n")
    (planted / "link").symlink_to(secret)
    (planted / "postmaster.pid").write_text(f"{os.getpid()}\n{planted}\n0\n5432\n")
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam(SERVER_OS_USER)
        os.chown(planted, entry.pw_uid, entry.pw_gid)
    with pytest.raises(ListenerError, match="did not create it") as info:
        EmbeddedPostgres(planted).start()
    assert info.value.hint is not None and f"delete {planted}" in info.value.hint
    st = secret.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600)  # not handed to anyone

    (planted / PASSFILE).symlink_to(secret)  # a link in place of the password file: refused too
    with pytest.raises(ListenerError, match="did not create it"):
        EmbeddedPostgres(planted).start()


def test_a_data_directory_that_is_a_link_is_refused(server: EmbeddedPostgres, base: Path) -> None:
    link = base / "linked"
    link.symlink_to(server.data_dir)
    with pytest.raises(ListenerError, match="symbolic link"):
        EmbeddedPostgres(link).start()


@as_root
def test_unreachable_parents_are_reported_not_opened_up(base: Path) -> None:
    private = base / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ListenerError, match=f"{private} is mode 0700") as info:
        EmbeddedPostgres(private / "pgdata").start()
    assert info.value.hint is not None and f"chmod o+x {private}" in info.value.hint
    assert stat.S_IMODE(private.stat().st_mode) == 0o700 and not (private / "pgdata").exists()


@as_root
def test_binaries_under_a_private_directory_run_from_a_root_owned_copy(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A virtualenv under a private directory (a home, ``mktemp -d``): the server runs from a copy of the
    installation that its OS user can reach, and the private directory stays private."""
    private = base / "private-venv"
    private.mkdir(mode=0o700)
    install = embedded.bin_dir().parent  # the layout of a virtualenv: <package>/pginstall, <package>.libs
    package = install.parent
    shutil.copytree(install, private / package.name / install.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, private / libs.name, symlinks=True)
    monkeypatch.setenv("LISTENER_PG_BIN", str(private / package.name / install.name / "bin"))
    monkeypatch.setattr(embedded, "INSTALL_CACHE", base / "install-cache")
    pg = EmbeddedPostgres(base / "pgdata-copied", settings={"fsync": "off"})
    assert pg.bin.is_relative_to(base / "install-cache") and (pg.bin / "postgres").exists()
    st = (base / "install-cache").stat()
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755
    pg.start()
    try:
        with psycopg.connect(pg.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pg.stop()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    # a second server of the same installation reuses the copy
    assert EmbeddedPostgres(base / "pgdata-copied").bin == pg.bin
