"""The DSN as libpq resolves it, translated for asyncpg; no password in any message (no server needed:
libpq resolves a DSN before it connects)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from listener.errors import ConfigError
from listener.pg.conninfo import asyncpg_params, options_switches, psycopg_params, redact, resolve

SECRET = "s3cret-Pa55"


def test_redact_never_shows_the_password() -> None:
    assert SECRET not in redact(f"postgresql://app:{SECRET}@db.example.com/app")
    assert SECRET not in redact(f"host=db password={SECRET} dbname=app")
    assert "db.example.com" in redact(f"postgresql://app:{SECRET}@db.example.com/app")


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=127.0.0.1 password={SECRET} sslmode=bogus",  # libpq refuses a value
        f"postgresql://app:{SECRET}@127.0.0.1:notaport/app",  # libpq cannot parse it
        f"host=127.0.0.1 password={SECRET} nosuchparam=1",
    ],
)
def test_a_bad_dsn_is_named_without_its_password(dsn: str) -> None:
    with pytest.raises(ConfigError) as caught:
        asyncpg_params(dsn)
    assert SECRET not in str(caught.value)


def test_a_service_and_pg_variables_reach_asyncpg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = tmp_path / "pg_service.conf"
    services.write_text(
        "[ledger]\nhost=127.0.0.1\nport=6543\nuser=ledger_reader\ndbname=ledger\n"
        "options=-c work_mem=7MB\nsslmode=disable\ntarget_session_attrs=read-write\n"
    )
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.setenv("PGAPPNAME", "listener-test")
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "pgpass"))
    params = asyncpg_params("service=ledger connect_timeout=5")
    assert params["host"] == ["127.0.0.1"] and params["port"] == 6543
    assert (params["user"], params["database"]) == ("ledger_reader", "ledger")
    assert params["ssl"] is False and params["target_session_attrs"] == "read-write"
    assert params["passfile"] == str(tmp_path / "pgpass") and params["timeout"] == 5.0
    settings = params["server_settings"]
    assert settings["options"] == "-c work_mem=7MB" and settings["application_name"] == "listener-test"
    assert settings["standard_conforming_strings"] == "on"  # listener's pinned settings come along
    # the psycopg side: the service's options, then the pinned settings
    options = psycopg_params("service=ledger")["options"]
    assert options.startswith("-c work_mem=7MB -c standard_conforming_strings=on")


def test_pgoptions_apply_when_the_dsn_has_no_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=5s")
    assert resolve("host=127.0.0.1")["options"] == "-c statement_timeout=5s"
    assert "statement_timeout" not in resolve("host=127.0.0.1 options='-c work_mem=1MB'")["options"]


def test_verify_full_gives_asyncpg_a_verifying_context() -> None:
    params = asyncpg_params("host=127.0.0.1 sslmode=verify-full sslrootcert=system")
    context = params["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_prefer_leaves_the_fallback_to_asyncpg() -> None:
    params = asyncpg_params("host=127.0.0.1 sslmode=prefer")
    assert params["dsn"] == "postgresql://?sslmode=prefer" and "ssl" not in params


def test_what_asyncpg_cannot_enforce_is_refused_unless_the_certificate_authenticates_the_server() -> None:
    for extra in ("channel_binding=require", "require_auth=scram-sha-256"):
        with pytest.raises(ConfigError) as caught:
            asyncpg_params(f"host=127.0.0.1 sslmode=require {extra}")
        assert extra in str(caught.value) and "verify-full" in str(caught.value)
        asyncpg_params(f"host=127.0.0.1 sslmode=verify-full sslrootcert=system {extra}")


def test_options_switches_escape_spaces_and_backslashes() -> None:
    switches = options_switches({"DateStyle": "ISO, YMD", "x.y": "a\\b"})
    assert switches == "-c DateStyle=ISO,\\ YMD -c x.y=a\\\\b"
