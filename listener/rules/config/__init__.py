"""The configuration file (``listener.yaml``): pydantic models and a loader with precise errors.

The loader composes the YAML node tree itself (``SafeLoader``) instead of calling ``yaml.safe_load`` so that
every value keeps its line number and duplicate keys (which PyYAML silently collapses) are refused.  Each
pydantic error is then reported as ``file:line, rule 'name': field.path: what is wrong`` with a fix.

Modules, each importing only those before it: :mod:`.names` (table names, key templates), :mod:`.units`
(durations, sizes, rates), :mod:`.validators` (the models' field checks), :mod:`.models` (the pydantic
models; their defaults are in :mod:`listener.defaults`), :mod:`.loader` (YAML with line numbers -> models
-> errors that point at lines).
"""

from listener.rules.config.loader import YamlPath, load_config, parse_config
from listener.rules.config.models import (
    EXAMPLE_CONFIG,
    Config,
    HttpSettings,
    IngestSettings,
    JournalSettings,
    RetainSettings,
    Rule,
    RunsSettings,
    ScheduleSettings,
    WebhookSettings,
    WorkerSettings,
    WorkflowLimit,
)
from listener.rules.config.names import SQL_KEYWORDS, key_fields, qualified_name, quote_ident, split_table
from listener.rules.config.units import parse_duration, parse_rate, parse_size
from listener.rules.config.validators import OPERATIONS, Operation, TableName

__all__ = [
    "EXAMPLE_CONFIG",
    "OPERATIONS",
    "SQL_KEYWORDS",
    "Config",
    "HttpSettings",
    "IngestSettings",
    "JournalSettings",
    "Operation",
    "RetainSettings",
    "Rule",
    "RunsSettings",
    "ScheduleSettings",
    "TableName",
    "WebhookSettings",
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
