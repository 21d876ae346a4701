"""The configuration file (``listener.yaml``): pydantic models and a loader with precise errors.

The loader composes the YAML node tree itself (``SafeLoader``) instead of calling ``yaml.safe_load`` so that
every value keeps its line number and duplicate keys (which PyYAML silently collapses) are refused.  Each
pydantic error is then reported as ``file:line, rule 'name': field.path: what is wrong`` with a fix.

Modules, each importing only those before it: :mod:`.names` (table names, key templates), :mod:`.units`
(durations, sizes, rates), :mod:`.validators` (the models' field checks), :mod:`.models` (the pydantic
models and defaults), :mod:`.loader` (YAML with line numbers -> models -> errors that point at lines).
"""

from listener.rules.config.loader import MAX_DEPTH, MAX_VALUES, YamlPath, load_config, parse_config
from listener.rules.config.models import (
    BACKFILL_CHUNK_ROWS,
    BATCH_DELAY_MS,
    BATCH_EVENTS,
    COMPACT_AFTER,
    COMPACT_CHUNK_CHANGES,
    DEFAULT_CONFIG_FILE,
    DEFAULT_PUBLICATION,
    DEFAULT_SLOT,
    DEFAULT_STATE_SCHEMA,
    EXAMPLE_CONFIG,
    EXPAND_AHEAD,
    GRACE_S,
    LEASE_S,
    POLL_INTERVAL_S,
    RETAIN_WARN_BYTES,
    RUN_TIMEOUT_S,
    STATUS_INTERVAL_S,
    WORKER_CONCURRENCY,
    Config,
    IngestSettings,
    JournalSettings,
    RetainSettings,
    Rule,
    WorkerSettings,
    WorkflowLimit,
)
from listener.rules.config.names import SQL_KEYWORDS, key_fields, qualified_name, quote_ident, split_table
from listener.rules.config.units import parse_duration, parse_rate, parse_size
from listener.rules.config.validators import OPERATIONS, Operation, TableName

__all__ = [
    "BACKFILL_CHUNK_ROWS",
    "BATCH_DELAY_MS",
    "BATCH_EVENTS",
    "COMPACT_AFTER",
    "COMPACT_CHUNK_CHANGES",
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_PUBLICATION",
    "DEFAULT_SLOT",
    "DEFAULT_STATE_SCHEMA",
    "EXAMPLE_CONFIG",
    "EXPAND_AHEAD",
    "GRACE_S",
    "LEASE_S",
    "MAX_DEPTH",
    "MAX_VALUES",
    "OPERATIONS",
    "POLL_INTERVAL_S",
    "RETAIN_WARN_BYTES",
    "RUN_TIMEOUT_S",
    "SQL_KEYWORDS",
    "STATUS_INTERVAL_S",
    "WORKER_CONCURRENCY",
    "Config",
    "IngestSettings",
    "JournalSettings",
    "Operation",
    "RetainSettings",
    "Rule",
    "TableName",
    "WorkerSettings",
    "WorkflowLimit",
    "YamlPath",
    "key_fields",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_rate",
    "parse_size",
    "qualified_name",
    "quote_ident",
    "split_table",
]
