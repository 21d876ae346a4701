"""How listener connects: the user's libpq parameters, whole, for both drivers, and the session settings
listener's own SQL text assumes.

The DSN is what libpq understands (``key=value`` pairs or a ``postgresql://`` URI, ``PG*`` variables,
``service`` entries of ``pg_service.conf``, ``passfile``).  libpq itself resolves it (:func:`resolve`); the
psycopg connections hand it to libpq unchanged, and :func:`asyncpg_params` translates the resolved values
into asyncpg's arguments: the TLS files become an ``ssl.SSLContext`` built as libpq would, ``options`` and
``application_name`` become startup settings.  Parameters asyncpg cannot honour are refused with the reason
(:func:`asyncpg_params`), never dropped.

Every session pins :data:`SESSION_SETTINGS`: a database, role or ``PGOPTIONS`` with
``standard_conforming_strings = off`` would make the server read ``'a\\b'`` in a row filter as an escape
string, another ``DateStyle`` or ``extra_float_digits`` would change how values print in the stream or in
COPY, another ``TimeZone`` what a timestamp constant means.  They go in the startup packet (``options`` /
asyncpg's ``server_settings``), so a reconnect or a pooled connection has them too.

Errors never show the DSN's password: :func:`redact` gives the DSN to print.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from listener.defaults import CONNECT_TIMEOUT_S
from listener.errors import ConfigError, from_driver

Conn = psycopg.Connection[tuple[Any, ...]]
AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]

# What listener's SQL text and value parsing assume, whatever the server's defaults.
SESSION_SETTINGS: Mapping[str, str] = {
    "standard_conforming_strings": "on",  # 'a\b' is a, backslash, b (as pglast parses rules)
    "TimeZone": "UTC",  # timestamp constants and output in UTC, as listener.rules.predicate evaluates them
    "DateStyle": "ISO, YMD",  # dates print and parse as psycopg's loaders expect
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",  # floats print exactly (shortest round-trip form)
    "bytea_output": "hex",
}

DSN_HINT = "check the DSN (--dsn, LISTENER_DSN or `dsn:` in the config file); e.g. postgresql://user@host/db"


def redact(dsn: str) -> str:
    """``dsn`` as a conninfo string without its password, fit for an error message or a log line."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(a DSN libpq cannot parse)"
    if "password" in params:
        params["password"] = "********"
    return make_conninfo(**params)  # type: ignore[arg-type]


def where(dsn: str) -> str:
    """``user@host:port/dbname`` as libpq resolves ``dsn``, for a log line (no password, no file names)."""
    p = resolve(dsn)
    host = p.get("host") or p.get("hostaddr") or "localhost"
    return f"{p.get('user', '')}@{host}:{p.get('port') or '5432'}/{p.get('dbname', '')}"


def resolve(dsn: str) -> dict[str, str]:
    """Every connection parameter as libpq will use it for ``dsn``: the DSN's own values, then its
    ``service`` entry, then the ``PG*`` variables (and ``PGSERVICE``'s entry), then libpq's defaults."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's message may quote any part of the DSN, its password included.
        raise ConfigError(
            "the DSN is not a libpq connection string (key=value pairs or a postgresql:// URI)", hint=DSN_HINT
        ) from None
    explicit = _values(pq.Conninfo.parse(dsn.encode()))
    if "service" not in explicit:
        # PQconndefaults: the PG* variables, PGSERVICE's entry and the built-in defaults.
        return {**_values(pq.Conninfo.get_defaults()), **explicit}
    # libpq reads a DSN's own `service` entry only as it starts a connection: start one, read what it
    # resolved, and abandon it before a byte is sent (the server sees a connection opened and closed).
    pgconn = pq.PGconn.connect_start(dsn.encode())
    try:
        if pgconn.status == pq.ConnStatus.BAD:
            message = pgconn.get_error_message().strip()
            raise ConfigError(f"invalid connection parameters in {redact(dsn)}: {message}", hint=DSN_HINT)
        return _values(pgconn.info)
    finally:
        pgconn.finish()


def _values(options: list[pq.ConninfoOption]) -> dict[str, str]:
    return {o.keyword.decode(): o.val.decode() for o in options if o.val is not None}


def options_switches(settings: Mapping[str, str]) -> str:
    """``settings`` as libpq ``options``: ``-c name=value`` each, spaces and backslashes escaped."""
    pairs = (f"{name}={value}" for name, value in settings.items())
    escaped = (pair.replace("\\", "\\\\").replace(" ", "\\ ") for pair in pairs)
    return " ".join(f"-c {switch}" for switch in escaped)


def psycopg_params(dsn: str, connect_timeout: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``psycopg.connect(dsn, ...)``: ``options`` are the user's own (from the DSN,
    its service or PGOPTIONS), then listener's pinned settings, which win (the server applies them in
    order); ``connect_timeout`` only when libpq has none for ``dsn``."""
    resolved = resolve(dsn)
    params: dict[str, Any] = {
        "options": f"{resolved.get('options', '')} {options_switches(SESSION_SETTINGS)}".strip()
    }
    if connect_timeout is not None and not resolved.get("connect_timeout"):
        params["connect_timeout"] = connect_timeout
    return params


def connect(
    dsn: str, *, what: str = "the database", connect_timeout: int | None = None, **kwargs: Any
) -> Conn:
    """A psycopg connection with the pinned session settings (autocommit unless told otherwise)."""
    kwargs.setdefault("autocommit", True)
    params = psycopg_params(dsn, connect_timeout)
    try:
        return psycopg.connect(dsn, **params, **kwargs)
    except psycopg.OperationalError as exc:
        raise from_driver(exc, f"cannot connect to {what}", hint=DSN_HINT) from exc


async def connect_async(
    dsn: str, *, what: str = "the database", connect_timeout: int | None = None, **kwargs: Any
) -> AsyncConn:
    """The asynchronous :func:`connect` (``replication="database"`` for a walsender session)."""
    kwargs.setdefault("autocommit", True)
    params = await asyncio.to_thread(psycopg_params, dsn, connect_timeout)  # libpq may resolve a host
    try:
        return await psycopg.AsyncConnection.connect(dsn, **params, **kwargs)
    except psycopg.OperationalError as exc:
        raise from_driver(exc, f"cannot connect to {what}", hint=DSN_HINT) from exc


# ---------------------------------------------------------------------------------------------------------
# asyncpg

# libpq's default places of the client's TLS files (https://www.postgresql.org/docs/current/libpq-ssl.html)
_DOT_POSTGRESQL = Path("~/.postgresql")
_TLS_VERSIONS = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
                 "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}  # fmt: skip
# Parameters asyncpg has no counterpart for, and what they are for: with sslmode=verify-full the server is
# authenticated by its certificate, which is what they protect (no one in between can choose the
# authentication method or relay the exchange), so they are accepted there and refused otherwise.
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_NEED_VERIFY_FULL = {
    "channel_binding": ("require",),
    "require_auth": None,  # any value
}


def asyncpg_params(dsn: str, settings: Mapping[str, str] = SESSION_SETTINGS) -> dict[str, Any]:
    """Keyword arguments of ``asyncpg.connect`` / ``create_pool`` for ``dsn`` as libpq resolves it, with
    ``settings`` (and the DSN's ``options`` and ``application_name``) as ``server_settings``."""
    p = resolve(dsn)
    for name, refused in _NEED_VERIFY_FULL.items():
        value = p.get(name)
        if value and (refused is None or value in refused) and p.get("sslmode") != "verify-full":
            raise ConfigError(
                f"{name}={value} in {redact(dsn)} cannot be honoured by the state store's driver (asyncpg)",
                hint="use sslmode=verify-full with a root certificate (sslrootcert): it authenticates the "
                f"server itself, then {name} is not needed for it and listener accepts it; or set a "
                "state_dsn without it",
            )
    params: dict[str, Any] = {}
    hosts = p.get("host") or p.get("hostaddr")
    if hosts:
        params["host"] = hosts.split(",")
    if p.get("port"):
        try:
            params["port"] = [int(x) for x in p["port"].split(",")]
        except ValueError:
            raise ConfigError(f"invalid port {p['port']!r} in {redact(dsn)}", hint=DSN_HINT) from None
        if "host" not in params or len(params["port"]) == 1:
            params["port"] = params["port"][0]
    for key, name in (("user", "user"), ("dbname", "database"), ("password", "password"),
                      ("passfile", "passfile"), ("target_session_attrs", "target_session_attrs"),
                      ("krbsrvname", "krbsrvname")):  # fmt: skip
        if p.get(key):
            params[name] = p[key]
    if p.get("connect_timeout"):
        params["timeout"] = max(2.0, float(p["connect_timeout"]))  # libpq: below 2 means 2
    if p.get("sslnegotiation") == "direct":
        params["direct_tls"] = True
    params.update(_asyncpg_tls(p))
    server_settings = {**settings}
    if p.get("options"):
        server_settings["options"] = p["options"]  # the server applies these first, then the rest
    app = p.get("application_name") or p.get("fallback_application_name")
    if app:
        server_settings["application_name"] = app
    params["server_settings"] = server_settings
    return params


def _asyncpg_tls(p: Mapping[str, str]) -> dict[str, Any]:
    """asyncpg's ``ssl`` (and ``dsn`` for the TLS files of the optional modes) for libpq's TLS params."""
    mode = p.get("sslmode", "prefer")
    if mode not in _SSLMODES:
        raise ConfigError(f"invalid sslmode {mode!r}", hint=f"one of {', '.join(_SSLMODES)}")
    if mode == "disable":
        return {"ssl": False}
    files = {k: p[k] for k in ("sslcert", "sslkey", "sslpassword", "sslrootcert", "sslcrl") if p.get(k)}
    if mode in ("allow", "prefer"):
        # No verification either way; asyncpg implements the fallback to plain text these modes allow.
        query = urllib.parse.urlencode({"sslmode": mode, **files})
        return {"dsn": f"postgresql://?{query}"}
    return {"ssl": ssl_context(p)}


def ssl_context(p: Mapping[str, str]) -> ssl.SSLContext:
    """An SSLContext doing what libpq does for sslmode require, verify-ca or verify-full with the given
    (or default ``~/.postgresql/``) root certificate, revocation list, client certificate and key."""
    mode = p.get("sslmode", "require")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    root = p.get("sslrootcert") or _default_file("root.crt")
    if mode in ("verify-ca", "verify-full") and root is None:
        raise ConfigError(
            f"sslmode={mode} needs a root certificate, and ~/.postgresql/root.crt does not exist",
            hint="set sslrootcert=/path/to/ca.pem in the DSN (or PGSSLROOTCERT)",
        )
    # libpq: with a root certificate file present, sslmode=require verifies the server's chain too.
    if root is not None:
        try:
            if root == "system":
                ctx.load_default_certs()
            else:
                ctx.load_verify_locations(cafile=root)
        except OSError as exc:
            raise ConfigError(
                f"cannot read the root certificate {root}: {exc.strerror or exc}",
                hint="fix sslrootcert in the DSN (or PGSSLROOTCERT)",
            ) from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = mode == "verify-full" or root == "system"
        crl = p.get("sslcrl") or _default_file("root.crl")
        if crl is not None:
            ctx.load_verify_locations(cafile=crl)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
        if p.get("sslcrldir"):
            ctx.load_verify_locations(capath=p["sslcrldir"])
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    else:
        ctx.verify_mode = ssl.CERT_NONE
    # libpq goes on without a client certificate whose file does not exist (sslcertmode=require aside).
    cert = p.get("sslcert") or _default_file("postgresql.crt")
    if cert is not None and not os.path.exists(cert) and p.get("sslcertmode") != "require":
        cert = None
    if cert is not None and p.get("sslcertmode") != "disable":
        key = p.get("sslkey") or _default_file("postgresql.key")
        password = p.get("sslpassword", "")
        try:
            ctx.load_cert_chain(cert, keyfile=key, password=lambda: password)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client certificate {cert} (key {key or 'in the same file'}): {exc}",
                hint="fix sslcert, sslkey or sslpassword in the DSN",
            ) from exc
    if p.get("ssl_min_protocol_version") in _TLS_VERSIONS:
        ctx.minimum_version = _TLS_VERSIONS[p["ssl_min_protocol_version"]]
    if p.get("ssl_max_protocol_version") in _TLS_VERSIONS:
        ctx.maximum_version = _TLS_VERSIONS[p["ssl_max_protocol_version"]]
    return ctx


def _default_file(name: str) -> str | None:
    path = _DOT_POSTGRESQL.expanduser() / name
    return str(path) if os.path.exists(path) else None


@contextmanager
def connection(dsn: str, *, what: str = "the database") -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection with listener's session settings, closed on the way out."""
    conn = connect(dsn, what=what, connect_timeout=CONNECT_TIMEOUT_S)
    try:
        yield conn
    finally:
        conn.close()
