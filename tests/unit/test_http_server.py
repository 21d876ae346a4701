"""The HTTP server of ``http:``: its config, the listening socket's errors, and the health endpoints,
served by uvicorn over real TCP and asked by a real HTTP client (urllib)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from listener.errors import ConfigError
from listener.http import server
from listener.http.app import make_app
from listener.rules.config import load_config, parse_config
from listener.rules.config.validators import parse_listen


def http_config(tmp_path: Path, listen: str) -> Path:
    path = tmp_path / "listener.yaml"
    path.write_text(f'slot: s\nhttp:\n  listen: "{listen}"\nrules: []\n', encoding="utf-8")
    return path


# --- config ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_listen_is_host_and_port(listen: str, address: tuple[str, int]) -> None:
    assert parse_listen(listen) == address


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("8080", "is not host:port"),
        (":8080", "is not host:port"),
        ("localhost:", "is not host:port"),
        ("localhost:http", "is not host:port"),
        ("localhost:65536", "beyond 65535"),
        ("::1:8080", "in brackets"),
        ("[::1:8080", "in brackets"),
    ],
)
def test_a_bad_listen_names_the_line_and_the_form(tmp_path: Path, listen: str, reason: str) -> None:
    path = http_config(tmp_path, listen)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}:3" in message and "http.listen" in message and reason in message, message
    assert info.value.hint is not None and "127.0.0.1:8080" in info.value.hint


def test_http_is_off_unless_configured_and_has_a_shutdown_grace() -> None:
    assert parse_config("rules: []\n").http is None
    config = parse_config('http: {listen: "127.0.0.1:0", shutdown_grace_s: 2}\n')
    assert config.http is not None and config.http.shutdown_grace_s == 2
    with pytest.raises(ConfigError, match="shutdown_grace_s"):
        parse_config('http: {listen: "127.0.0.1:0", shutdown_grace_s: -1}\n')
    with pytest.raises(ConfigError, match="listen"):
        parse_config("http: {}\n")


# --- the listening socket -------------------------------------------------------------------------------


def test_a_port_in_use_is_one_error_naming_the_setting_its_line_and_the_fix(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = http_config(tmp_path, f"127.0.0.1:{port}")
        with pytest.raises(ConfigError) as info:
            server.bind(load_config(path))
    message = str(info.value)
    assert message.startswith(f"{path}:3: http.listen '127.0.0.1:{port}': the address is already in use")
    assert info.value.hint is not None and f"sport = :{port}" in info.value.hint


def test_an_address_this_machine_lacks_is_named(tmp_path: Path) -> None:
    path = http_config(tmp_path, "192.0.2.1:8080")  # TEST-NET-1: on no machine
    with pytest.raises(ConfigError, match=re.escape("this machine has no address 192.0.2.1")):
        server.bind(load_config(path))


def test_an_unresolvable_host_is_named(tmp_path: Path) -> None:
    path = http_config(tmp_path, "no-such-host.invalid:8080")
    with pytest.raises(ConfigError, match=re.escape("cannot resolve 'no-such-host.invalid'")):
        server.bind(load_config(path))


# --- the endpoints, over TCP ----------------------------------------------------------------------------


@asynccontextmanager
async def serving(tmp_path: Path, reason: list[str | None]) -> AsyncIterator[str]:
    """The app served on a free port of 127.0.0.1 until the block ends; yields its URL."""
    config = load_config(http_config(tmp_path, "127.0.0.1:0"))
    sock = server.bind(config)
    base = server.url(sock)
    stop = asyncio.Event()

    async def not_ready() -> str | None:
        return reason[0]

    async def metrics(accept: str | None) -> tuple[bytes, str]:
        return f"# accept: {accept}\n".encode(), "text/plain; version=0.0.4; charset=utf-8"

    task = asyncio.create_task(server.serve(make_app(not_ready, None, metrics), config, stop, sock))
    try:
        yield base
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert sock.fileno() == -1  # closed


def request(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as answer:
        return answer.code, dict(answer.headers), answer.read()


async def ask(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(request, url, method)


async def test_healthz_and_readyz_answer_in_json(tmp_path: Path) -> None:
    reason: list[str | None] = [
        "ingest is not streaming from the replication slot (starting, or reconnecting)"
    ]
    async with serving(tmp_path, reason) as base:
        status, headers, body = await ask(f"{base}/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert headers["content-type"] == "application/json" and "server" not in {h.lower() for h in headers}
        status, _, body = await ask(f"{base}/readyz")
        assert (status, json.loads(body)) == (503, {"status": "not ready", "reason": reason[0]})
        reason[0] = None
        status, _, body = await ask(f"{base}/readyz")
        assert (status, json.loads(body)) == (200, {"status": "ready"})
        status, headers, body = await ask(f"{base}/healthz", "HEAD")
        assert (status, body) == (200, b"") and int(headers["content-length"]) > 0


async def test_metrics_are_served_as_text_with_the_scrapers_accept_header(tmp_path: Path) -> None:
    async with serving(tmp_path, [None]) as base:
        status, headers, body = await ask(f"{base}/metrics")
        assert (status, headers["content-type"]) == (200, "text/plain; version=0.0.4; charset=utf-8")
        assert body == b"# accept: None\n" and int(headers["content-length"]) == len(body)
        status, headers, body = await ask(f"{base}/metrics", "HEAD")
        assert (status, body) == (200, b"") and int(headers["content-length"]) > 0
        status, headers, _ = await ask(f"{base}/metrics", "POST")
        assert status == 405 and headers["allow"] == "GET, HEAD"


async def test_other_paths_and_methods_are_refused(tmp_path: Path) -> None:
    async with serving(tmp_path, [None]) as base:
        status, _, body = await ask(f"{base}/nothing/here")
        assert (status, json.loads(body)) == (404, {"error": "no such path: /nothing/here"})
        status, headers, body = await ask(f"{base}/healthz", "POST")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert json.loads(body) == {"error": "POST /healthz: use GET, HEAD"}


async def test_the_server_stops_with_the_service_and_lets_the_port_go(tmp_path: Path) -> None:
    async with serving(tmp_path, [None]) as base:
        assert (await ask(f"{base}/healthz"))[0] == 200
    port = int(base.rpartition(":")[2])
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))
