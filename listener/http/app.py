"""The ASGI application `listener run` serves when its config has an ``http:`` section.

It answers the health checks of a load balancer, systemd or Kubernetes, and Prometheus:

- ``GET /healthz``: 200 while the service runs (liveness: its event loop answers);
- ``GET /readyz``: 200 while the service streams the slot (or stands by for the replica that does), the
  state database takes writes and ingest's lag is under ``http: ready_max_lag_s``; else 503 with the
  reason (readiness: events committed now will be picked up soon);
- ``GET /metrics``: the Prometheus metrics (listener.metrics), in the text format (OpenMetrics when asked);

and the ``webhooks:`` paths (``listener.http.webhooks``).  Anything else is 404 (405 for another method on
those paths).  Every other answer is a small JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Why the service is not ready, or None when it is.
NotReady = Callable[[], Awaitable[str | None]]
#: The body and content type of /metrics, given the request's Accept header (listener.metrics)
Metrics = Callable[[str | None], Awaitable[tuple[bytes, str]]]
#: Answers a request to one of its paths (True), or leaves it (False): the webhooks (listener.http.webhooks)
Handler = Callable[[Scope, Receive, Send], Awaitable[bool]]

_HEALTH_METHODS = ("GET", "HEAD")


async def respond(
    send: Send,
    status: int,
    body: dict[str, Any],
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> None:
    """Send one complete JSON response (no body for HEAD)."""
    data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
    fields = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    fields += [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()
    ]
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})


def make_app(not_ready: NotReady, webhooks: Handler | None = None, metrics: Metrics | None = None) -> App:
    """The service's application; ``not_ready`` says why the service is not ready (None: it is);
    ``webhooks`` answers the webhooks' paths; ``metrics`` renders ``/metrics``."""
    paths = ("/healthz", "/readyz", "/metrics") if metrics is not None else ("/healthz", "/readyz")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served without lifespan events, but answer them if asked
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":  # a websocket: refused by the server before it reaches here
            return
        path, method = scope["path"], scope["method"]
        if webhooks is not None and await webhooks(scope, receive, send):
            return
        if path not in paths:
            await respond(send, 404, {"error": f"no such path: {path}"}, method=method)
            return
        if method not in _HEALTH_METHODS:
            allow = ", ".join(_HEALTH_METHODS)
            await respond(send, 405, {"error": f"{method} {path}: use {allow}"}, headers={"allow": allow})
            return
        if path == "/healthz":
            await respond(send, 200, {"status": "ok"}, method=method)
            return
        if path == "/metrics":
            assert metrics is not None
            accept = dict(scope["headers"]).get(b"accept", b"").decode("latin-1") or None
            body, content_type = await metrics(accept)
            fields = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": fields})
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
            return
        reason = await not_ready()
        if reason is None:
            await respond(send, 200, {"status": "ready"}, method=method)
        else:
            await respond(send, 503, {"status": "not ready", "reason": reason}, method=method)

    return app
