"""The configuration file (``listener.yaml``): pydantic models and a loader with precise errors.

The loader composes the YAML node tree itself (``SafeLoader``) instead of calling ``yaml.safe_load`` so that
every value keeps its line number and duplicate keys (which PyYAML silently collapses) are refused.  Each
pydantic error is then reported as ``file:line, rule 'name': field.path: what is wrong`` with a fix.
"""

from __future__ import annotations

import difflib
import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from listener.errors import ConfigError
from listener.pg.publications import MAX_IDENTIFIER_BYTES

DEFAULT_CONFIG_FILE = "listener.yaml"
DEFAULT_SLOT = "listener"
DEFAULT_PUBLICATION = "listener"
DEFAULT_STATE_SCHEMA = "listener"
BATCH_EVENTS = 5000
BATCH_DELAY_MS = 5.0
STATUS_INTERVAL_S = 10.0
COMPACT_AFTER = 2000
COMPACT_CHUNK_CHANGES = 20000
EXPAND_AHEAD = 20000
BACKFILL_CHUNK_ROWS = 20000  # rows a backfill reads between two watermarks
WORKER_CONCURRENCY = 16
POLL_INTERVAL_S = 5.0
LEASE_S = 30.0  # a claimed run's lease, renewed by heartbeat every third of it
GRACE_S = 30.0  # on SIGTERM, how long running workflows may take to finish before their leases are released
RUN_TIMEOUT_S = 3600.0  # a run's timeout when its workflow sets none (@workflow(timeout=...))
RETAIN_WARN_BYTES = 10 * 1024**3  # `listener status` warns above this much WAL held by the slot (no `size`)

Operation = Literal["insert", "update", "delete", "truncate"]
OPERATIONS: tuple[Operation, ...] = ("insert", "update", "delete", "truncate")

EXAMPLE_CONFIG = """\
# listener.yaml: which row changes start which workflows
rules:
  - name: onboard_user
    table: public.users
    on: [insert]
    workflow: listener_examples.onboarding:welcome
"""

# ---------------------------------------------------------------------------------------------------------
# Table names, parsed the way PostgreSQL parses a qualified name.

# Keywords quote_ident() quotes: PostgreSQL's reserved and type/function-name keywords (kwlist.h).
_KEYWORDS = """
    all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate
    collation column concurrently constraint create cross current_catalog current_date current_role
    current_schema current_time current_timestamp current_user default deferrable desc distinct do else end
    except false fetch for foreign freeze from full grant group having ilike in initially inner intersect into
    is isnull join lateral leading left like limit localtime localtimestamp natural not notnull null offset on
    only or order outer overlaps placing primary references returning right select session_user similar some
    symmetric system_user table tablesample then to trailing true union unique user using variadic verbose
    when where window with"""
SQL_KEYWORDS = frozenset(_KEYWORDS.split())
_SAFE_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")
# One name of a qualified name, with the blanks around it: "quoted ""x""" or unquoted (folded later).
_IDENT_TOKEN = re.compile(
    r'\s*(?:"((?:[^"]|"")*)"|([A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*))\s*'
)
_FOLD_ASCII = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TABLE_HINT = (
    'write schema.table, e.g. public.users; quote names with capitals or spaces: \'"Sales"."Items"\''
)


def quote_ident(name: str) -> str:
    """Quote ``name`` only where needed, by the rule of PostgreSQL's ``quote_ident()``."""
    if _SAFE_IDENT.fullmatch(name) and name not in SQL_KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def qualified_name(schema: str, name: str) -> str:
    """The display (and SQL) form of a table: ``public.users``, ``"Sales"."Order Items"``."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def split_table(text: str) -> tuple[str, str]:
    """Parse ``schema.table`` or ``table`` (meaning ``public.table``) into the real, unquoted names.

    Unquoted identifiers fold to lower case, ``"..."`` keeps case and spaces, ``""`` inside quotes is a quote.
    Raises ``ValueError`` with a readable reason when ``text`` is not such a name.
    """
    parts: list[str] = []
    pos = 0
    while True:
        match = _IDENT_TOKEN.match(text, pos)
        if match is None:
            rest = text[pos:].lstrip()
            problem = (
                "a '\"' is not closed" if rest.startswith('"') else f"expected a name at position {pos + 1}"
            )
            raise ValueError(f"{text!r} is not a table name: {problem}")
        quoted, bare = match.groups()
        ident = bare.translate(_FOLD_ASCII) if quoted is None else quoted.replace('""', '"')
        if not ident:
            raise ValueError(f'{text!r} is not a table name: "" is an empty name')
        if len(ident.encode()) > MAX_IDENTIFIER_BYTES:
            raise ValueError(f"{ident!r} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte name limit")
        parts.append(ident)
        pos = match.end()
        if pos == len(text):
            break
        if text[pos] != ".":
            raise ValueError(f"{text!r} is not a table name: unexpected {text[pos]!r} at position {pos + 1}")
        pos += 1
    if len(parts) > 2:
        raise ValueError(f"{text!r} has {len(parts)} parts; name a table as schema.table")
    return ("public", parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _custom(kind: str, message: str, hint: str, **context: Any) -> PydanticCustomError:
    # Pre-formatted message (pydantic templates know no !r); _describe() shows the hint as the fix.
    return PydanticCustomError(kind, "{message}", {"message": message, "hint": hint, **context})


def _normalize_table(value: str) -> str:
    try:
        return qualified_name(*split_table(value))
    except ValueError as exc:
        raise _custom("table_name", str(exc), _TABLE_HINT) from None


def _check_rule_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", value):
        hint = "start with a letter or '_', then letters, digits, '_', '.' or '-', e.g. onboard_user"
        raise _custom("rule_name", f"{value!r} is not a valid rule name", hint)
    return value


def _check_workflow(value: str) -> str:
    module, sep, function = value.partition(":")
    names = [*module.split("."), function]
    if not sep or not all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        hint = "write module.path:function, e.g. listener_examples.onboarding:welcome"
        raise _custom("workflow_ref", f"{value!r} is not a workflow reference", hint)
    return value


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")
_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_KEY_FIELD = re.compile(r"\{(new|old)\.([^{}]+)\}")


def parse_rate(text: str) -> tuple[int, float]:
    """``"60/minute"`` -> (60, 60.0)."""
    match = _RATE.match(text)
    if match is None or int(match[1]) < 1:
        raise ValueError(text)
    return int(match[1]), _PERIODS[match[2]]


def _check_rate(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_rate(value)
        except ValueError:
            raise _custom(
                "rate",
                f"rate {value!r} is not N/period",
                "write e.g. '60/minute' (second, minute, hour, day)",
            ) from None
    return value


_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(w|d|h|min|m|s)\s*", re.IGNORECASE)
_DURATION_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_DURATION_HINT = "write a number and a unit, e.g. 90s, 15m, 24h, 7d or 1h30m (s, m, h, d, w)"
_SIZE_HINT = "write a number and a unit, e.g. 512MB, 10GB or 1.5TB (B, kB, MB, GB, TB; 1kB = 1024 bytes)"


def parse_duration(text: str) -> float:
    """``"1h30m"`` -> 5400.0 seconds; raise ``ValueError`` for anything else (a bare number has no unit)."""
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(text)
        total += float(match[1]) * _DURATION_UNITS[match[2].lower()]
        pos = match.end()
    if pos == 0:
        raise ValueError(text)
    return total


def parse_size(text: str) -> int:
    """``"1.5GB"`` -> bytes, in PostgreSQL's binary units (1kB = 1024 bytes); ``ValueError`` otherwise."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(text)
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def _unit_required(kind: str, hint: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise _custom(kind, f"{_show(value)} has no unit", hint)
        return value

    return BeforeValidator(check)


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise _custom("duration", f"{value!r} is not a duration", _DURATION_HINT) from None
        if seconds <= 0:
            raise _custom("duration", f"duration {value!r} is not more than 0", _DURATION_HINT)
    return value


def _check_size(value: str | None) -> str | None:
    if value is not None:
        try:
            size = parse_size(value)
        except ValueError:
            raise _custom("size", f"{value!r} is not a size", _SIZE_HINT) from None
        if size <= 0:
            raise _custom("size", f"size {value!r} is not more than 0", _SIZE_HINT)
    return value


def _check_key_template(value: str | None) -> str | None:
    if value is not None and not _KEY_FIELD.search(value):
        raise _custom(
            "key_template",
            f"key {value!r} names no column",
            'use {new.column} or {old.column}, e.g. key: "{new.tenant_id}"',
        )
    return value


def key_fields(template: str) -> list[tuple[str, str]]:
    """The (new|old, column) references of a key template."""
    return [(m[1], m[2]) for m in _KEY_FIELD.finditer(template)]


def _check_source_name(what: str) -> AfterValidator:
    def check(value: str | None) -> str | None:
        if value is not None and (
            not value or (len(value.encode()) > MAX_IDENTIFIER_BYTES and what == "channel")
        ):
            hint = f"e.g. {what}: orders" + (
                " (a channel name has at most 63 bytes)" if what == "channel" else ""
            )
            raise _custom(f"{what}_name", f"{value!r} is not a valid {what} name", hint)
        return value

    return AfterValidator(check)


def _wrap_names(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        if not value:
            raise _custom("names_empty", "lists no column", "write e.g. changed: [status, priority]")
        return tuple(v.strip() if isinstance(v, str) else v for v in value)
    return value


def _payload_mapping(value: Any) -> Any:
    """``payload: [id, status]`` picks columns of the new row; ``payload: {ticket: new.id, was: old.status}``
    also renames them.  Both become {output name: "new.col" | "old.col"}."""
    if isinstance(value, list | tuple):
        if not value:
            raise _custom("payload_empty", "lists no column", "write e.g. payload: [id, status]")
        out: dict[str, Any] = {}
        for item in value:
            if not isinstance(item, str):
                raise _custom(
                    "payload_item", f"{item!r} is not a column name", "write e.g. payload: [id, status]"
                )
            side, _, column = item.strip().rpartition(".")
            out[column] = f"{side or 'new'}.{column}"
        return out
    if isinstance(value, dict):
        shaped: dict[str, Any] = {}
        for name, ref in value.items():
            if not isinstance(ref, str):
                raise _custom(
                    "payload_item",
                    f"payload.{name}: {ref!r} is not a column",
                    "write e.g. payload: {ticket: new.id}",
                )
            side, _, column = ref.strip().rpartition(".")
            if side not in ("", "new", "old"):
                raise _custom(
                    "payload_item",
                    f"payload.{name}: {ref!r} is not new.<column> or old.<column>",
                    "write e.g. payload: {ticket: new.id, was: old.status}",
                )
            shaped[str(name)] = f"{side or 'new'}.{column}"
        return shaped
    return value


def _wrap_operations(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        return tuple(v.strip().lower() if isinstance(v, str) else v for v in value)
    return value


def _dedupe_operations(value: tuple[Operation, ...]) -> tuple[Operation, ...]:
    if not value:
        raise _custom("operations_empty", "lists no operation", "write e.g. on: [insert, update]")
    return tuple(dict.fromkeys(value))


def _plain_identifier(what: str) -> AfterValidator:
    def check(value: str) -> str:
        if quote_ident(value) != value or len(value) > MAX_IDENTIFIER_BYTES:
            hint = f"use lower-case letters, digits and '_' (not an SQL keyword), e.g. {what}: listener"
            raise _custom("identifier", f"{value!r} is not a plain lower-case identifier", hint)
        return value

    return AfterValidator(check)


def _check_slot(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9_]{1,63}", value):
        hint = "a slot name has 1 to 63 lower-case letters, digits or '_', e.g. slot: listener"
        raise _custom("slot_name", f"{value!r} is not a valid replication slot name", hint)
    return value


TableName = Annotated[str, AfterValidator(_normalize_table)]
"""A table as ``schema.table`` in display form, quoted only where PostgreSQL's ``quote_ident`` would."""

# ---------------------------------------------------------------------------------------------------------
# Models


class IngestSettings(BaseModel):
    """How row changes are batched into the state database."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_events: int = Field(default=BATCH_EVENTS, ge=1, strict=True)
    batch_delay_ms: float = Field(default=BATCH_DELAY_MS, ge=0, strict=True, allow_inf_nan=False)
    status_interval_s: float = Field(default=STATUS_INTERVAL_S, gt=0, strict=True, allow_inf_nan=False)
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
    poll_interval_s: float = Field(default=POLL_INTERVAL_S, gt=0, strict=True, allow_inf_nan=False)
    lease_s: float = Field(default=LEASE_S, gt=0, strict=True, allow_inf_nan=False)
    grace_s: float = Field(default=GRACE_S, ge=0, strict=True, allow_inf_nan=False)
    run_timeout_s: float = Field(default=RUN_TIMEOUT_S, gt=0, strict=True, allow_inf_nan=False)


class RetainSettings(BaseModel):
    """The retention window: how much already-ingested WAL the slot keeps, so `listener rewind` can re-read
    it.  Without ``duration`` and ``size`` nothing is kept (the slot confirms the checkpoint)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # by commit time: the slot keeps the WAL of transactions committed within this long before now
    duration: Annotated[
        str | None, _unit_required("duration", _DURATION_HINT), AfterValidator(_check_duration)
    ] = None
    # by WAL bytes between the oldest rewindable position and the checkpoint, at most (caps `duration`)
    size: Annotated[str | None, _unit_required("size", _SIZE_HINT), AfterValidator(_check_size)] = None
    # `listener status` warns when the slot holds more WAL than this (default: twice `size`, or 10GB)
    warn_size: Annotated[str | None, _unit_required("size", _SIZE_HINT), AfterValidator(_check_size)] = None

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
    keep: Annotated[
        str | None, _unit_required("duration", _DURATION_HINT), AfterValidator(_check_duration)
    ] = None

    @property
    def enabled(self) -> bool:
        return self.keep is not None

    @property
    def keep_s(self) -> float | None:
        return parse_duration(self.keep) if self.keep is not None else None


class Rule(BaseModel):
    """One rule: what it listens to (a table's changes, logical decoding messages with a prefix, or NOTIFYs
    on a channel) and the workflow each matching change starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, AfterValidator(_check_rule_name)]
    # the source: exactly one of these three
    table: TableName | None = None
    message: Annotated[str | None, _check_source_name("message")] = None
    channel: Annotated[str | None, _check_source_name("channel")] = None
    on: Annotated[
        tuple[Operation, ...] | None, BeforeValidator(_wrap_operations), AfterValidator(_dedupe_operations)
    ] = None
    workflow: Annotated[str, AfterValidator(_check_workflow)]
    # Table rules only: which changes match (a SQL boolean over new.<col> / old.<col>, compiled at load
    # time against the table's columns; never sent to the database), which columns must have changed
    # (updates), and what the workflow receives (columns picked and renamed; default: the whole row).
    when: str | None = None
    changed: Annotated[tuple[str, ...] | None, BeforeValidator(_wrap_names)] = None
    payload: Annotated[dict[str, str] | None, BeforeValidator(_payload_mapping)] = None
    priority: int = Field(default=0, ge=-1000, le=1000, strict=True)  # higher runs are claimed first
    # Flow control (enforced in Postgres across all workers).  The key names what a change is about:
    # a template over the row, e.g. "{new.tenant_id}"; by default the row's primary key.
    key: Annotated[str | None, AfterValidator(_check_key_template)] = None
    key_concurrency: int | None = Field(default=None, ge=1, strict=True)  # running runs per key, at most
    ordered: bool = False  # runs of one key start in commit order, one after the other
    # Table rules only: the first `listener run` that has this rule backfills the table's rows, once.
    snapshot: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> Rule:
        given = [k for k in ("table", "message", "channel") if getattr(self, k) is not None]
        if len(given) != 1:
            what = "names no source" if not given else f"has {' and '.join(given)}: pick one"
            hint = "give exactly one of `table: public.users`, `message: <prefix>` or `channel: <name>`"
            raise _custom("rule_source", f"rule {what}", hint)
        if self.table is not None and self.on is None:
            raise _custom(
                "rule_on",
                "a table rule needs `on:`",
                "add e.g. `on: [insert, update]` (any of insert, update, delete, truncate)",
            )
        if self.table is None:
            table_only = [
                k for k in ("on", "when", "changed", "payload", "key") if getattr(self, k) is not None
            ]
            if table_only:
                source = "message" if self.message is not None else "channel"
                raise _custom(
                    "table_only",
                    f"{', '.join(table_only)} only apply to table rules, not to a {source} rule",
                    f"remove {', '.join(table_only)}; a {source} rule's event carries the {source}'s payload",
                )
        if self.snapshot and self.table is None:
            raise _custom(
                "table_only",
                "snapshot: only applies to table rules",
                "remove `snapshot:`, or give the rule a `table:`",
            )
        if self.changed is not None and self.on is not None and "update" not in self.on:
            raise _custom(
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
        """``table``, ``message`` or ``channel``."""
        return "table" if self.table is not None else "message" if self.message is not None else "channel"

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

    workflow: Annotated[str, AfterValidator(_check_workflow)]
    concurrency: int | None = Field(default=None, ge=1, strict=True)
    rate: Annotated[str | None, AfterValidator(_check_rate)] = None

    @property
    def rate_limit(self) -> tuple[int, float] | None:
        """(starts, period in seconds), or None."""
        return parse_rate(self.rate) if self.rate is not None else None


class Config(BaseModel):
    """The whole configuration file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dsn: str | None = None
    state_dsn: str | None = None
    slot: Annotated[str, AfterValidator(_check_slot)] = DEFAULT_SLOT
    publication: Annotated[str, _plain_identifier("publication")] = DEFAULT_PUBLICATION
    state_schema: Annotated[str, _plain_identifier("state_schema")] = DEFAULT_STATE_SCHEMA
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    retain: RetainSettings = Field(default_factory=RetainSettings)
    journal: JournalSettings = Field(default_factory=JournalSettings)
    rules: tuple[Rule, ...] = ()
    limits: tuple[WorkflowLimit, ...] = ()
    # Directories to import workflows from, relative to the config file's, before the config file's own
    # directory (which is always importable, like uvicorn's --app-dir).
    workflows_path: tuple[str, ...] = ()

    _source_path: str | None = PrivateAttr(default=None)
    _rule_lines: dict[str, int] = PrivateAttr(default_factory=dict)
    _field_lines: dict[tuple[str, str], int] = PrivateAttr(default_factory=dict)

    @field_validator("workflows_path", mode="before")
    @classmethod
    def _one_path_or_several(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("ingest", "worker", "retain", "journal", "rules", mode="before")
    @classmethod
    def _empty_section_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        # "rules:" with nothing under it is YAML null: read it as "no entries", not as an error.
        if value is None:
            return () if info.field_name == "rules" else {}
        return value

    @model_validator(mode="after")
    def _unique_rule_names(self) -> Config:
        first: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.name in first:
                hint = "give each rule its own name: it is part of every event's idempotency key"
                raise _custom(
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
        return copy

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


# ---------------------------------------------------------------------------------------------------------
# Loading: YAML node tree -> plain values + line numbers -> models -> errors that point at lines.

YamlPath = tuple[str | int, ...]
_SECTIONS: dict[str, type[BaseModel]] = {
    "ingest": IngestSettings,
    "worker": WorkerSettings,
    "retain": RetainSettings,
    "journal": JournalSettings,
}
_MISSING_HINTS = {
    "name": "add e.g. `name: onboard_user`; the name is part of every event's idempotency key",
    "table": "add e.g. `table: public.users` (a bare name means public.<name>)",
    "on": "add e.g. `on: [insert, update]` (any of insert, update, delete, truncate)",
    "workflow": "add e.g. `workflow: listener_examples.onboarding:welcome` (module.path:function)",
}


@dataclass
class _Document:
    data: Any = None
    lines: dict[YamlPath, int] = field(default_factory=dict)  # 1-based line of each key / list item
    double_quoted: set[YamlPath] = field(default_factory=set)
    duplicates: list[tuple[YamlPath, int, int]] = field(default_factory=list)  # path, line, first line
    values: int = 0  # nodes built so far, aliases counted each time they are used


@dataclass(frozen=True)
class _Problem:
    line: int | None
    rule: str | None
    what: str
    hint: str | None


def _example_hint(intro: str) -> str:
    return intro + "\n" + "\n".join("    " + line for line in EXAMPLE_CONFIG.rstrip().splitlines())


def load_config(path: str | Path) -> Config:
    """Read and validate the configuration file at ``path``; raise ``ConfigError`` pointing at the line."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        hint = _example_hint("create it, see README 'Configuration'; the smallest useful file is:")
        raise ConfigError("configuration file not found", file=name, hint=hint) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=name, hint="save it as UTF-8") from exc
    except OSError as exc:
        hint = "pass the path of a readable YAML file"
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=name, hint=hint) from exc
    return parse_config(text, filename=name).with_source_path(name)


def parse_config(text: str, *, filename: str = "<string>") -> Config:
    """Validate configuration ``text``; ``filename`` is only used in error messages.

    Raises one ``ConfigError`` for all problems found: its message lists each as ``file:line, rule 'x':
    field.path: what; fix: how`` (one per line), and its ``line``/``rule`` fields are those of the first.
    """
    doc = _compose(text, filename)
    try:
        config = Config.model_validate(doc.data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # `tabel:` also makes `table` missing; the "did you mean 'table'?" on the typo says it all.
        typos = {
            (*e["loc"][:-1], _closest_key(str(e["loc"][-1]), tuple(e["loc"][:-1])))
            for e in errors
            if e["type"] == "extra_forbidden"
        }
        problems = [
            _describe(e, doc) for e in errors if e["type"] != "missing" or tuple(e["loc"]) not in typos
        ]
        raise _config_error(problems, filename) from exc
    for index, rule in enumerate(config.rules):
        line = doc.lines.get(("rules", index, rule.source), doc.lines.get(("rules", index)))
        if line is not None:
            config._rule_lines[rule.name] = line
        for key in ("when", "changed", "payload", "key", "on", "workflow"):
            line = doc.lines.get(("rules", index, key))
            if line is not None:
                config._field_lines[(rule.name, key)] = line
    return config


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


# A configuration is a few hundred values a few levels deep.  PyYAML's composer recurses once per level
# (RecursionError near 1,000) and aliases share nodes, so `*a` used ten times in ten levels is a billion
# values ("billion laughs"): both are refused before anything is built.
MAX_DEPTH = 64
MAX_VALUES = 100_000


def _check_shape(text: str, filename: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, reading events (the parser keeps a stack, no recursion)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(
                    f"the values nest more than {MAX_DEPTH} levels deep",
                    file=filename,
                    line=None if event.start_mark is None else event.start_mark.line + 1,
                    hint="a configuration is a few levels of keys and lists; remove the extra brackets",
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _compose(text: str, filename: str) -> _Document:
    loader: yaml.SafeLoader | None = None
    try:
        _check_shape(text, filename)
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is None or (root.tag == "tag:yaml.org,2002:null" and root.value == ""):
            hint = _example_hint("write the configuration; the smallest useful file is:")
            raise ConfigError("the file is empty (or only comments)", file=filename, hint=hint)
        if not isinstance(root, yaml.MappingNode):
            kind = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
            hint = _example_hint("the file holds keys such as dsn, slot and rules, e.g.:")
            what = f"the top level must be a mapping of keys, not {kind}"
            raise ConfigError(what, file=filename, line=_line(root), hint=hint)
        doc = _Document(lines={(): _line(root)})
        doc.data = _build(root, (), doc, loader, filename, set())
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, filename) from exc
    except yaml.reader.ReaderError as exc:
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise ConfigError(
            f"the control character {char!r} is not allowed in YAML",
            file=filename,
            line=text.count("\n", 0, exc.position) + 1,
            hint='remove it (a double-quoted string may spell it as an escape, e.g. "\\t")',
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=filename, hint="remove control characters") from exc
    finally:
        if loader is not None:
            loader.dispose()
    _check_source(doc, filename)
    return doc


def _build(
    node: yaml.Node, path: YamlPath, doc: _Document, loader: yaml.SafeLoader, filename: str, active: set[int]
) -> Any:
    """Plain Python values for ``node``, recording the line of every key and list item on the way."""
    doc.values += 1
    if doc.values > MAX_VALUES:
        raise ConfigError(
            f"the file expands to more than {MAX_VALUES} values through YAML aliases (*name)",
            file=filename,
            line=_line(node),
            hint="write the values out, or use an alias only for a small repeated part",
        )
    if isinstance(node, yaml.ScalarNode):
        if node.style == '"':
            doc.double_quoted.add(path)
        return loader.construct_object(node, deep=True)
    if id(node) in active:
        hint = "do not use an alias (*name) inside the node its anchor (&name) marks"
        raise ConfigError("a YAML alias refers to itself", file=filename, line=_line(node), hint=hint)
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                doc.lines[(*path, index)] = _line(item)
                items.append(_build(item, (*path, index), doc, loader, filename, active))
            return items
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _key(key_node, filename)
            if key in result:  # PyYAML would silently keep the last value; refuse instead
                doc.duplicates.append(((*path, key), _line(key_node), doc.lines[(*path, key)]))
                continue
            doc.lines[(*path, key)] = _line(key_node)
            result[key] = _build(value_node, (*path, key), doc, loader, filename, active)
        return result
    finally:
        active.discard(id(node))


def _key(node: yaml.Node, filename: str) -> str:
    # The raw text, not the resolved value: YAML 1.1 would read the key `on:` as the boolean True.
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(
            "a key must be a plain name", file=filename, line=_line(node), hint="write `name: value`"
        )
    return str(node.value)


def _check_source(doc: _Document, filename: str) -> None:
    """Mistakes the models cannot see: duplicate keys, and SQL quotes that YAML swallowed."""
    problems = [
        _Problem(
            line,
            _rule_of(doc, path),
            f"{_format_path(path[:-1])}: duplicate key {path[-1]!r} (first at line {first})".lstrip(": "),
            "keep only one of them",
        )
        for path, line, first in doc.duplicates
    ]
    for path in sorted(doc.double_quoted, key=str):
        value = _value_at(doc.data, path)
        if path[-1:] == ("table",) and isinstance(value, str) and value != value.lower() and '"' not in value:
            what = (
                f"{_format_path(path)}: YAML removes the double quotes, so {value!r} means {value.lower()!r}"
            )
            hint = f"""write table: '"{value}"' for the name with capitals, or table: {value.lower()}"""
            problems.append(_Problem(doc.lines.get(path), _rule_of(doc, path), what, hint))
    if problems:
        raise _config_error(problems, filename)


def _yaml_error(exc: yaml.MarkedYAMLError, filename: str) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    what = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
    if exc.context and exc.problem and exc.context_mark is not None:
        what += f" ({exc.context} at line {exc.context_mark.line + 1})"
    if "\\t" in what:
        hint = "indent with spaces: YAML does not allow tabs there"
    else:
        hint = "check indentation and quoting; quote values that contain ': ' or start with a quote or '*'"
    return ConfigError(what, file=filename, line=None if mark is None else mark.line + 1, hint=hint)


def _describe(error: ErrorDetails, doc: _Document) -> _Problem:
    """One pydantic error as a located, human sentence with a fix."""
    kind, loc, value = error["type"], tuple(error["loc"]), error["input"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    hint: str | None = ctx.get("hint")
    where: YamlPath = loc
    if kind == "duplicate_rule_name":
        where = ("rules", ctx["index"], "name")
    if kind == "missing":
        where, what = loc[:-1], f"missing required key {loc[-1]!r}"
        hint = _MISSING_HINTS.get(str(loc[-1]))
    elif kind == "extra_forbidden":
        where, what = loc[:-1], f"unknown key {loc[-1]!r}"
        hint = _suggest_key(str(loc[-1]), loc[:-1])
    elif kind == "literal_error" and len(loc) >= 2 and loc[-2] == "on":
        what = f"unknown operation {_show(value)}"
        hint = f"use any of {', '.join(OPERATIONS)}, e.g. on: [insert, update]"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        what, hint = f"expected a whole number, got {_show(value)}", _field_example(loc)
    elif kind in ("float_type", "float_parsing", "finite_number"):
        what, hint = f"expected a number, got {_show(value)}", _field_example(loc)
    elif kind in ("greater_than", "greater_than_equal"):
        bound = f"more than {_show(ctx['gt'])}" if kind == "greater_than" else f"at least {_show(ctx['ge'])}"
        what, hint = f"must be {bound}, got {_show(value)}", _field_example(loc)
    elif kind in ("less_than", "less_than_equal"):
        bound = f"less than {_show(ctx['lt'])}" if kind == "less_than" else f"at most {_show(ctx['le'])}"
        what, hint = f"must be {bound}, got {_show(value)}", _field_example(loc)
    elif kind == "string_type":
        what = f"expected text, got {_show(value)}"
        hint = "quote the value: YAML reads unquoted numbers, true/false, null and dates as such"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        what = f"expected keys (`name: value` lines), got {_show(value)}"
        if where[:1] == ("rules",):
            hint = "write each rule as a list item: `- name: ...` then `table:`, `on:`, `workflow:` under it"
        elif where[:1] in (("ingest",), ("worker",), ("retain",), ("journal",)):
            hint = f"put its keys on indented lines under '{where[0]}:'"
    elif kind in ("tuple_type", "list_type"):
        what = f"expected a list, got {_show(value)}"
        hint = (
            "write e.g. on: [insert, update]" if loc[-1:] == ("on",) else "write list items as `- ...` lines"
        )
    else:
        what = error["msg"]
    path = _format_path(where if kind in ("missing", "extra_forbidden") else loc)
    line = _line_at(doc, loc if kind == "extra_forbidden" else where)  # an unknown key has its own line
    return _Problem(line, _rule_of(doc, where), f"{path}: {what}" if path else what, hint)


def _config_error(problems: list[_Problem], filename: str) -> ConfigError:
    """One error for all problems, located at the first one (by line)."""
    problems = sorted(problems, key=lambda p: p.line or 0)
    first = problems[0]
    if len(problems) == 1:
        return ConfigError(first.what, file=filename, line=first.line, rule=first.rule, hint=first.hint)
    lines = [f"{len(problems)} problems in the configuration:"]
    for p in problems:
        where = ", ".join([f"{filename}:{p.line}", *([f"rule {p.rule!r}"] if p.rule is not None else [])])
        lines.append(f"  {where}: {p.what}" + (f"; fix: {p.hint}" if p.hint else ""))
    error = ConfigError("\n".join(lines), file=filename)
    error.line, error.rule = first.line, first.rule
    return error


def _model_at(path: YamlPath) -> type[BaseModel] | None:
    if not path:
        return Config
    if len(path) == 1 and path[0] in _SECTIONS:
        return _SECTIONS[str(path[0])]
    if len(path) == 2 and path[0] == "rules" and isinstance(path[1], int):
        return Rule
    return None


def _closest_key(key: str, parent: YamlPath) -> str | None:
    model = _model_at(parent)
    by_lower = {name.lower(): name for name in (model.model_fields if model is not None else ())}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1)
    return by_lower[close[0]] if close else None


def _suggest_key(key: str, parent: YamlPath) -> str | None:
    if key == "<<":
        return "YAML merge keys (<<) are not supported: write the keys out in full"
    for section, section_model in _SECTIONS.items():
        if key in section_model.model_fields and parent != (section,):
            return f"{key!r} belongs under '{section}:'"
    if not parent and key in Rule.model_fields:
        return f"{key!r} belongs inside a rule, under 'rules:'"
    if (close := _closest_key(key, parent)) is not None:
        return f"did you mean {close!r}?"
    model = _model_at(parent)
    return "valid keys here: " + ", ".join(model.model_fields) if model is not None else None


def _field_example(loc: YamlPath) -> str | None:
    model = _model_at(loc[:-1])
    info = model.model_fields.get(str(loc[-1])) if model is not None and loc else None
    if info is None:
        return None
    return f"e.g. {loc[-1]}: {_show(info.default)}"


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def _format_path(path: YamlPath) -> str:
    """("rules", 0, "on", 1) -> "rules[0].on[1]"."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _value_at(data: Any, path: YamlPath) -> Any:
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _line_at(doc: _Document, path: YamlPath) -> int | None:
    # Errors deeper than the YAML (a bare `on: insert` reported as on[0]) take the nearest recorded line.
    for size in range(len(path), -1, -1):
        if path[:size] in doc.lines:
            return doc.lines[path[:size]]
    return None


def _rule_of(doc: _Document, path: YamlPath) -> str | None:
    """The rule a path lies in: its name if it has a textual one, else "rules[i]"."""
    if len(path) < 2 or path[0] != "rules" or not isinstance(path[1], int):
        return None
    name = _value_at(doc.data, (*path[:2], "name"))
    return name if isinstance(name, str) and name else f"rules[{path[1]}]"
