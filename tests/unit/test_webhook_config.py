"""`webhooks:` and webhook rules in the config: what is accepted, what is refused (with the line and the
fix), and what a webhook rule's `when:` sees of a request."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from listener.errors import ConfigError
from listener.http.webhooks import WebhookSource, parse_body
from listener.rules.compile import RuleSet
from listener.rules.config import load_config, parse_config
from listener.rules.parts import RequestParts
from listener.rules.pushdown import describe_rule
from listener.rules.schedules import schedules_of

HEAD = """\
http:
  listen: "127.0.0.1:0"
webhooks:
  - name: stripe
    path: /hooks/stripe
    verify: stripe
    secret_env: STRIPE_WEBHOOK_SECRET
    tolerance: 10m
rules:
"""


def config_error(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "listener.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def test_a_webhook_and_its_rule() -> None:
    config = parse_config(
        HEAD
        + """\
  - name: paid
    webhook: stripe
    when: body->>'type' = 'payment_intent.succeeded'
    workflow: workflows.billing:on_payment
"""
    )
    [hook] = config.webhooks
    assert (hook.name, hook.path, hook.verify, hook.tolerance_s, hook.max_body_bytes) == (
        "stripe",
        "/hooks/stripe",
        "stripe",
        600.0,
        1_048_576,
    )
    [rule] = RuleSet.from_config(config, {}).webhooks["stripe"]
    assert describe_rule(rule, None) == (
        "webhook 'stripe' when body->>'type' = 'payment_intent.succeeded'"
        " → workflows.billing:on_payment (priority 0)"
    )


def columns(body: object, **extra: str) -> dict[str, str]:
    return {
        "body": json.dumps(body),
        "headers": json.dumps({"x-github-event": "push"}),
        "query": json.dumps({"tenant": "acme"}),
        "method": "POST",
        "path": "/hooks/stripe",
        **extra,
    }


@pytest.mark.parametrize(
    ("when", "body", "expected"),
    [
        ("body->>'type' = 'a'", {"type": "a"}, True),
        ("body->>'type' = 'a'", {"type": "b"}, False),
        ("body->>'type' = 'a'", {}, None),  # NULL: no match
        ("(body->'data'->>'amount')::numeric > 10.5", {"data": {"amount": 11}}, True),
        ("body @> '{\"live\": true}'", {"live": True, "x": 1}, True),
        ("headers->>'x-github-event' = 'push' AND query->>'tenant' = 'acme'", {}, True),
        ("method = 'POST' AND path LIKE '/hooks/%'", {}, True),
    ],
)
def test_when_sees_the_request_with_postgresqls_semantics(
    when: str, body: object, expected: bool | None
) -> None:
    config = parse_config(
        HEAD + f"  - {{name: r, webhook: stripe, when: {json.dumps(when)}, workflow: m:f}}\n"
    )
    [rule] = RuleSet.from_config(config, {}).webhooks["stripe"]
    assert rule.predicate is not None
    assert rule.predicate.evaluate(columns(body), None, datetime.now(UTC)) is expected


@pytest.mark.parametrize(
    ("text", "line", "message", "fix"),
    [
        (
            HEAD + "  - {name: r, webhook: github, workflow: m:f}\n",
            10,
            "names webhook 'github', which `webhooks:` does not define",
            "name one of: stripe",
        ),
        (
            HEAD + "  - {name: r, webhook: stripe, ordered: true, key_concurrency: 2, workflow: m:f}\n",
            10,
            "a webhook rule's key_concurrency: and ordered: need `key:`",
            'key: "{body.data.object.customer}"',
        ),
        (
            HEAD + "  - name: r\n    webhook: stripe\n    key: '{new.id}'\n    workflow: m:f\n",
            12,
            "key '{new.id}' names something other than a part of the request",
            "body.<path>",
        ),
        (
            HEAD + "  - name: r\n    webhook: stripe\n    workflow: m:f\n    payload: {who: new.user}\n",
            13,
            "payload.who: 'new.user' is not a part of the request",
            "payload: {customer: body.data.object.customer",
        ),
        (
            HEAD + "  - {name: r, webhook: stripe, on: [insert], workflow: m:f}\n",
            10,
            "on do not apply to a webhook rule",
            "`payload:` and `key:` pick from it",
        ),
        (
            HEAD.replace("verify: stripe", "verify: gitlab"),
            6,
            "'gitlab' is not a signature preset",
            "standard, stripe, github, shopify, slack, hmac-sha256, none",
        ),
        (
            HEAD.replace("    secret_env: STRIPE_WEBHOOK_SECRET\n", ""),
            4,
            "needs `secret_env:`",
            "verify: none",
        ),
        (
            HEAD.replace("secret_env: STRIPE_WEBHOOK_SECRET", "secret_env: whsec_abc123="),
            7,
            "is not an environment variable name",
            "name the variable, not its value",
        ),
        (HEAD.replace("path: /hooks/stripe", "path: hooks"), 5, "'hooks' is not a webhook path", "e.g. path"),
        (HEAD.replace("path: /hooks/stripe", "path: /healthz"), 5, "is not a webhook path", "/healthz"),
        (
            HEAD.replace('http:\n  listen: "127.0.0.1:0"\n', ""),
            None,
            "there is no `http:` section",
            "add `http:",
        ),
        (
            HEAD.replace("rules:\n", "  - {name: other, path: /hooks/stripe, verify: none}\nrules:\n"),
            9,
            "webhook path '/hooks/stripe' is already used by webhooks[0]",
            "its own path",
        ),
    ],
)
def test_webhook_mistakes_point_at_the_line_and_say_the_fix(
    tmp_path: Path, text: str, line: int | None, message: str, fix: str
) -> None:
    error = config_error(tmp_path, text)
    assert message in str(error), str(error)
    assert error.hint is not None and fix in error.hint, error.hint
    if line is not None:
        assert f"listener.yaml:{line}" in str(error), str(error)


def test_a_when_over_what_a_request_lacks_is_refused_when_the_rules_are_compiled(tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    path.write_text(HEAD + "  - name: r\n    webhook: stripe\n    when: new.type = 'a'\n    workflow: m:f\n")
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        RuleSet.from_config(config, {})
    assert str(info.value).startswith(f"{path}:12, rule 'r': when:"), str(info.value)
    assert info.value.hint is not None and info.value.hint.endswith(
        "a webhook rule sees body, headers, query (jsonb), method, path (text)"
    )


def test_a_missing_secret_names_the_variable_and_the_webhooks_line(tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    path.write_text(HEAD + "  - {name: r, webhook: stripe, workflow: m:f}\n", encoding="utf-8")
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        WebhookSource(config, environ={})
    assert str(info.value).startswith(
        f"{path}:4: webhook 'stripe': the environment variable STRIPE_WEBHOOK_SECRET"
    )
    assert info.value.hint is not None and "export STRIPE_WEBHOOK_SECRET=" in info.value.hint
    source = WebhookSource(config, environ={"STRIPE_WEBHOOK_SECRET": "whsec_new whsec_old"})
    assert list(source.endpoints) == ["/hooks/stripe"]


def test_a_form_body_is_an_object_and_json_is_kept_as_sent() -> None:
    assert json.loads(parse_body(b"a=1&b=x+y&a=2", "application/x-www-form-urlencoded; charset=utf-8")) == {
        "a": "2",
        "b": "x y",
    }
    text = '{"n": 1.50, "big": 1e131071}'
    assert parse_body(text.encode(), "application/json") == text  # exactly as the provider sent it


def test_a_standard_secret_that_is_not_whsec_base64_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "listener.yaml"
    text = (
        HEAD.replace("verify: stripe", "verify: standard") + "  - {name: r, webhook: stripe, workflow: m:f}\n"
    )
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        WebhookSource(config, environ={"STRIPE_WEBHOOK_SECRET": "whsec_not*base64!"})
    assert str(info.value).startswith(f"{path}:4: webhook 'stripe': the secret in STRIPE_WEBHOOK_SECRET")
    assert "whsec_ followed by base64" in str(info.value)
    assert info.value.hint is not None and "exactly as the provider shows it" in info.value.hint


def test_a_webhook_rule_picks_its_payload_and_its_key_from_the_request_exactly() -> None:
    config = parse_config(
        HEAD
        + """\
  - name: paid
    webhook: stripe
    workflow: workflows.billing:on_payment
    key: "{body.data.object.customer}/{headers.X-Shop}"
    key_concurrency: 1
    payload: {customer: body.data.object.customer, amount: body.data.object.amount, first: body.items.0,
              kind: body.type, method: method, page: query.page, absent: body.nothing.here}
limits:
  - {workflow: "workflows.limited:run", concurrency: 2}
"""
    )
    [rule] = RuleSet.from_config(config, {}).webhooks["stripe"]
    assert rule.gated and rule.key_limit == 1
    body = '{"type": "charge", "data": {"object": {"customer": "cus_1", "amount": 1.10e3}}, "items": [7.50]}'
    others = {"headers": {"x-shop": "s1"}, "query": {"page": "2"}, "method": "POST", "path": "/hooks/stripe"}
    parts = RequestParts(body, others)
    assert parts.run_key(rule) == "paid:cus_1|s1"
    assert json.loads(parts.picked(rule)) == {
        "customer": "cus_1",
        "amount": 1100,
        "first": 7.5,
        "kind": "charge",
        "method": "POST",
        "page": "2",
        "absent": None,
    }
    assert '"amount": 1.10e3' in parts.picked(rule) and '"first": 7.50' in parts.picked(rule)  # as sent


def test_a_workflow_with_limits_is_claimed_under_them_whatever_starts_it() -> None:
    """`limits:` apply to runs of gated rules only: a channel, message or webhook rule, or a schedule,
    whose workflow has limits makes gated runs too."""
    config = parse_config(
        HEAD
        + """\
  - {name: hook, webhook: stripe, workflow: "w.x:limited"}
  - {name: note, channel: jobs, workflow: "w.x:limited"}
  - {name: said, message: app, workflow: "w.x:limited"}
  - {name: free, channel: other, workflow: "w.x:free"}
schedules:
  - {name: beat, every: 1s, overlap: allow, workflow: "w.x:limited"}
limits:
  - {workflow: "w.x:limited", rate: 5/second}
"""
    )
    rules = {rule.name: rule for rule in RuleSet.from_config(config, {}).rules}
    assert [rules[n].gated for n in ("hook", "note", "said", "free")] == [True, True, True, False]
    [beat] = schedules_of(config)
    assert beat.rule().gated and beat.run_key is None  # limited by workflow, not one at a time
