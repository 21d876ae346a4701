"""The configuration's pydantic models (:class:`Config`, :class:`Rule`, the settings sections) and the
defaults a file may leave out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from listener.defaults import (
    BACKFILL_CHUNK_ROWS,
    BATCH_DELAY_MS,
    BATCH_EVENTS,
    COMPACT_AFTER,
    COMPACT_CHUNK_CHANGES,
    DEFAULT_PUBLICATION,
    DEFAULT_SLOT,
    DEFAULT_STATE_SCHEMA,
    EXPAND_AHEAD,
    GRACE_S,
    HEARTBEAT_S,
    HTTP_SHUTDOWN_GRACE_S,
    KAFKA_OFFSETS_TOPIC,
    LEASE_S,
    POLL_INTERVAL_S,
    QUEUE_FETCH,
    QUEUE_MAX_BACKLOG,
    READY_MAX_LAG_S,
    RETAIN_WARN_BYTES,
    RUN_TIMEOUT_S,
    SCHEDULE_CATCHUP,
    SCHEDULE_TZ,
    STATUS_INTERVAL_S,
    WEBHOOK_MAX_BODY,
    WEBHOOK_TOLERANCE,
    WORKER_CONCURRENCY,
)
from listener.rules.config.names import split_table
from listener.rules.config.units import DURATION_HINT, SIZE_HINT, parse_duration, parse_rate, parse_size
from listener.rules.config.validators import (
    FOREVER,
    Operation,
    TableName,
    check_broker_url,
    check_cron,
    check_duration,
    check_duration_or_zero,
    check_env_name,
    check_keep,
    check_key_template,
    check_listen,
    check_nonempty,
    check_rate,
    check_rule_name,
    check_size,
    check_slot,
    check_source_name,
    check_time_zone,
    check_verify_preset,
    check_webhook_path,
    check_whole_seconds,
    check_workflow,
    custom_error,
    dedupe_operations,
    parse_listen,
    payload_mapping,
    plain_identifier,
    unit_required,
    wrap_brokers,
    wrap_names,
    wrap_operations,
    wrap_text_list,
)

EXAMPLE_CONFIG = """\
# listener.yaml: which row changes start which workflows
rules:
  - name: onboard_user
    table: public.users
    on: [insert]
    workflow: listener_examples.onboarding:welcome
"""

# ---------------------------------------------------------------------------------------------------------
# Models


class IngestSettings(BaseModel):
    """How row changes are batched into the state database."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_events: int = Field(default=BATCH_EVENTS, ge=1, strict=True)
    batch_delay_ms: float = Field(default=BATCH_DELAY_MS, ge=0, strict=True, allow_inf_nan=False)
    status_interval_s: float = Field(default=STATUS_INTERVAL_S, gt=0, strict=True, allow_inf_nan=False)
    # a heartbeat (a logical decoding message) when the slot sent nothing for this long; 0: none
    heartbeat_s: float = Field(default=HEARTBEAT_S, ge=0, strict=True, allow_inf_nan=False)
    # bulk transactions: after this many events of one table in one transaction, that table's further
    # changes are stored compactly (raw, in chunks of compact_chunk_changes) and expanded into runs later,
    # at most expand_ahead runs ahead of the workers.  0 turns compact storage off.
    compact_after: int = Field(default=COMPACT_AFTER, ge=0, strict=True)
    compact_chunk_changes: int = Field(default=COMPACT_CHUNK_CHANGES, ge=1, strict=True)
    expand_ahead: int = Field(default=EXPAND_AHEAD, ge=1, strict=True)
    # snapshot backfill (`listener backfill`): rows per chunk read between two watermarks
    backfill_chunk_rows: int = Field(default=BACKFILL_CHUNK_ROWS, ge=1, strict=True)


class WorkerSettings(BaseModel):
    """How workers claim and run events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int = Field(default=WORKER_CONCURRENCY, ge=1, strict=True)
    # `listener worker` processes `listener run` starts beside its own (None: one on two cores or more)
    processes: int | None = Field(default=None, ge=0, strict=True)
    poll_interval_s: float = Field(default=POLL_INTERVAL_S, gt=0, strict=True, allow_inf_nan=False)
    lease_s: float = Field(default=LEASE_S, gt=0, strict=True, allow_inf_nan=False)
    grace_s: float = Field(default=GRACE_S, ge=0, strict=True, allow_inf_nan=False)
    run_timeout_s: float = Field(default=RUN_TIMEOUT_S, gt=0, strict=True, allow_inf_nan=False)


class HttpSettings(BaseModel):
    """The HTTP server `listener run` starts when the config has an ``http:`` section: health endpoints,
    ``/metrics`` and the webhooks (listener.http.app)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: Annotated[str, AfterValidator(check_listen)]  # host:port
    # a request still running this long after the service was told to stop is cut off
    shutdown_grace_s: float = Field(default=HTTP_SHUTDOWN_GRACE_S, ge=0, strict=True, allow_inf_nan=False)
    # webhooks are answered 503 (Retry-After) while more runs than this wait in the queue (none: no limit)
    max_backlog: int | None = Field(default=None, ge=1, strict=True)
    # /readyz is 503 while ingest's measured lag is above this, in seconds (none: lag does not count)
    ready_max_lag_s: float | None = Field(default=READY_MAX_LAG_S, gt=0, strict=True, allow_inf_nan=False)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of ``listen``."""
        return parse_listen(self.listen)


class WebhookSettings(BaseModel):
    """One webhook endpoint of the HTTP server: where providers POST, and how their requests are verified
    (listener.http.verify); rules name it with ``webhook:``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, AfterValidator(check_rule_name)]
    path: Annotated[str, AfterValidator(check_webhook_path)]
    verify: Annotated[str, AfterValidator(check_verify_preset)]
    # the environment variable holding the secret (several, separated by spaces, while keys rotate)
    secret_env: Annotated[str | None, AfterValidator(check_env_name)] = None
    # how far a signed timestamp may be from now, either way (presets that sign one)
    tolerance: Annotated[str, unit_required("duration", DURATION_HINT), AfterValidator(check_duration)] = (
        WEBHOOK_TOLERANCE
    )
    # a larger body is refused (413) before it is read further
    max_body: Annotated[str, unit_required("size", SIZE_HINT), AfterValidator(check_size)] = WEBHOOK_MAX_BODY
    # the verified requests are kept this long, for `listener replay --webhook` (absent: not kept)
    keep: Annotated[str | None, unit_required("duration", DURATION_HINT), AfterValidator(check_duration)] = (
        None
    )

    @model_validator(mode="after")
    def _secret_unless_none(self) -> WebhookSettings:
        if self.verify != "none" and self.secret_env is None:
            raise custom_error(
                "webhook_secret",
                f"webhook {self.name!r} verifies with {self.verify!r} and needs `secret_env:`",
                "name the environment variable that holds the provider's signing secret, e.g. "
                "secret_env: STRIPE_WEBHOOK_SECRET (or `verify: none` on a trusted network only)",
            )
        return self

    @property
    def tolerance_s(self) -> float:
        return parse_duration(self.tolerance)

    @property
    def max_body_bytes(self) -> int:
        return parse_size(self.max_body)

    @property
    def keep_s(self) -> float | None:
        return parse_duration(self.keep) if self.keep is not None else None


class KafkaSettings(BaseModel):
    """``kafka:`` of a queue: the brokers, the topics read and the consumer group that shares them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    brokers: Annotated[tuple[str, ...], BeforeValidator(wrap_brokers)]  # host:port, one or several
    topics: Annotated[tuple[str, ...], BeforeValidator(wrap_text_list)]
    group: Annotated[str, check_nonempty("group")]
    # how long the group waits for a silent member (a killed `listener run`) before it gives its
    # partitions to another (aiokafka's session_timeout_ms, heartbeats a third of it); absent: aiokafka's
    # 10 s.  The brokers bound it (group.min.session.timeout.ms, 6 s by default on Apache Kafka).
    session_timeout: Annotated[
        str | None, unit_required("duration", DURATION_HINT), AfterValidator(check_duration)
    ] = None

    @property
    def session_timeout_ms(self) -> int | None:
        return None if self.session_timeout is None else int(parse_duration(self.session_timeout) * 1000)


class RedisStreamSettings(BaseModel):
    """``redis_stream:`` of a queue: a stream read through a consumer group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[str, check_broker_url("redis", ("redis", "rediss", "unix"))]
    stream: Annotated[str, check_nonempty("stream")]
    group: Annotated[str, check_nonempty("group")]


class JetStreamSettings(BaseModel):
    """``jetstream:`` of a queue: a NATS JetStream stream read through a durable pull consumer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[str, check_broker_url("nats", ("nats", "tls", "ws", "wss"))]
    stream: Annotated[str, check_nonempty("stream")]
    durable: Annotated[str, check_nonempty("durable")]
    subject: str | None = None  # only the stream's messages on this subject (a filter; wildcards allowed)


class KafkaSinkSettings(BaseModel):
    """``sink: kafka:``: the topic the slot's events are published to, in Kafka transactions that also
    carry the replication checkpoint (a record keyed by the slot in ``offsets_topic``, compacted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    brokers: Annotated[tuple[str, ...], BeforeValidator(wrap_brokers)]
    topic: Annotated[str, check_nonempty("topic")]
    offsets_topic: Annotated[str, check_nonempty("offsets_topic")] = KAFKA_OFFSETS_TOPIC
    # the producer's transactional id: one writer per id (a second is fenced); default listener.<slot>
    transactional_id: str | None = None
    # whether the sink checks the CRC of the offsets topic's records when it reads its checkpoint back
    # (false only for brokers that write bad CRCs on transaction markers, such as librdkafka's mock cluster)
    check_crcs: bool = Field(default=True, strict=True)


class SinkSettings(BaseModel):
    """``sink:``: where the slot's events go besides (or instead of) the Postgres queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kafka: KafkaSinkSettings | None = None
    # false: the slot's events go to Kafka only (no runs in Postgres for table and message rules)
    postgres: bool = Field(default=True, strict=True)


QueueFormat = Literal["json", "text"]


class QueueSettings(BaseModel):
    """One broker to consume (listener.ingest.queues): exactly one of ``kafka:``, ``redis_stream:``,
    ``jetstream:``; rules name it with ``queue:``.  Each message becomes events keyed by its broker
    position, committed with that position before the broker is acknowledged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, AfterValidator(check_rule_name)]
    kafka: KafkaSettings | None = None
    redis_stream: RedisStreamSettings | None = None
    jetstream: JetStreamSettings | None = None
    # how a message's body is read: JSON (the rules see it as jsonb), or text (a JSON string); a body that
    # does not read is parked (`listener queues parked`), not lost
    format: QueueFormat = "json"
    # pending runs of ungated rules, at most: beyond, the source stops fetching until the workers catch up
    max_backlog: int | None = Field(default=QUEUE_MAX_BACKLOG, ge=1, strict=True)
    fetch: int = Field(default=QUEUE_FETCH, ge=1, le=100_000, strict=True)  # messages per fetch, at most

    @model_validator(mode="after")
    def _one_broker(self) -> QueueSettings:
        given = [k for k in ("kafka", "redis_stream", "jetstream") if getattr(self, k) is not None]
        if len(given) != 1:
            what = "names no broker" if not given else f"has {' and '.join(given)}: pick one"
            raise custom_error(
                "queue_broker",
                f"queue {self.name!r} {what}",
                "give exactly one of `kafka: {brokers, topics, group}`, `redis_stream: {url, stream, group}` "
                "or `jetstream: {url, stream, durable}`",
            )
        return self

    @property
    def broker(self) -> str:
        """``kafka``, ``redis_stream`` or ``jetstream``."""
        return "kafka" if self.kafka else "redis_stream" if self.redis_stream else "jetstream"


Overlap = Literal["skip", "buffer_one", "allow"]


class ScheduleSettings(BaseModel):
    """One schedule: its ticks (``cron:`` in ``tz:``, or ``every:``), each one event keyed
    ``schedule/NAME/tick in UTC/0`` that starts ``workflow`` (listener.rules.schedules)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, AfterValidator(check_rule_name)]
    cron: Annotated[str | None, AfterValidator(check_cron)] = None
    every: Annotated[
        str | None,
        unit_required("duration", DURATION_HINT),
        AfterValidator(check_duration),
        AfterValidator(check_whole_seconds),
    ] = None
    tz: Annotated[str, AfterValidator(check_time_zone)] = SCHEDULE_TZ
    workflow: Annotated[str, AfterValidator(check_workflow)]
    # ticks missed while no `listener run` ran are made up when they are no older than this (0s: none)
    catchup: Annotated[
        str, unit_required("duration", DURATION_HINT), AfterValidator(check_duration_or_zero)
    ] = SCHEDULE_CATCHUP
    # a tick while an earlier tick's run is unfinished: no run (skip), a run unless one already waits
    # (buffer_one), or a run that may overlap the earlier one (allow)
    overlap: Overlap = "skip"
    # each tick's run is started up to this much later (the same delay on every replica, per tick)
    jitter: Annotated[
        str | None, unit_required("duration", DURATION_HINT), AfterValidator(check_duration)
    ] = None
    priority: int = Field(default=0, ge=-1000, le=1000, strict=True)

    @model_validator(mode="after")
    def _cron_or_every(self) -> ScheduleSettings:
        if (self.cron is None) == (self.every is None):
            raise custom_error(
                "schedule_spec",
                f"schedule {self.name!r} needs exactly one of `cron:` and `every:`",
                'e.g. cron: "0 2 * * *" (with tz: Europe/Paris) or every: 30s',
            )
        if self.every is not None and self.jitter is not None and self.jitter_s >= self.every_s:
            raise custom_error(
                "schedule_jitter",
                f"schedule {self.name!r}: jitter {self.jitter} is not shorter than every {self.every}",
                "make the jitter shorter than the interval, or remove it",
            )
        return self

    @property
    def every_s(self) -> int:
        assert self.every is not None
        return int(parse_duration(self.every))

    @property
    def catchup_s(self) -> float:
        return parse_duration(self.catchup)

    @property
    def jitter_s(self) -> float:
        return parse_duration(self.jitter) if self.jitter is not None else 0.0

    @property
    def gated(self) -> bool:
        """Whether the schedule's runs go one at a time (skip, buffer_one)."""
        return self.overlap != "allow"


class RetainSettings(BaseModel):
    """The retention window: how much already-ingested WAL the slot keeps, so `listener rewind` can re-read
    it.  Without ``duration`` and ``size`` nothing is kept (the slot confirms the checkpoint)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # by commit time: the slot keeps the WAL of transactions committed within this long before now
    duration: Annotated[
        str | None, unit_required("duration", DURATION_HINT), AfterValidator(check_duration)
    ] = None
    # by WAL bytes between the oldest rewindable position and the checkpoint, at most (caps `duration`)
    size: Annotated[str | None, unit_required("size", SIZE_HINT), AfterValidator(check_size)] = None
    # `listener status` warns when the slot holds more WAL than this (default: twice `size`, or 10GB)
    warn_size: Annotated[str | None, unit_required("size", SIZE_HINT), AfterValidator(check_size)] = None

    @property
    def enabled(self) -> bool:
        """Whether any WAL is kept behind the checkpoint."""
        return self.duration is not None or self.size is not None

    @property
    def duration_s(self) -> float | None:
        return parse_duration(self.duration) if self.duration is not None else None

    @property
    def size_bytes(self) -> int | None:
        return parse_size(self.size) if self.size is not None else None

    @property
    def warn_bytes(self) -> int:
        if self.warn_size is not None:
            return parse_size(self.warn_size)
        size = self.size_bytes
        return 2 * size if size is not None else RETAIN_WARN_BYTES


class JournalSettings(BaseModel):
    """The change journal: how long ingest keeps the rule tables' changes (raw pgoutput messages), so
    `listener replay` reaches further back than the WAL the slot keeps.  Without ``keep`` it is off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # by commit time: the journal keeps the changes committed within this long before now
    keep: Annotated[str | None, unit_required("duration", DURATION_HINT), AfterValidator(check_duration)] = (
        None
    )

    @property
    def enabled(self) -> bool:
        return self.keep is not None

    @property
    def keep_s(self) -> float | None:
        return parse_duration(self.keep) if self.keep is not None else None


class RunsSettings(BaseModel):
    """The retention of finished work: how long done and cancelled runs are kept, with their events, steps
    and attempts, before the slot's leader prunes them (listener.ingest.retention).  Without ``keep`` (and
    without ``workflows``) nothing is pruned.  Dead runs are never pruned: they wait for an operator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # by finish time: a done or cancelled run is kept this long after it finished (absent: for ever)
    keep: Annotated[str | None, unit_required("duration", DURATION_HINT), AfterValidator(check_keep)] = None
    # per workflow (module.path:function): its own period, or `forever`, instead of `keep`
    workflows: dict[
        Annotated[str, AfterValidator(check_workflow)],
        Annotated[str, unit_required("duration", DURATION_HINT), AfterValidator(check_keep)],
    ] = Field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """Whether anything is ever pruned."""
        return self.keep_s is not None or any(v != FOREVER for v in self.workflows.values())

    @property
    def keep_s(self) -> float | None:
        """The default period in seconds (None: for ever)."""
        return _keep_seconds(self.keep)

    def keep_of(self, workflow: str) -> float | None:
        """How long ``workflow``'s finished runs are kept, in seconds (None: for ever)."""
        if workflow in self.workflows:
            return _keep_seconds(self.workflows[workflow])
        return self.keep_s

    def shortest(self) -> tuple[tuple[str, ...], str, float] | None:
        """The shortest period that prunes: (where in the file, as written, seconds), or None."""
        found: list[tuple[tuple[str, ...], str]] = [(("runs", "keep"), self.keep)] if self.keep else []
        found += [(("runs", "workflows", name), value) for name, value in self.workflows.items()]
        periods = [(where, text, s) for where, text in found if (s := _keep_seconds(text)) is not None]
        return min(periods, key=lambda p: p[2]) if periods else None


def _keep_seconds(value: str | None) -> float | None:
    return parse_duration(value) if value is not None and value != FOREVER else None


class Rule(BaseModel):
    """One rule: what it listens to (a table's changes, logical decoding messages with a prefix, or NOTIFYs
    on a channel) and the workflow each matching change starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, AfterValidator(check_rule_name)]
    # the source: exactly one of these four
    table: TableName | None = None
    message: Annotated[str | None, check_source_name("message")] = None
    channel: Annotated[str | None, check_source_name("channel")] = None
    webhook: Annotated[str | None, check_source_name("webhook")] = None  # a `webhooks:` entry's name
    queue: Annotated[str | None, check_source_name("queue")] = None  # a `queues:` entry's name
    on: Annotated[
        tuple[Operation, ...] | None, BeforeValidator(wrap_operations), AfterValidator(dedupe_operations)
    ] = None
    workflow: Annotated[str, AfterValidator(check_workflow)]
    # Table rules only: which changes match (a SQL boolean over new.<col> / old.<col>, compiled at load
    # time against the table's columns; never sent to the database), which columns must have changed
    # (updates), and what the workflow receives (columns picked and renamed; default: the whole row).
    when: str | None = None
    changed: Annotated[tuple[str, ...] | None, BeforeValidator(wrap_names)] = None
    payload: Annotated[dict[str, str] | None, BeforeValidator(payload_mapping)] = None
    priority: int = Field(default=0, ge=-1000, le=1000, strict=True)  # higher runs are claimed first
    # Flow control (enforced in Postgres across all workers).  The key names what a change is about:
    # a template over the row, e.g. "{new.tenant_id}"; by default the row's primary key.
    key: Annotated[str | None, AfterValidator(check_key_template)] = None
    key_concurrency: int | None = Field(default=None, ge=1, strict=True)  # running runs per key, at most
    ordered: bool = False  # runs of one key start in commit order, one after the other
    # Table rules only: the first `listener run` that has this rule backfills the table's rows, once.
    snapshot: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> Rule:
        given = [
            k for k in ("table", "message", "channel", "webhook", "queue") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            what = "names no source" if not given else f"has {' and '.join(given)}: pick one"
            hint = (
                "give exactly one of `table: public.users`, `message: <prefix>`, `channel: <name>`, "
                "`webhook: <name of a webhooks: entry>` or `queue: <name of a queues: entry>`"
            )
            raise custom_error("rule_source", f"rule {what}", hint)
        if self.webhook is not None or self.queue is not None:
            kind, parts = (
                ("webhook", "request (body, headers, query, method, path)")
                if self.webhook is not None
                else ("queue", "message (body, headers, key, topic)")
            )
            refused = [k for k in ("on", "changed", "snapshot") if getattr(self, k) not in (None, False)]
            if refused:
                raise custom_error(
                    "table_only",
                    f"{', '.join(refused)} do not apply to a {kind} rule",
                    f"remove {', '.join(refused)}; a {kind} rule's event carries the {parts}; `when:` "
                    "tests it, `payload:` and `key:` pick from it",
                )
            if self.gated and self.key is None:
                raise custom_error(
                    f"{kind}_key",
                    f"a {kind} rule's key_concurrency: and ordered: need `key:` (there is no row key)",
                    'name what the runs are about, e.g. key: "{body.customer}"'
                    if kind == "queue"
                    else 'name what the runs are about, e.g. key: "{body.data.object.customer}"',
                )
        if self.table is not None and self.on is None:
            raise custom_error(
                "rule_on",
                "a table rule needs `on:`",
                "add e.g. `on: [insert, update]` (any of insert, update, delete, truncate)",
            )
        if self.table is None and self.webhook is None and self.queue is None:
            table_only = [
                k for k in ("on", "when", "changed", "payload", "key") if getattr(self, k) is not None
            ]
            if table_only:
                source = "message" if self.message is not None else "channel"
                raise custom_error(
                    "table_only",
                    f"{', '.join(table_only)} only apply to table rules, not to a {source} rule",
                    f"remove {', '.join(table_only)}; a {source} rule's event carries the {source}'s payload",
                )
        if self.snapshot and self.table is None:
            raise custom_error(
                "table_only",
                "snapshot: only applies to table rules",
                "remove `snapshot:`, or give the rule a `table:`",
            )
        if self.changed is not None and self.on is not None and "update" not in self.on:
            raise custom_error(
                "changed_without_update",
                "`changed:` applies to updates, but `on:` has no update",
                "add update to `on:`, or remove `changed:`",
            )
        return self

    @property
    def operations(self) -> tuple[Operation, ...]:
        return self.on or ()

    @property
    def source(self) -> str:
        """``table``, ``message``, ``channel``, ``webhook`` or ``queue``."""
        if self.table is not None:
            return "table"
        if self.queue is not None:
            return "queue"
        return "message" if self.message is not None else "webhook" if self.webhook is not None else "channel"

    @property
    def gated(self) -> bool:
        """Whether this rule's runs need flow control per key."""
        return self.key_concurrency is not None or self.ordered

    @property
    def schema_name(self) -> str:
        """The table's schema, unquoted (``Sales`` for ``"Sales"."Order Items"``)."""
        assert self.table is not None
        return split_table(self.table)[0]

    @property
    def table_name(self) -> str:
        """The table's own name, unquoted (``Order Items`` for ``"Sales"."Order Items"``)."""
        assert self.table is not None
        return split_table(self.table)[1]


class WorkflowLimit(BaseModel):
    """Limits of one workflow across all workers: ``concurrency`` running at once, ``rate`` starts per
    period (``"60/minute"``, ``"5/second"``, ``"1000/hour"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow: Annotated[str, AfterValidator(check_workflow)]
    concurrency: int | None = Field(default=None, ge=1, strict=True)
    rate: Annotated[str | None, AfterValidator(check_rate)] = None

    @property
    def rate_limit(self) -> tuple[int, float] | None:
        """(starts, period in seconds), or None."""
        return parse_rate(self.rate) if self.rate is not None else None


class Config(BaseModel):
    """The whole configuration file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dsn: str | None = None
    state_dsn: str | None = None
    slot: Annotated[str, AfterValidator(check_slot)] = DEFAULT_SLOT
    # PostgreSQL 17+: true makes the slot a failover slot (created or altered so), which standbys with
    # sync_replication_slots keep; false makes it one that never fails over; absent: created with failover
    # where the server has it, an existing slot left as it is (listener.install.failover)
    slot_failover: bool | None = Field(default=None, strict=True)
    publication: Annotated[str, plain_identifier("publication")] = DEFAULT_PUBLICATION
    state_schema: Annotated[str, plain_identifier("state_schema")] = DEFAULT_STATE_SCHEMA
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    retain: RetainSettings = Field(default_factory=RetainSettings)
    journal: JournalSettings = Field(default_factory=JournalSettings)
    runs: RunsSettings = Field(default_factory=RunsSettings)
    http: HttpSettings | None = None
    webhooks: tuple[WebhookSettings, ...] = ()
    schedules: tuple[ScheduleSettings, ...] = ()
    queues: tuple[QueueSettings, ...] = ()
    sink: SinkSettings = Field(default_factory=SinkSettings)
    rules: tuple[Rule, ...] = ()
    limits: tuple[WorkflowLimit, ...] = ()
    # Directories to import workflows from, relative to the config file's, before the config file's own
    # directory (which is always importable, like uvicorn's --app-dir).
    workflows_path: tuple[str, ...] = ()

    _source_path: str | None = PrivateAttr(default=None)
    _rule_lines: dict[str, int] = PrivateAttr(default_factory=dict)
    _field_lines: dict[tuple[str, str], int] = PrivateAttr(default_factory=dict)
    _setting_lines: dict[tuple[str, str], int] = PrivateAttr(default_factory=dict)  # (section, key)

    @field_validator("workflows_path", mode="before")
    @classmethod
    def _one_path_or_several(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator(
        "ingest",
        "worker",
        "retain",
        "journal",
        "runs",
        "rules",
        "webhooks",
        "schedules",
        "queues",
        "sink",
        mode="before",
    )
    @classmethod
    def _empty_section_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        # "rules:" with nothing under it is YAML null: read it as "no entries", not as an error.
        if value is None:
            return () if info.field_name in ("rules", "webhooks", "schedules", "queues") else {}
        return value

    @model_validator(mode="after")
    def _unique_schedule_names(self) -> Config:
        first: dict[str, int] = {}
        for index, schedule in enumerate(self.schedules):
            if schedule.name in first:
                raise custom_error(
                    "duplicate_schedule",
                    f"schedule name {schedule.name!r} is already used by schedules[{first[schedule.name]}]",
                    "give each schedule its own name: it is part of every tick's idempotency key",
                    index=index,
                )
            first[schedule.name] = index
        return self

    @model_validator(mode="after")
    def _webhooks_are_served(self) -> Config:
        names: dict[str, int] = {}
        paths: dict[str, int] = {}
        for index, hook in enumerate(self.webhooks):
            for seen, value, what in ((names, hook.name, "name"), (paths, hook.path, "path")):
                if value in seen:
                    raise custom_error(
                        "duplicate_webhook",
                        f"webhook {what} {value!r} is already used by webhooks[{seen[value]}]",
                        f"give each webhook its own {what}",
                        index=index,
                    )
                seen[value] = index
        if self.webhooks and self.http is None:
            raise custom_error(
                "webhooks_need_http",
                "`webhooks:` are served by the HTTP server, and there is no `http:` section",
                'add `http: {listen: "0.0.0.0:8080"}` (the address the providers reach)',
            )
        for index, rule in enumerate(self.rules):
            if rule.webhook is not None and rule.webhook not in names:
                known = ", ".join(names) or "none"
                raise custom_error(
                    "unknown_webhook",
                    f"rule {rule.name!r} names webhook {rule.webhook!r}, which `webhooks:` does not define",
                    f"define it under `webhooks:` (name, path, verify, secret_env), or name one of: {known}",
                    index=index,
                )
        return self

    @model_validator(mode="after")
    def _sink_has_a_destination(self) -> Config:
        if not self.sink.postgres and self.sink.kafka is None:
            raise custom_error(
                "sink_nowhere",
                "sink: postgres: false, and no other sink: the slot's events would go nowhere",
                "add `sink: {kafka: {brokers: [...], topic: ...}}`, or remove `postgres: false`",
            )
        return self

    @model_validator(mode="after")
    def _queues_are_defined(self) -> Config:
        names: dict[str, int] = {}
        for index, queue in enumerate(self.queues):
            if queue.name in names:
                raise custom_error(
                    "duplicate_queue",
                    f"queue name {queue.name!r} is already used by queues[{names[queue.name]}]",
                    "give each queue its own name: it is part of every message's idempotency key",
                    index=index,
                )
            names[queue.name] = index
        for index, rule in enumerate(self.rules):
            if rule.queue is not None and rule.queue not in names:
                known = ", ".join(names) or "none"
                raise custom_error(
                    "unknown_queue",
                    f"rule {rule.name!r} names queue {rule.queue!r}, which `queues:` does not define",
                    f"define it under `queues:` (name and one of kafka:, redis_stream:, jetstream:), or "
                    f"name one of: {known}",
                    index=index,
                )
        return self

    @model_validator(mode="after")
    def _runs_outlive_redelivery(self) -> Config:
        # A pruned event's key is forgotten: the windows through which listener itself can deliver an
        # event again (a rewind, a replay of the journal or of a webhook's kept requests) must not reach
        # past the runs kept, or they would make runs of events that already ran (README "Retention").
        shortest = self.runs.shortest()
        if shortest is None:
            return self
        where, text, seconds = shortest
        windows = [
            ("retain.duration", self.retain.duration, "`listener rewind`"),
            ("journal.keep", self.journal.keep, "`listener replay`"),
            *((f"webhooks[{i}].keep", hook.keep, "`listener replay --webhook`")
              for i, hook in enumerate(self.webhooks)),
        ]  # fmt: skip
        for name, window, tool in windows:
            if window is not None and parse_duration(window) > seconds:
                raise custom_error(
                    "runs_keep_short",
                    f"{'.'.join(where)}: {text} is shorter than {name} ({window}): {tool} could deliver "
                    "again events whose runs were pruned, and run them a second time",
                    f"keep finished runs at least as long ({'.'.join(where)}: {window}), or shorten {name}",
                    path=where,
                )
        return self

    @model_validator(mode="after")
    def _unique_rule_names(self) -> Config:
        first: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.name in first:
                hint = "give each rule its own name: it is part of every event's idempotency key"
                raise custom_error(
                    "duplicate_rule_name",
                    f"rule name {rule.name!r} is already used by rules[{first[rule.name]}]",
                    hint,
                    index=index,
                )
            first[rule.name] = index
        return self

    def import_dirs(self) -> list[Path]:
        """Where workflows are imported from, first first: ``workflows_path:`` (relative to the config
        file's directory), then the config file's directory (the current one without a file)."""
        base = Path(self._source_path).absolute().parent if self._source_path else Path.cwd()
        return [*(base / p for p in self.workflows_path), base]

    @property
    def source_path(self) -> str | None:
        """The file this configuration was loaded from, or None."""
        return self._source_path

    def with_source_path(self, path: str | None) -> Config:
        """A copy of this configuration that records ``path`` as where it came from."""
        copy = self.model_copy()
        copy._source_path = path
        copy._rule_lines = dict(self._rule_lines)
        copy._field_lines = dict(self._field_lines)
        copy._setting_lines = dict(self._setting_lines)
        return copy

    def setting_place(self, section: str, key: str) -> tuple[str | None, int | None]:
        """(file, line) of a setting such as ``http: listen:``."""
        return self._source_path, self._setting_lines.get((section, key))

    def field_place(self, rule: str, key: str) -> tuple[str | None, int | None]:
        """(file, line) of a rule's ``key:`` -- or of the rule, when that key is not written."""
        line = self._field_lines.get((rule, key), self._rule_lines.get(rule))
        return self._source_path, line

    def field_location(self, rule: str, key: str) -> str:
        """Where a rule's ``key:`` (e.g. ``when``) is written, as ``file:line``; else the rule's location."""
        line = self._field_lines.get((rule, key))
        if self._source_path is None or line is None:
            return self.rule_location(rule)
        return f"{self._source_path}:{line}"

    def rule_location(self, rule: str) -> str:
        """Where a rule's ``table:`` is written, as ``file:line`` (or ``rule NAME`` when not from a file)."""
        line = self._rule_lines.get(rule)
        if self._source_path is None or line is None:
            return f"rule {rule}"
        return f"{self._source_path}:{line}"
