"""Webhook signature presets against requests signed by the providers' own libraries (Standard Webhooks'
``standardwebhooks``, Stripe's ``stripe``, Slack's ``slack_sdk``), and GitHub's and Shopify's documented
HMAC schemes (they publish no Python library for it): accepted when genuine, refused with 401 (signature)
or 400 (timestamp) otherwise, and each delivery's id."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
import stripe
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from slack_sdk.signature import SignatureVerifier
from standardwebhooks.webhooks import Webhook

from listener.http.verify import MAX_SIGNATURES, PRESETS, Refused, Verified, body_id, verifier

NOW = time.time()
BODY = json.dumps({"id": "evt_1Q2w3E", "type": "payment_intent.succeeded", "data": {"object": {"amount": 5}}})
RAW = BODY.encode()
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-test-key-32byte").decode()
TOLERANCE = 300.0


def refused(preset: str, secrets: list[str], headers: dict[str, str], body: bytes = RAW) -> Refused:
    with pytest.raises(Refused) as info:
        verifier(preset, secrets, TOLERANCE)(body, headers, NOW)
    return info.value


# --- Standard Webhooks ------------------------------------------------------------------------------------


def standard_headers(
    secret: str = STANDARD_SECRET, at: float = NOW, msg_id: str = "msg_2b"
) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(at, UTC), RAW)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at)), "webhook-signature": signature}


def test_standard_accepts_the_librarys_signature_and_names_the_delivery() -> None:
    assert verifier("standard", [STANDARD_SECRET], TOLERANCE)(RAW, standard_headers(), NOW) == Verified(
        "msg_2b"
    )


def test_standard_rotation_several_secrets_and_several_signatures() -> None:
    old = "whsec_" + base64.b64encode(b"the-previous-key-of-this-endpoint").decode()
    headers = standard_headers(old)
    assert verifier("standard", [STANDARD_SECRET, old], TOLERANCE)(RAW, headers, NOW) == Verified("msg_2b")
    # the provider signs with both keys while it rotates: one matching signature is enough
    both = f"{standard_headers(old)['webhook-signature']} {standard_headers()['webhook-signature']}"
    headers = {**standard_headers(), "webhook-signature": both}
    assert verifier("standard", [STANDARD_SECRET], TOLERANCE)(RAW, headers, NOW) == Verified("msg_2b")


def test_standard_refusals() -> None:
    wrong = "whsec_" + base64.b64encode(b"not-the-key-the-provider-signs-with").decode()
    assert refused("standard", [wrong], standard_headers()).status == 401
    assert refused("standard", [STANDARD_SECRET], standard_headers(), RAW + b" ").status == 401  # tampered
    missing = {k: v for k, v in standard_headers().items() if k != "webhook-signature"}
    assert refused("standard", [STANDARD_SECRET], missing).reason.startswith("no webhook-signature header")
    old = refused("standard", [STANDARD_SECRET], standard_headers(at=NOW - TOLERANCE - 60))
    assert old.status == 400 and "old" in old.reason
    ahead = refused("standard", [STANDARD_SECRET], standard_headers(at=NOW + TOLERANCE + 60))
    assert ahead.status == 400 and "future" in ahead.reason
    # a signature for another delivery id does not carry over (the id is signed)
    moved = {**standard_headers(), "webhook-id": "msg_other"}
    assert refused("standard", [STANDARD_SECRET], moved).status == 401


# --- Standard Webhooks' asymmetric v1a (ed25519, the `cryptography` package signs) ------------------------

SIGNER = Ed25519PrivateKey.generate()


def whpk(key: Ed25519PrivateKey = SIGNER) -> str:
    """The verifier's key as the provider shows it: whpk_ and the base64 of the 32-byte raw public key."""
    return "whpk_" + base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def v1a(key: Ed25519PrivateKey = SIGNER, at: float = NOW, msg_id: str = "msg_2b", body: bytes = RAW) -> str:
    signature = key.sign(f"{msg_id}.{int(at)}.".encode() + body)
    return "v1a," + base64.b64encode(signature).decode()


def asymmetric_headers(signature: str | None = None, at: float = NOW) -> dict[str, str]:
    return {
        "webhook-id": "msg_2b",
        "webhook-timestamp": str(int(at)),
        "webhook-signature": signature or v1a(),
    }


def test_standard_accepts_an_ed25519_v1a_signature_with_the_whpk_public_key() -> None:
    verified = verifier("standard", [whpk()], TOLERANCE)(RAW, asymmetric_headers(), NOW)
    assert verified == Verified("msg_2b")
    # among signatures of versions it does not know, and with the whpk_'s trailing = left off
    headers = asymmetric_headers(f"v2a,c29tZXRoaW5nLWVsc2U= {v1a()} v9,xyz")
    assert verifier("standard", [whpk().rstrip("=")], TOLERANCE)(RAW, headers, NOW) == Verified("msg_2b")


def test_standard_rotation_between_whsec_and_whpk_keys_in_either_direction() -> None:
    secrets = [STANDARD_SECRET, whpk()]
    wrong_v1 = standard_headers("whsec_" + base64.b64encode(b"a-key-nobody-configured-here!").decode())
    # a wrong v1 signature and a right v1a one
    headers = asymmetric_headers(f"{wrong_v1['webhook-signature']} {v1a()}")
    assert verifier("standard", secrets, TOLERANCE)(RAW, headers, NOW) == Verified("msg_2b")
    # and the other way round: a right v1 signature and a v1a one by another key
    headers = asymmetric_headers(
        f"{standard_headers()['webhook-signature']} {v1a(Ed25519PrivateKey.generate())}"
    )
    assert verifier("standard", secrets, TOLERANCE)(RAW, headers, NOW) == Verified("msg_2b")
    # several public keys: the one that signed is enough
    other = whpk(Ed25519PrivateKey.generate())
    assert verifier("standard", [other, whpk()], TOLERANCE)(RAW, asymmetric_headers(), NOW).delivery_id


def test_standard_refuses_a_v1a_signature_by_another_key_or_over_another_body() -> None:
    by_another = refused("standard", [whpk()], asymmetric_headers(v1a(Ed25519PrivateKey.generate())))
    assert by_another.status == 401 and "matches no configured" in by_another.reason
    assert refused("standard", [whpk()], asymmetric_headers(), RAW + b" ").status == 401  # tampered
    assert refused("standard", [whpk()], asymmetric_headers(v1a(msg_id="msg_other"))).status == 401
    assert refused("standard", [whpk()], asymmetric_headers("v1a,not*base64!")).status == 401
    both = refused("standard", [STANDARD_SECRET, whpk()], asymmetric_headers(v1a(body=b"{}")))
    assert both.status == 401 and both.reason == "the signature matches no configured secret or public key"
    stale = refused("standard", [whpk()], asymmetric_headers(v1a(at=NOW - 3600), at=NOW - 3600))
    assert stale.status == 400 and "old" in stale.reason


def test_standard_refuses_signatures_of_a_kind_it_has_no_key_for() -> None:
    only_v1a = refused("standard", [STANDARD_SECRET], asymmetric_headers())
    assert only_v1a.status == 401
    assert (
        only_v1a.reason
        == "webhook-signature has no v1 signature, the kind the configured whsec_ secrets check"
    )
    only_v1 = refused("standard", [whpk()], standard_headers())
    assert only_v1.status == 401 and "no v1a signature" in only_v1.reason
    unknown = refused("standard", [STANDARD_SECRET, whpk()], asymmetric_headers("v2a,c29tZQ=="))
    assert unknown.status == 401 and "no v1 or v1a signature" in unknown.reason


def test_standard_refuses_a_header_padded_with_signatures_before_checking_any() -> None:
    """Each signature costs a check (ed25519's is slow): a header may not make a request expensive."""
    padded = asymmetric_headers(" ".join(["v1a,c29tZQ=="] * MAX_SIGNATURES + [v1a()]))
    too_many = refused("standard", [whpk()], padded)
    assert too_many.status == 401 and f"more than {MAX_SIGNATURES}" in too_many.reason


def test_a_whpk_key_that_is_not_base64_of_32_bytes_is_a_configuration_error() -> None:
    short = "whpk_" + base64.b64encode(b"sixteen-byte-key").decode()
    with pytest.raises(ValueError, match="32-byte ed25519 key: this one decodes to 16 bytes"):
        verifier("standard", [STANDARD_SECRET, short], TOLERANCE)
    with pytest.raises(ValueError, match=r"whpk_ followed by base64.*is not base64"):
        verifier("standard", ["whpk_not*base64!"], TOLERANCE)
    with pytest.raises(ValueError, match="whsk_ is the signer's secret key"):
        verifier("standard", ["whsk_" + base64.b64encode(b"k" * 32).decode()], TOLERANCE)


# --- Stripe -----------------------------------------------------------------------------------------------

STRIPE_SECRET = "whsec_stripe_test_secret"


def test_stripe_accepts_the_librarys_header_and_the_delivery_is_the_event_id() -> None:
    now = time.time()  # the library checks against the clock: not the module's NOW, minutes old by now
    header = stripe.WebhookSignature.generate_signature_header(BODY, STRIPE_SECRET, int(now))
    stripe.WebhookSignature.verify_header(BODY, header, STRIPE_SECRET, TOLERANCE)  # the library agrees
    verified = verifier("stripe", [STRIPE_SECRET], TOLERANCE)(RAW, {"stripe-signature": header}, now)
    assert verified == Verified("evt_1Q2w3E")


def test_stripe_several_v1_signatures_and_refusals() -> None:
    header = stripe.WebhookSignature.generate_signature_header(BODY, STRIPE_SECRET, int(NOW))
    other = stripe.WebhookSignature.generate_signature_header(BODY, "whsec_rolled", int(NOW))
    both = f"{header},v1={other.partition('v1=')[2]},v0=ignored"
    assert verifier("stripe", [STRIPE_SECRET], TOLERANCE)(RAW, {"stripe-signature": both}, NOW).delivery_id
    assert refused("stripe", ["whsec_wrong"], {"stripe-signature": header}).status == 401
    stale = stripe.WebhookSignature.generate_signature_header(BODY, STRIPE_SECRET, int(NOW - 3600))
    assert refused("stripe", [STRIPE_SECRET], {"stripe-signature": stale}).status == 400
    assert refused("stripe", [STRIPE_SECRET], {"stripe-signature": "v1=abc"}).status == 401  # no t=
    assert refused("stripe", [STRIPE_SECRET], {}).status == 401


# --- GitHub, Shopify (their documented schemes), Slack (slack_sdk) -----------------------------------------


def test_github_signature_and_delivery_header() -> None:
    signature = "sha256=" + hmac.new(b"gh-secret", RAW, hashlib.sha256).hexdigest()
    headers = {"x-hub-signature-256": signature, "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    assert verifier("github", ["gh-secret"], TOLERANCE)(RAW, headers, NOW) == Verified(
        "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    )
    assert refused("github", ["gh-other"], headers).status == 401
    assert refused("github", ["gh-secret"], {"x-hub-signature-256": "sha1=00"}).status == 401


def test_shopify_signature_delivery_and_trigger_time() -> None:
    signature = base64.b64encode(hmac.new(b"shp-secret", RAW, hashlib.sha256).digest()).decode()
    headers = {
        "x-shopify-hmac-sha256": signature,
        "x-shopify-webhook-id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "x-shopify-triggered-at": datetime.fromtimestamp(NOW, UTC).isoformat(),
    }
    verified = verifier("shopify", ["shp-secret"], TOLERANCE)(RAW, headers, NOW)
    assert verified == Verified("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")
    late = {**headers, "x-shopify-triggered-at": datetime.fromtimestamp(NOW - 7200, UTC).isoformat()}
    assert refused("shopify", ["shp-secret"], late).status == 400
    assert (
        refused("shopify", ["shp-secret"], {**headers, "x-shopify-hmac-sha256": "not base64!"}).status == 401
    )


def test_slack_accepts_slack_sdks_signature() -> None:
    timestamp = str(int(NOW))
    signature = SignatureVerifier("slack-secret").generate_signature(timestamp=timestamp, body=BODY)
    assert signature is not None
    headers = {"x-slack-request-timestamp": timestamp, "x-slack-signature": signature}
    assert verifier("slack", ["slack-secret"], TOLERANCE)(RAW, headers, NOW) == Verified(None)
    assert refused("slack", ["other"], headers).status == 401
    stale = {**headers, "x-slack-request-timestamp": str(int(NOW) - 3600)}
    assert refused("slack", ["slack-secret"], stale).status == 400
    assert refused("slack", ["slack-secret"], {**headers, "x-slack-request-timestamp": "soon"}).status == 400


def test_generic_hmac_none_and_configuration_errors() -> None:
    digest = hmac.new(b"k", RAW, hashlib.sha256).hexdigest()
    for signature in (digest, f"sha256={digest}"):
        assert verifier("hmac-sha256", ["k"], TOLERANCE)(RAW, {"x-signature": signature}, NOW) == Verified(
            None
        )
    assert refused("hmac-sha256", ["k"], {"x-signature": "zz"}).status == 401
    assert verifier("none", [], TOLERANCE)(b"anything", {}, NOW) == Verified(None)
    with pytest.raises(ValueError, match="needs a secret"):
        verifier("github", [], TOLERANCE)
    with pytest.raises(ValueError, match="unknown preset"):
        verifier("gitlab", ["x"], TOLERANCE)
    assert set(PRESETS) == {"standard", "stripe", "github", "shopify", "slack", "hmac-sha256", "none"}


def test_a_body_without_a_delivery_id_is_known_by_its_hash() -> None:
    assert body_id(RAW) == hashlib.sha256(RAW).hexdigest() and body_id(RAW) != body_id(RAW + b"\n")
