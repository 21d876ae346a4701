"""Webhooks: a provider's POST becomes events, durable before the provider hears 2xx, once per delivery.

A request to a ``webhooks:`` entry's ``path`` is read (at most ``max_body``: 413), verified by the entry's
preset (``listener.http.verify``: 401, or 400 for a stale timestamp), and its body parsed (JSON, or an
HTML form as an object: else 400 with the reason).  The rules naming the webhook are evaluated on it
(``when:`` sees ``body``, ``headers``, ``query`` as jsonb and ``method``, ``path`` as text, with
PostgreSQL's semantics), and each matching rule makes one event, keyed ``rule/webhook/delivery id/0``: the
provider's delivery id (or the body's SHA-256 when it sends none), so a redelivery inserts nothing.

:class:`WebhookSource` is one of the ingest's sources (``listener.ingest.source``): it runs in each
streaming session, with the session's rules.  It puts all the deliveries that arrived meanwhile in one
batch (a group commit) and commits it itself, up to ``WEBHOOK_WRITERS`` batches at once (they carry no
position, so they need not queue behind the slot's); a request is answered 200 only after its batch
committed.  When ingest is not
streaming (starting, reconnecting), when the batch is not durable within ``WEBHOOK_WRITE_TIMEOUT_S``,
when ``WEBHOOK_PENDING_BYTES`` of bodies already wait, or when more runs than ``http: max_backlog:`` wait
in the queue, the answer is 503 with ``Retry-After``: the provider delivers again, and nothing answered
2xx is ever lost.  No workflow code runs in the handler.

Everything a request carries is checked before it joins a batch, so that no body can make the state
database refuse a batch (which would stop the ingest session and the requests batched with it): the body
must be UTF-8, and JSON that jsonb accepts (no ``\\u0000``, no lone surrogate, numbers in numeric's range,
nesting within what Python parses); a query or form value must not hold NUL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from listener import metrics
from listener.defaults import (
    BATCH_BYTES,
    WEBHOOK_BACKLOG_POLL_S,
    WEBHOOK_PENDING_BYTES,
    WEBHOOK_PRUNE_INTERVAL_S,
    WEBHOOK_PRUNE_ROWS,
    WEBHOOK_RETRY_AFTER_S,
    WEBHOOK_WRITE_TIMEOUT_S,
    WEBHOOK_WRITERS,
)
from listener.errors import ConfigError, is_transient
from listener.http.app import Receive, Scope, Send, respond
from listener.http.verify import Refused, Verifier, body_id, verifier
from listener.ingest.source import BatchQueue
from listener.ingest.state import IngestState
from listener.logs import fields
from listener.queue.batches import EventBatch
from listener.rules.compile import CompiledRule
from listener.rules.config import Config, WebhookSettings
from listener.rules.parts import RequestParts, Unfit, json_text, matches
from listener.rules.predicate import EvaluationError
from listener.supervise import shielded

logger = logging.getLogger(__name__)

# headers that carry credentials: never stored in an event
REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
_MAX_ID_CHARS = 200  # a longer delivery id (or one with control characters) is keyed by its SHA-256


def parse_body(raw: bytes, content_type: str) -> str:
    """The body as JSON text that jsonb takes (JSON as sent; a form as an object); Unfit says why not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unfit(f"the body is not UTF-8 (byte {exc.start})") from None
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        fields = _pairs(text, "form field")
        return json.dumps(fields, ensure_ascii=False)
    return json_text(text)


def _pairs(text: str, what: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise Unfit(f"a {what} is not UTF-8: {exc}") from None
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise Unfit(f"a {what} holds NUL, which PostgreSQL cannot store")
    return dict(pairs)  # a repeated name: its last value


def _delivery_key(webhook: str, delivery: str) -> str:
    if len(delivery) > _MAX_ID_CHARS or not delivery.isprintable():
        delivery = "sha256:" + hashlib.sha256(delivery.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{webhook}/{delivery}"


@dataclass(slots=True)
class _Delivery:
    """One verified request's events, waiting to be durable."""

    key: str  # webhook/delivery id: the events' commit stand-in
    events: list[tuple[CompiledRule, str, str | None]]  # (rule, payload JSON, run key)
    received: datetime
    nbytes: int
    kept: tuple[Any, ...] | None  # the request's row of webhook_requests (its webhook has `keep:`)
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True, slots=True)
class _Endpoint:
    settings: WebhookSettings
    verify: Verifier


def _secrets(config: Config, index: int, hook: WebhookSettings, environ: Mapping[str, str]) -> list[str]:
    if hook.secret_env is None:
        return []
    value = environ.get(hook.secret_env, "")
    secrets = value.split()
    if not secrets:
        file, line = config.setting_place("webhooks", str(index))
        raise ConfigError(
            f"webhook {hook.name!r}: the environment variable {hook.secret_env} is not set (or empty)",
            file=file,
            line=line,
            hint=f"export {hook.secret_env}=<the signing secret the provider shows> before `listener run` "
            "(several, separated by spaces, while the provider rotates keys)",
        )
    return secrets


def _verifier(config: Config, index: int, hook: WebhookSettings, environ: Mapping[str, str]) -> Verifier:
    try:
        return verifier(hook.verify, _secrets(config, index, hook, environ), hook.tolerance_s)
    except ValueError as exc:  # a secret the preset cannot use
        file, line = config.setting_place("webhooks", str(index))
        raise ConfigError(
            f"webhook {hook.name!r}: the secret in {hook.secret_env} cannot be used: {exc}",
            file=file,
            line=line,
            hint=f"copy the signing secret into {hook.secret_env} exactly as the provider shows it",
        ) from None


class WebhookSource:
    """The webhooks of a config, as an ingest source and as the HTTP handler of their paths."""

    name = "webhook"

    def __init__(self, config: Config, environ: Mapping[str, str] = os.environ) -> None:
        """The endpoints of ``config``'s webhooks, with their secrets (a missing one: ConfigError)."""
        self.ingest: IngestState | None = None  # the ingest whose rules and writer it serves (attach)
        self.endpoints = {
            hook.path: _Endpoint(hook, _verifier(config, i, hook, environ))
            for i, hook in enumerate(config.webhooks)
        }
        self._waiting: list[_Delivery] = []
        self._arrived = asyncio.Event()
        self._pending_bytes = 0  # of the deliveries not yet durable
        self.max_backlog = config.http.max_backlog if config.http is not None else None
        self._backlog_full = False  # more than max_backlog runs wait: new events are refused (503)

    def attach(self, ingest: IngestState) -> None:
        """Serve ``ingest``: its rules judge the requests, and this source joins its sources."""
        self.ingest = ingest
        ingest.sources.append(self)

    # -- the source seam --------------------------------------------------------------------------------

    async def run(self, out: BatchQueue) -> None:
        """Write the deliveries that arrive in batches, all that wait in one batch (up to ``BATCH_BYTES``),
        up to ``WEBHOOK_WRITERS`` batches at once, each a transaction of its own on a writer connection
        (``StateStore.write_batch``): webhook batches carry no position, so their order does not matter
        and they need not queue behind the slot's (``out`` is not used).  Beside them, count the queue's
        backlog against ``max_backlog`` and forget requests older than ``keep:``.  Ended (a session
        ends), it answers the deliveries not yet committed 503."""
        async with asyncio.TaskGroup() as tasks:
            if self.max_backlog is not None:
                tasks.create_task(self._watch_backlog(self.max_backlog), name="webhook-backlog")
            kept = {e.settings.name: e.settings.keep_s for e in self.endpoints.values()}
            if any(keep is not None for keep in kept.values()):
                tasks.create_task(self._prune(kept), name="webhook-prune")
            await self._write_batches(tasks)

    async def _prune(self, keep: dict[str, float | None]) -> None:
        """Forget the kept requests older than their webhook's ``keep:``, every ``WEBHOOK_PRUNE_INTERVAL_S``
        (a transient failure waits for the next round)."""
        assert self.ingest is not None
        store = self.ingest.store
        while True:
            for webhook, keep_s in keep.items():
                if keep_s is None:
                    continue
                try:
                    gone = WEBHOOK_PRUNE_ROWS
                    while gone == WEBHOOK_PRUNE_ROWS:  # more may be due
                        gone = await store.prune_webhook_requests(webhook, keep_s, WEBHOOK_PRUNE_ROWS)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    logger.warning(
                        "webhook %s: cannot forget old requests (%s); trying again later", webhook, exc
                    )
            await asyncio.sleep(WEBHOOK_PRUNE_INTERVAL_S)

    async def _watch_backlog(self, limit: int) -> None:
        """Every ``WEBHOOK_BACKLOG_POLL_S``, whether more than ``limit`` runs are pending; a transient
        failure to count keeps the last answer (a state database that is down refuses the writes anyway)."""
        assert self.ingest is not None
        while True:
            try:
                full = await self.ingest.store.runs_waiting(limit + 1) > limit
            except Exception as exc:
                if not is_transient(exc):
                    raise
            else:
                if full != self._backlog_full:
                    logger.warning(
                        "webhooks: %s %d runs wait in the queue (http: max_backlog): %s",
                        "more than" if full else "no more than",
                        limit,
                        "new events are answered 503 until the workers catch up"
                        if full
                        else "accepting again",
                    )
                self._backlog_full = full
            await asyncio.sleep(WEBHOOK_BACKLOG_POLL_S)

    async def _write_batches(self, tasks: asyncio.TaskGroup) -> None:
        """Batches of what waits, each written by a task of ``tasks`` once a writer is free (meanwhile
        more deliveries join the next batch)."""
        writers = asyncio.Semaphore(WEBHOOK_WRITERS)
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._waiting:
                await writers.acquire()
                batch, taken = self._batch()
                if not taken:
                    writers.release()
                    continue
                tasks.create_task(self._write(batch, taken, writers), name="webhook-write")

    async def _write(self, batch: EventBatch, taken: list[_Delivery], writers: asyncio.Semaphore) -> None:
        """Commit ``batch``, then answer its deliveries 200; if it fails, 503 (a failure that retrying
        cannot mend stops the source: the service stops loudly)."""
        assert self.ingest is not None
        ingest = self.ingest
        try:
            # shielded: a session that ends meanwhile lets the transaction finish (its answers are 503)
            inserted = await shielded(ingest.store.write_batch(batch))
        except BaseException as exc:
            lost = ConnectionError("the events were not written")
            for delivery in taken:
                self._settle(delivery, lost)
            if isinstance(exc, Exception) and is_transient(exc):
                logger.warning("webhooks: a batch of %d request(s) was not written: %s", len(taken), exc)
                return
            raise
        finally:
            writers.release()
        ingest.stats.batches += 1
        ingest.stats.events_inserted += inserted
        metrics.record_batch(batch, writer="webhooks")
        for delivery in taken:
            self._settle(delivery, None)

    def committed(self, batch: EventBatch) -> None:
        """Nothing: the webhooks write their own batches (``run``)."""

    def _batch(self) -> tuple[EventBatch, list[_Delivery]]:
        batch = EventBatch()
        taken: list[_Delivery] = []
        keys: set[str] = set()
        rest: list[_Delivery] = []
        for delivery in self._waiting:
            if delivery.done.done():  # its request gave up waiting
                self._pending_bytes -= delivery.nbytes
                continue
            if batch.nbytes >= BATCH_BYTES:
                rest.append(delivery)
                continue
            taken.append(delivery)
            if delivery.key in keys:  # the same delivery twice (a redelivery racing the first): once
                continue
            keys.add(delivery.key)
            if delivery.kept is not None:
                batch.requests.append(delivery.kept)
            for rule, payload, run_key in delivery.events:
                gid = batch.group_id(rule, None, None, delivery.key, None, delivery.received)
                batch.add(gid, 0, 0, payload, run_key)
        self._waiting = rest
        return batch, taken

    def _settle(self, delivery: _Delivery, error: BaseException | None) -> None:
        self._pending_bytes -= delivery.nbytes
        if delivery.done.done():
            return
        if error is None:
            delivery.done.set_result(None)
        else:
            delivery.done.set_exception(error)

    # -- HTTP -------------------------------------------------------------------------------------------

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer a request to a webhook's path (True), or leave it (False: not a webhook's path)."""
        endpoint = self.endpoints.get(scope["path"])
        if endpoint is None:
            return False
        method = scope["method"]
        if method != "POST":
            await respond(
                send,
                405,
                {"error": f"{method} {scope['path']}: webhooks are POSTed"},
                headers={"allow": "POST"},
            )
            return True
        if self.ingest is None:
            status, answer, retry = 503, {"error": "the service is starting: retry"}, True
        else:
            status, answer, retry = await self._answer(self.ingest, endpoint, scope, receive)
        headers = {"retry-after": str(WEBHOOK_RETRY_AFTER_S)} if retry else None
        await respond(send, status, answer, headers=headers)
        metrics.record_webhook(endpoint.settings.name, status)
        return True

    async def _answer(
        self, ingest: IngestState, endpoint: _Endpoint, scope: Scope, receive: Receive
    ) -> tuple[int, dict[str, Any], bool]:
        hook = endpoint.settings
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        limit = hook.max_body_bytes
        declared = headers.get("content-length", "")
        too_large = (
            413,
            {"error": f"the body is larger than {hook.max_body} (webhook {hook.name!r}: max_body)"},
        )
        if declared.isdigit() and int(declared) > limit:
            return (*too_large, False)
        raw = await _read_body(receive, limit)
        if raw is None:
            return (*too_large, False)
        try:
            verified = endpoint.verify(raw, headers, time.time())
        except Refused as refused:
            return refused.status, {"error": refused.reason}, False
        try:
            body = parse_body(raw, headers.get("content-type", ""))
            query = _pairs(scope.get("query_string", b"").decode("latin-1"), "query parameter")
        except Unfit as unfit:
            return 400, {"error": str(unfit)}, False
        if not ingest.streaming.is_set():  # before the rules: they are compiled when a session starts
            return 503, {"error": "ingest is not streaming (starting, or reconnecting): retry"}, True
        visible = {name: value for name, value in headers.items() if name not in REDACTED_HEADERS}
        delivery_id = verified.delivery_id or body_id(raw)
        request = Request(hook.name, delivery_id, body, visible, query, scope["method"], scope["path"])
        received = datetime.now(UTC)
        try:
            events = request.events(ingest.rules.webhooks.get(hook.name, ()), received)
        except EvaluationError as exc:
            logger.error(
                "webhook %s, delivery %s: a rule's `when:` failed: %s",
                hook.name,
                delivery_id,
                exc,
                extra=fields(webhook=hook.name),
            )
            return 500, {"error": f"a rule's `when:` failed on this request: {exc}"}, False
        kept = request.row(received) if hook.keep is not None else None
        if not events and kept is None:
            return 200, {"status": "accepted", "events": 0, "delivery": delivery_id}, False
        if events and self._backlog_full:
            error = f"more than {self.max_backlog} runs wait in the queue (http: max_backlog): retry"
            return 503, {"error": error}, True
        nbytes = sum(len(payload) for _, payload, _ in events) + len(body)
        if self._pending_bytes + nbytes > WEBHOOK_PENDING_BYTES and self._pending_bytes:
            return 503, {"error": "too many requests wait to be written: retry"}, True
        delivery = _Delivery(request.key, events, received, nbytes, kept)
        self._pending_bytes += delivery.nbytes
        self._waiting.append(delivery)
        self._arrived.set()
        try:
            async with asyncio.timeout(WEBHOOK_WRITE_TIMEOUT_S):  # cancels the wait: dropped from the
                await delivery.done  # next batch, if not in one yet
        except (TimeoutError, ConnectionError):
            return 503, {"error": "the events were not durable in time: retry"}, True
        return 200, {"status": "accepted", "events": len(events), "delivery": delivery_id}, False


@dataclass(frozen=True, slots=True)
class Request:
    """A verified request, as the rules see it: ``body`` JSON text (as sent; a form as an object),
    ``headers`` without credentials (lower-case names), ``query``; the same live and in a replay."""

    webhook: str
    delivery_id: str
    body: str
    headers: dict[str, str]
    query: dict[str, str]
    method: str
    path: str

    @property
    def key(self) -> str:
        """What stands in for a commit LSN in its events' keys: ``webhook/delivery id``."""
        return _delivery_key(self.webhook, self.delivery_id)

    def events(
        self, rules: Sequence[CompiledRule], received: datetime
    ) -> list[tuple[CompiledRule, str, str | None]]:
        """(rule, payload JSON, run key) of each of ``rules`` whose ``when:`` matches this request (an
        EvaluationError when one fails on it)."""
        headers_json, query_json = json.dumps(self.headers), json.dumps(self.query)
        columns = {
            "body": self.body,
            "headers": headers_json,
            "query": query_json,
            "method": self.method,
            "path": self.path,
        }
        matched = [rule for rule in rules if matches(rule, columns, received)]
        if not matched:
            return []
        request = json.dumps(
            {
                "webhook": self.webhook,
                "delivery_id": self.delivery_id,
                "method": self.method,
                "path": self.path,
            }
        )
        request = f'{request[:-1]}, "query": {query_json}, "headers": {headers_json}}}'
        whole = f'{{"data": {self.body}, "request": {request}}}'  # the payload of rules without `payload:`
        others = {"headers": self.headers, "query": self.query, "method": self.method, "path": self.path}
        parts = RequestParts(self.body, others)
        return [
            (
                rule,
                f'{{"data": {parts.picked(rule)}, "request": {request}}}' if rule.payload else whole,
                parts.run_key(rule) if rule.gated else None,
            )
            for rule in matched
        ]

    def row(self, received: datetime) -> tuple[Any, ...]:
        """Its row of ``webhook_requests`` (sql/0009_webhook_requests.sql), for `listener replay`."""
        return (
            self.webhook,
            self.delivery_id,
            received,
            self.method,
            self.path,
            json.dumps(self.query),
            json.dumps(self.headers),
            self.body,
        )


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it passes ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(parts)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)
