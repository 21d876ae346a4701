"""`queues:` and `sink:` in the configuration: README's blocks are valid, queue rules compile over the
message's parts, and each mistake is an error with its line and the fix (listener.rules.config)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from listener.errors import ConfigError
from listener.ingest.brokers import Message
from listener.ingest.queues import read_message
from listener.rules.compile import RuleSet
from listener.rules.config import load_config, parse_config

JETSTREAM = (
    "queues:\n  - name: q\n    jetstream: {url: 'nats://h', stream: S, durable: d}\nrules:\n  - name: r\n"
)
README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
NOW = datetime(2026, 12, 7, tzinfo=UTC)


def readme_block(heading: str) -> str:
    return README[README.index(heading) :].split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_readme_queue_block_is_valid_and_its_rule_matches_what_it_says() -> None:
    config = parse_config(readme_block("## Queue sources"))
    assert [(q.name, q.broker) for q in config.queues] == [
        ("orders", "kafka"),
        ("tasks", "redis_stream"),
        ("jobs", "jetstream"),
    ]
    assert config.queues[0].kafka is not None and config.queues[0].kafka.brokers == (
        "kafka-1:9092",
        "kafka-2:9092",
    )
    rules = RuleSet.from_config(config, None).queues["orders"]
    body = json.dumps({"id": 7, "total": "120.50", "customer": "c-9"}).encode()
    message = Message("orders:0", (41,), "orders:0:41", "orders", body, b"k1", [("source", b"web")], NOW)
    read = read_message("orders", "json", message, rules, NOW)
    assert read.parked is None and len(read.events) == 1
    rule, payload, run_key = read.events[0]
    assert rule.name == "big-order" and run_key == "big-order:c-9"
    assert json.loads(payload)["data"] == {"order": 7, "customer": "c-9", "key": "k1"}
    small = Message("orders:0", (42,), "orders:0:42", "orders", b'{"total": 5}', None, [("source", b"web")])
    assert read_message("orders", "json", small, rules, NOW).events == []


def test_the_readme_sink_block_is_valid() -> None:
    config = parse_config(readme_block("## Kafka as the event log"))
    kafka = config.sink.kafka
    assert (
        kafka is not None and kafka.topic == "listener.events" and kafka.offsets_topic == "listener.offsets"
    )
    assert config.sink.postgres is True and kafka.transactional_id is None and kafka.check_crcs is True


@pytest.mark.parametrize(
    ("text", "line", "says", "fix"),
    [
        ("queues:\n  - name: q\nrules:\n  - name: r\n    queue: q\n    workflow: m:f\n", 2, "names no broker",
         "kafka: {brokers, topics, group}"),
        ("queues:\n  - name: q\n    kafka: {brokers: a:1, topics: t, group: g}\n"
         "    redis_stream: {url: 'redis://h', stream: s, group: g}\n", 2, "kafka and redis_stream: pick one",
         "exactly one"),
        ("queues:\n  - name: q\n    redis_stream: {url: 'http://h', stream: s, group: g}\n", 3,
         "is not a redis URL", "redis://"),
        ("rules:\n  - name: r\n    queue: nope\n    workflow: m:f\n", 3, "which `queues:` does not define",
         "define it under `queues:`"),
        (JETSTREAM + "    queue: q\n    on: [insert]\n    workflow: m:f\n", 5,
         "on do not apply to a queue rule", "remove on"),
        (JETSTREAM + "    queue: q\n    ordered: true\n    workflow: m:f\n", 5,
         "need `key:`", "{body.customer}"),
        (JETSTREAM + "    queue: q\n    key: '{query.page}'\n    workflow: m:f\n", 7,
         "part of the message", "headers.<name>"),
        ("sink: {postgres: false}\n", 1, "would go nowhere", "sink: {kafka:"),
    ],
)  # fmt: skip
def test_queue_and_sink_mistakes_point_at_the_line_and_say_the_fix(
    tmp_path: Path, text: str, line: int, says: str, fix: str
) -> None:
    path = tmp_path / "listener.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert says in str(error), str(error)
    assert error.hint is not None and fix in error.hint, error.hint
    assert error.line == line, (error.line, str(error))


def test_a_queue_rules_when_names_only_the_messages_parts() -> None:
    text = (
        "queues:\n  - name: q\n    jetstream: {url: 'nats://h', stream: S, durable: d}\n"
        "rules:\n  - name: r\n    queue: q\n    when: \"method = 'POST'\"\n    workflow: m:f\n"
    )
    with pytest.raises(ConfigError) as info:
        RuleSet.from_config(parse_config(text), None)
    assert (
        info.value.hint is not None
        and "a queue rule sees body, headers (jsonb), key, topic (text)" in info.value.hint
    )
