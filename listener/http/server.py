"""The HTTP server inside `listener run` (``http:`` in the config): uvicorn, on the service's own event
loop, serving :func:`listener.http.app.make_app`.

The socket is bound here, before uvicorn starts, so that a port in use or an address this machine does not
have is one clear error naming ``http.listen`` (uvicorn would log it and exit the process).  The service's
signal handlers stay the service's: uvicorn's own are not installed, and the server stops when the
service's ``stop`` is set, letting requests in flight finish for ``http.shutdown_grace_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import socket
from collections.abc import Iterator

import uvicorn

from listener.defaults import HTTP_BACKLOG
from listener.errors import ConfigError
from listener.http.app import App
from listener.rules.config import Config

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: the service has its own (SIGTERM, SIGINT, SIGHUP)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(config: Config, *, option: str | None = None) -> socket.socket:
    """The listening socket of ``http.listen``; a ConfigError naming the setting, its line and the fix
    when the address cannot be had (naming the command-line ``option`` instead when it gave the address)."""
    assert config.http is not None
    listen = config.http.listen
    host, port = config.http.address
    file, line = config.setting_place("http", "listen") if option is None else (None, None)
    name = option or "http.listen"

    def refused(what: str, hint: str) -> ConfigError:
        return ConfigError(f"{name} {listen!r}: {what}", file=file, line=line, hint=hint)

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise refused(
            f"cannot resolve {host!r}: {exc.strerror}",
            "use an IP address of this machine (127.0.0.1, 0.0.0.0, [::1]) or a name it resolves",
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(HTTP_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise refused(
                "the address is already in use",
                f"stop what listens there (`ss -ltnp 'sport = :{port}'` shows it), or choose another port",
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise refused(
                f"this machine has no address {host}",
                "listen on one of its addresses, or on 0.0.0.0 (every IPv4 address) / [::] (every IPv6 one)",
            ) from None
        if exc.errno == errno.EACCES:
            raise refused(
                f"not allowed to listen on port {port}",
                "use a port from 1024 up, or give the service CAP_NET_BIND_SERVICE",
            ) from None
        raise refused(f"cannot listen: {exc.strerror}", "check the address and port") from None
    return sock


def url(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (with the port the system chose for port 0)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(app: App, config: Config, stop: asyncio.Event, sock: socket.socket | None = None) -> None:
    """Serve ``app`` on ``http.listen`` (or on ``sock``, bound already) until ``stop`` is set."""
    assert config.http is not None
    sock = sock if sock is not None else bind(config)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if uvicorn_log.level == logging.NOTSET:  # its start and stop lines say less than ours
        uvicorn_log.setLevel(logging.WARNING)
    server = _Server(
        uvicorn.Config(
            app,
            loop="none",  # the service's loop
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=math.ceil(config.http.shutdown_grace_s),  # uvicorn takes whole seconds
        )
    )

    async def stop_when_told() -> None:
        await stop.wait()
        server.should_exit = True

    # the socket listens already: connections wait in its backlog until uvicorn accepts them
    logger.info("HTTP server listening on %s (/healthz, /readyz, /metrics)", url(sock))
    stopper = asyncio.create_task(stop_when_told(), name="http-stop")
    try:
        await server.serve(sockets=[sock])
        if not stop.is_set():
            raise RuntimeError(f"the HTTP server on {url(sock)} stopped while the service runs")
    finally:
        stopper.cancel()
        sock.close()
