"""Webhook signature presets: is this request what the provider sent, and which delivery is it?

Each preset checks the provider's signature over the raw body bytes (HMAC-SHA256, compared in constant
time; or ed25519, for Standard Webhooks' asymmetric ``v1a``), against every configured secret (several
during a key rotation) and every signature the request carries (providers send several while they rotate
theirs); where the provider signs a timestamp, it must lie within ``tolerance`` of now in both directions
(a replayed old request, or a clock far ahead).  It returns the provider's delivery id, which makes the
event's idempotency key: a redelivery of the same delivery is the same event.

- ``standard``: ``webhook-signature: v1,<base64> v1a,<base64> ...`` over ``id.timestamp.body`` (``v1``
  HMAC-SHA256 with a ``whsec_`` secret, ``v1a`` ed25519 with a ``whpk_`` public key); id ``webhook-id``
- ``stripe``: ``Stripe-Signature: t=<ts>,v1=<hex>,...`` over ``ts.body``; id the event's ``id``
- ``github``: ``X-Hub-Signature-256: sha256=<hex>`` over the body; id ``X-GitHub-Delivery``
- ``shopify``: ``X-Shopify-Hmac-Sha256: <base64>`` over the body; id ``X-Shopify-Webhook-Id``
- ``slack``: ``X-Slack-Signature: v0=<hex>`` over ``v0:ts:body``; no id (the body's SHA-256 stands in)
- ``hmac-sha256``: ``X-Signature: [sha256=]<hex>`` over the body; no id
- ``none``: no check, for a trusted network only; no id

Standard Webhooks secrets are written as the provider shows them: ``whsec_<base64>`` for a symmetric
secret, ``whpk_<base64 of the 32-byte key>`` for an ed25519 public key; any mix of the two may be
configured (a rotation from one to the other), each checking the signatures of its own kind.  The providers'
own libraries (``standardwebhooks``, ``stripe``, ``slack_sdk``) sign the requests of the tests; they are not
used here because each fixes the tolerance, checks one direction of it, or does not tell a bad
signature from a stale timestamp, which get different answers (401, 400).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PRESETS = ("standard", "stripe", "github", "shopify", "slack", "hmac-sha256", "none")
MAX_SIGNATURES = 16  # in one header: providers send one, or a few while they rotate keys


class Refused(Exception):
    """The request is not accepted: ``status`` (401 bad or missing signature, 400 stale or malformed)
    and the reason, which the response carries."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Verified:
    """What a verified request says of itself: the provider's delivery id, if it sends one."""

    delivery_id: str | None


#: (raw body, headers with lower-case names, now as epoch seconds) -> Verified, or raises Refused
Verifier = Callable[[bytes, Mapping[str, str], float], Verified]


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise Refused(401, f"no {name} header: is the webhook's signing turned on at the provider?")
    return value


def _match(expected: Iterable[bytes], given: Iterable[bytes]) -> None:
    """Some expected signature equals some given one (constant time per comparison), or 401."""
    given = list(given)
    if not any(hmac.compare_digest(e, g) for e in expected for g in given):
        raise Refused(401, "the signature matches no configured secret")


def _fresh(timestamp: str, now: float, tolerance_s: float, header: str) -> None:
    try:
        at = float(int(timestamp))
    except ValueError:
        raise Refused(400, f"{header} {timestamp!r} is not a Unix time in seconds") from None
    if abs(now - at) > tolerance_s:
        direction = "old" if at < now else "far in the future"
        raise Refused(
            400,
            f"the signed timestamp is {abs(now - at):.0f} s {direction} (tolerance {tolerance_s:.0f} s): a "
            "replayed request, or a clock that is off",
        )


def _hex(value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        return b""  # matches nothing


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _padded_b64(value: str) -> bytes:
    """Base64 whose trailing ``=`` may have been left off (as some providers show their keys)."""
    return _b64(value + "=" * (-len(value) % 4))


def _ed25519_public_key(secret: str) -> Ed25519PublicKey:
    """The key of ``whpk_<base64 of the 32-byte raw ed25519 public key>``, or ValueError."""
    raw = _padded_b64(secret.removeprefix("whpk_"))
    if not raw:
        raise ValueError(
            "a Standard Webhooks public key is whpk_ followed by base64, as the provider shows it: this one "
            "is not base64"
        )
    if len(raw) != 32:
        raise ValueError(
            "a Standard Webhooks public key is whpk_ followed by the base64 of the 32-byte ed25519 key: this "
            f"one decodes to {len(raw)} bytes"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def _ed25519_match(key: Ed25519PublicKey, signature: bytes, signed: bytes) -> bool:
    try:
        key.verify(signature, signed)
    except InvalidSignature:
        return False
    return True


def _standard(secrets: Sequence[str], tolerance_s: float) -> Verifier:
    if any(s.startswith("whsk_") for s in secrets):
        raise ValueError(
            "whsk_ is the signer's secret key of Standard Webhooks' asymmetric signatures: configure its "
            "public key, whpk_, as the provider shows it"
        )
    public_keys = [_ed25519_public_key(s) for s in secrets if s.startswith("whpk_")]
    keys = [_padded_b64(s.removeprefix("whsec_")) for s in secrets if not s.startswith("whpk_")]
    if not all(keys):
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64, as the provider shows it")
    # the kinds of signature (their version in webhook-signature) that the configured keys check
    kinds = [
        (version, what)
        for version, what, have in (("v1", "whsec_ secrets", keys), ("v1a", "whpk_ public keys", public_keys))
        if have
    ]
    none_of_ours = (
        f"webhook-signature has no {' or '.join(v for v, _ in kinds)} signature, the "
        f"kind{'s' if len(kinds) > 1 else ''} the configured {' and '.join(w for _, w in kinds)} check"
    )
    no_match = "the signature matches no configured " + ("secret or public key" if public_keys else "secret")

    def verify(body: bytes, headers: Mapping[str, str], now: float) -> Verified:
        delivery = _header(headers, "webhook-id")
        timestamp = _header(headers, "webhook-timestamp")
        signatures = _header(headers, "webhook-signature")
        _fresh(timestamp, now, tolerance_s, "webhook-timestamp")
        signed = f"{delivery}.{timestamp}.".encode() + body
        # a version this verifier does not know, or has no key for, is ignored
        entries = signatures.split()
        if len(entries) > MAX_SIGNATURES:  # each costs a check (an ed25519 one ~0.1 ms): no padding
            raise Refused(
                401, f"webhook-signature carries {len(entries)} signatures, more than {MAX_SIGNATURES}"
            )
        given = [(version, _b64(sig)) for version, _, sig in (s.partition(",") for s in entries)]
        symmetric = [sig for version, sig in given if version == "v1"] if keys else []
        asymmetric = [sig for version, sig in given if version == "v1a"] if public_keys else []
        if not symmetric and not asymmetric:
            raise Refused(401, none_of_ours)
        expected = [_mac(key, signed) for key in keys] if symmetric else []
        if any(hmac.compare_digest(e, g) for e in expected for g in symmetric) or any(
            _ed25519_match(key, sig, signed) for key in public_keys for sig in asymmetric
        ):
            return Verified(delivery)
        raise Refused(401, no_match)

    return verify


def _stripe(secrets: Sequence[str], tolerance_s: float) -> Verifier:
    keys = [s.encode() for s in secrets]

    def verify(body: bytes, headers: Mapping[str, str], now: float) -> Verified:
        fields = [item.partition("=") for item in _header(headers, "stripe-signature").split(",")]
        timestamps = [value.strip() for name, _, value in fields if name.strip() == "t"]
        if len(timestamps) != 1:
            raise Refused(401, "stripe-signature has no single t=<timestamp>")
        _fresh(timestamps[0], now, tolerance_s, "stripe-signature t=")
        signed = timestamps[0].encode() + b"." + body
        _match(
            (_mac(key, signed) for key in keys), (_hex(v.strip()) for n, _, v in fields if n.strip() == "v1")
        )
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        delivery = event.get("id") if isinstance(event, dict) else None
        return Verified(delivery if isinstance(delivery, str) and delivery else None)

    return verify


def _github(secrets: Sequence[str], tolerance_s: float) -> Verifier:
    keys = [s.encode() for s in secrets]

    def verify(body: bytes, headers: Mapping[str, str], now: float) -> Verified:
        scheme, _, signature = _header(headers, "x-hub-signature-256").partition("=")
        if scheme != "sha256":
            raise Refused(401, "x-hub-signature-256 is not sha256=<hex>")
        _match((_mac(key, body) for key in keys), [_hex(signature)])
        return Verified(headers.get("x-github-delivery") or None)

    return verify


def _shopify(secrets: Sequence[str], tolerance_s: float) -> Verifier:
    keys = [s.encode() for s in secrets]

    def verify(body: bytes, headers: Mapping[str, str], now: float) -> Verified:
        signature = _header(headers, "x-shopify-hmac-sha256")
        _match((_mac(key, body) for key in keys), [_b64(signature)])
        triggered = headers.get("x-shopify-triggered-at")
        if triggered:
            try:
                at = datetime.fromisoformat(triggered).timestamp()
            except ValueError:
                raise Refused(400, f"x-shopify-triggered-at {triggered!r} is not an ISO 8601 time") from None
            _fresh(str(int(at)), now, tolerance_s, "x-shopify-triggered-at")
        return Verified(headers.get("x-shopify-webhook-id") or headers.get("x-shopify-event-id") or None)

    return verify


def _slack(secrets: Sequence[str], tolerance_s: float) -> Verifier:
    keys = [s.encode() for s in secrets]

    def verify(body: bytes, headers: Mapping[str, str], now: float) -> Verified:
        timestamp = _header(headers, "x-slack-request-timestamp")
        version, _, signature = _header(headers, "x-slack-signature").partition("=")
        if version != "v0":
            raise Refused(401, "x-slack-signature is not v0=<hex>")
        _fresh(timestamp, now, tolerance_s, "x-slack-request-timestamp")
        signed = f"v0:{timestamp}:".encode() + body
        _match((_mac(key, signed) for key in keys), [_hex(signature)])
        return Verified(None)

    return verify


def _hmac_sha256(secrets: Sequence[str], tolerance_s: float) -> Verifier:
    keys = [s.encode() for s in secrets]

    def verify(body: bytes, headers: Mapping[str, str], now: float) -> Verified:
        signature = _header(headers, "x-signature").removeprefix("sha256=")
        _match((_mac(key, body) for key in keys), [_hex(signature)])
        return Verified(None)

    return verify


def _none(secrets: Sequence[str], tolerance_s: float) -> Verifier:
    def verify(body: bytes, headers: Mapping[str, str], now: float) -> Verified:
        return Verified(None)

    return verify


_MAKERS: dict[str, Callable[[Sequence[str], float], Verifier]] = {
    "standard": _standard,
    "stripe": _stripe,
    "github": _github,
    "shopify": _shopify,
    "slack": _slack,
    "hmac-sha256": _hmac_sha256,
    "none": _none,
}


def verifier(preset: str, secrets: Sequence[str], tolerance_s: float) -> Verifier:
    """The verifier of ``preset`` with ``secrets`` (any may have signed; none for ``none``)."""
    if preset not in _MAKERS:
        raise ValueError(f"unknown preset {preset!r}: one of {', '.join(PRESETS)}")
    if preset != "none" and not secrets:
        raise ValueError(f"preset {preset!r} needs a secret")
    return _MAKERS[preset](secrets, tolerance_s)


def body_id(body: bytes) -> str:
    """The delivery id of a provider that sends none: the body's SHA-256 (hex), so an identical
    redelivery is the same event."""
    return hashlib.sha256(body).hexdigest()
