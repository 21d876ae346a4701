"""listener.rules.config: the models, table-name parsing, and errors that name file, line, rule and fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pydantic
import pytest

from listener.defaults import DEFAULT_CONFIG_FILE, RETAIN_WARN_BYTES
from listener.errors import ConfigError
from listener.rules.config import (
    EXAMPLE_CONFIG,
    Config,
    IngestSettings,
    RetainSettings,
    Rule,
    WorkerSettings,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
    qualified_name,
    quote_ident,
    split_table,
)

FULL = """\
# connection of the database to watch
dsn: postgresql://app@db.example.com/app
state_dsn: null
slot: listener_1
publication: pub
state_schema: listener_state
ingest:
  batch_events: 100
  batch_delay_ms: 2.5
  status_interval_s: 1
worker:
  concurrency: 4
  poll_interval_s: 0.5
rules:
  - name: onboard_user
    table: public.users
    on: [insert]
    workflow: listener_examples.onboarding:welcome
  - name: audit_orders
    table: orders
    on: [insert, update, delete]
    workflow: workflows.audit:record
"""

RULE = """\
  - name: {name}
    table: {table}
    on: {on}
    workflow: {workflow}
"""


def rule(name: str = "r", table: str = "t", on: str = "[insert]", workflow: str = "m:f") -> str:
    return RULE.format(name=name, table=table, on=on, workflow=workflow)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / DEFAULT_CONFIG_FILE
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """The 1-based line of the n-th line containing ``needle``."""
    hits = [n for n, line in enumerate(textwrap.dedent(text).splitlines(), 1) if needle in line]
    return hits[occurrence - 1]


# --- valid files --------------------------------------------------------------------------------------------


def test_full_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path)
    assert config.dsn == "postgresql://app@db.example.com/app"
    assert config.state_dsn is None
    assert (config.slot, config.publication, config.state_schema) == ("listener_1", "pub", "listener_state")
    assert config.ingest == IngestSettings(batch_events=100, batch_delay_ms=2.5, status_interval_s=1)
    assert config.worker == WorkerSettings(concurrency=4, poll_interval_s=0.5)
    onboard, audit = config.rules
    assert onboard == Rule(
        name="onboard_user",
        table="public.users",
        on=("insert",),
        workflow="listener_examples.onboarding:welcome",
    )
    assert audit.table == "public.orders"
    assert (audit.schema_name, audit.table_name) == ("public", "orders")
    assert audit.on == ("insert", "update", "delete")
    assert config.source_path == str(path)


def test_defaults() -> None:
    config = parse_config("dsn: postgresql:///app\n")
    assert config.dsn == "postgresql:///app"
    assert config.state_dsn is None
    assert (config.slot, config.publication, config.state_schema) == ("listener", "listener", "listener")
    assert config.ingest == IngestSettings()
    assert (config.ingest.batch_events, config.ingest.batch_delay_ms) == (5000, 5)
    assert config.ingest.status_interval_s == 10
    assert (config.worker.concurrency, config.worker.poll_interval_s) == (64, 5)
    assert config.rules == ()
    assert config.source_path is None


def test_empty_sections_mean_defaults() -> None:
    config = parse_config("ingest:\nworker:\nrules:\n")
    assert config == Config()


def test_example_config_is_valid() -> None:
    (only,) = parse_config(EXAMPLE_CONFIG).rules
    assert (only.name, only.table, only.workflow) == (
        "onboard_user",
        "public.users",
        "listener_examples.onboarding:welcome",
    )


def test_models_are_frozen() -> None:
    config = parse_config(EXAMPLE_CONFIG)
    with pytest.raises(pydantic.ValidationError):
        config.slot = "other"
    assert config.with_source_path("x.yaml").source_path == "x.yaml"
    assert config.source_path is None


@pytest.mark.parametrize(
    ("on", "expected"),
    [
        ("insert", ("insert",)),
        ("TRUNCATE", ("truncate",)),
        ("[update, insert, update]", ("update", "insert")),
        ("[delete, truncate]", ("delete", "truncate")),
    ],
)
def test_on_accepts_a_string_and_dedupes_in_order(on: str, expected: tuple[str, ...]) -> None:
    (parsed,) = parse_config("rules:\n" + rule(on=on)).rules
    assert parsed.on == expected


@pytest.mark.parametrize(
    ("written", "display", "schema", "name"),
    [
        ("users", "public.users", "public", "users"),
        ("Users", "public.users", "public", "users"),
        ("Sales.Orders", "sales.orders", "sales", "orders"),
        ("sales . orders", "sales.orders", "sales", "orders"),
        ('\'"Sales"."Order Items"\'', '"Sales"."Order Items"', "Sales", "Order Items"),
        ("'\"My Table\"'", 'public."My Table"', "public", "My Table"),
        ('\'"a""b"\'', 'public."a""b"', "public", 'a"b'),
        ("'\"lower\"'", "public.lower", "public", "lower"),
        ("public.select", 'public."select"', "public", "select"),
        ("app.t$1", "app.t$1", "app", "t$1"),
    ],
)
def test_table_names(written: str, display: str, schema: str, name: str) -> None:
    (parsed,) = parse_config("rules:\n" + rule(table=written)).rules
    assert parsed.table == display
    assert (parsed.schema_name, parsed.table_name) == (schema, name)


def test_split_table_and_qualified_name() -> None:
    assert split_table('"Sales"."Order Items"') == ("Sales", "Order Items")
    assert split_table("users") == ("public", "users")
    assert qualified_name("Sales", "Order Items") == '"Sales"."Order Items"'
    assert qualified_name("public", "users") == "public.users"
    assert quote_ident("user") == '"user"'
    assert quote_ident('x"y') == '"x""y"'
    assert quote_ident("_ok$1") == "_ok$1"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected a name"),
        ("a.", "expected a name"),
        ('"open', "not closed"),
        ('""', "empty name"),
        ("a.b.c", "3 parts"),
        ("a b", "unexpected 'b'"),
        ("1abc", "expected a name"),
        ("x" * 64, "63-byte"),
    ],
)
def test_split_table_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        split_table(text)


# --- errors with file, line, rule and fix ------------------------------------------------------------------


def test_unknown_rule_key_suggests_the_closest(tmp_path: Path) -> None:
    text = (
        "rules:\n"
        + rule(name="a")
        + "  - name: welcome\n    tabel: users\n    on: insert\n    workflow: m:f\n"
    )
    error = load_error(tmp_path, text)
    assert (error.line, error.rule) == (line_of(text, "tabel"), "welcome")
    message = str(error)
    assert f"{DEFAULT_CONFIG_FILE}:7, rule 'welcome'" in message
    assert "unknown key 'tabel'" in message
    assert "did you mean 'table'?" in message
    assert "missing" not in message  # the typo explains why `table` is missing


def test_unknown_top_level_key(tmp_path: Path) -> None:
    error = load_error(tmp_path, "slot: s\nrule:\n" + rule())
    assert error.line == 2 and error.rule is None
    assert "unknown key 'rule'" in str(error)
    assert error.hint == "did you mean 'rules'?"


def test_misplaced_and_unrecognizable_keys(tmp_path: Path) -> None:
    assert load_error(tmp_path, "batch_events: 10\n").hint == "'batch_events' belongs under 'ingest:'"
    assert load_error(tmp_path, "table: users\n").hint == "'table' belongs inside a rule, under 'rules:'"
    error = load_error(tmp_path, "worker:\n  zzz: 1\n")
    assert error.line == 2
    assert (
        error.hint
        == "valid keys here: concurrency, processes, poll_interval_s, lease_s, grace_s, run_timeout_s"
    )


def test_bad_operation_lists_the_allowed_ones(tmp_path: Path) -> None:
    text = "rules:\n" + rule(name="audit", on="[insert, upsert]")
    error = load_error(tmp_path, text)
    assert (error.line, error.rule) == (line_of(text, "upsert"), "audit")
    assert "rules[0].on[1]: unknown operation 'upsert'" in str(error)
    assert error.hint is not None and "insert, update, delete, truncate" in error.hint


def test_empty_operation_list(tmp_path: Path) -> None:
    error = load_error(tmp_path, "rules:\n" + rule(name="a", on="[]"))
    assert error.line == 4 and "rules[0].on: lists no operation" in str(error)


def test_bad_workflow_shows_the_form(tmp_path: Path) -> None:
    text = "rules:\n" + rule(name="w", workflow="workflows/audit.py")
    error = load_error(tmp_path, text)
    assert (error.line, error.rule) == (5, "w")
    assert "'workflows/audit.py' is not a workflow reference" in str(error)
    assert error.hint is not None and "module.path:function" in error.hint


@pytest.mark.parametrize("workflow", ["m", "'m:'", "':f'", "a..b:f", "m:f.g", "import:f", "m:1f"])
def test_workflow_references_refused(workflow: str) -> None:
    with pytest.raises(ConfigError, match="not a workflow reference"):
        parse_config("rules:\n" + rule(workflow=workflow))


def test_missing_field_points_at_the_rule(tmp_path: Path) -> None:
    text = "rules:\n" + rule(name="a") + "  - name: second\n    on: insert\n    workflow: m:f\n"
    error = load_error(tmp_path, text)
    assert (error.line, error.rule) == (line_of(text, "second"), "second")
    assert "rules[1]: rule names no source" in str(error)
    assert error.hint is not None and "`table: public.users`" in error.hint
    assert error.hint is not None and "table: public.users" in error.hint


def test_rule_without_a_name_is_called_by_its_index(tmp_path: Path) -> None:
    text = "rules:\n" + rule(name="a") + "  - table: t\n    on: insert\n    workflow: m:f\n"
    error = load_error(tmp_path, text)
    assert (error.line, error.rule) == (6, "rules[1]")
    assert "missing required key 'name'" in str(error)


def test_error_in_the_second_of_three_rules(tmp_path: Path) -> None:
    text = "rules:\n" + rule(name="one") + rule(name="two", table="a.b.c") + rule(name="three")
    error = load_error(tmp_path, text)
    assert (error.line, error.rule) == (line_of(text, "a.b.c"), "two")
    assert str(error).startswith(
        f"{error.file}:{error.line}, rule 'two': rules[1].table: 'a.b.c' has 3 parts"
    )
    assert error.hint is not None and "schema.table" in error.hint


def test_wrong_types(tmp_path: Path) -> None:
    text = "ingest:\n  batch_events: lots\n"
    error = load_error(tmp_path, text)
    assert error.line == 2
    assert "ingest.batch_events: expected a whole number, got 'lots'" in str(error)
    assert error.hint == "e.g. batch_events: 5000"
    assert "expected a whole number, got true" in str(load_error(tmp_path, "worker:\n  concurrency: yes\n"))
    assert "expected a number" in str(load_error(tmp_path, "worker:\n  poll_interval_s: .inf\n"))
    assert "expected text, got 5" in str(load_error(tmp_path, "slot: listener\npublication: 5\n"))
    error = load_error(tmp_path, "ingest: 5\n")
    assert "ingest: expected keys" in str(error) and error.hint is not None and "ingest:" in error.hint
    error = load_error(tmp_path, "rules:\n  - onboard_user\n")
    assert (error.line, error.rule) == (2, "rules[0]")


def test_bounds(tmp_path: Path) -> None:
    error = load_error(tmp_path, "worker:\n  concurrency: 0\n")
    assert "worker.concurrency: must be at least 1, got 0" in str(error)
    error = load_error(tmp_path, "ingest:\n  status_interval_s: 0\n")
    assert "must be more than 0, got 0" in str(error) and error.hint == "e.g. status_interval_s: 10"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("slot: My-Slot", "not a valid replication slot name"),
        ("publication: select", "not a plain lower-case identifier"),
        ("state_schema: Listener", "not a plain lower-case identifier"),
    ],
)
def test_names_for_server_objects(tmp_path: Path, line: str, message: str) -> None:
    error = load_error(tmp_path, "dsn: postgresql:///app\n" + line + "\n")
    assert error.line == 2 and message in str(error) and error.hint


def test_several_errors_are_listed_one_per_line(tmp_path: Path) -> None:
    text = "slot: BAD\nrules:\n" + rule(name="a", on="upsert") + rule(name="b", workflow="nope")
    error = load_error(tmp_path, text)
    assert (error.line, error.rule) == (1, None)  # the first problem's place
    lines = str(error).splitlines()
    assert lines[0] == f"{error.file}: 3 problems in the configuration:"
    assert lines[1].startswith(f"  {error.file}:1: slot: 'BAD'")
    assert lines[2].startswith(f"  {error.file}:5, rule 'a': rules[0].on[0]: unknown operation 'upsert'")
    assert lines[3].startswith(f"  {error.file}:10, rule 'b': rules[1].workflow")
    assert all("; fix: " in line for line in lines[1:])


def test_duplicate_rule_names(tmp_path: Path) -> None:
    text = "rules:\n" + rule(name="same") + rule(name="other") + rule(name="same")
    error = load_error(tmp_path, text)
    assert (error.line, error.rule) == (line_of(text, "name: same", 2), "same")
    assert "rule name 'same' is already used by rules[0]" in str(error)
    assert error.hint is not None and "idempotency key" in error.hint


def test_duplicate_yaml_keys(tmp_path: Path) -> None:
    error = load_error(tmp_path, "slot: a\npublication: p\nslot: b\n")
    assert error.line == 3 and "duplicate key 'slot' (first at line 1)" in str(error)
    text = "rules:\n" + rule(name="d") + "    table: again\n"
    error = load_error(tmp_path, text)
    assert (error.line, error.rule) == (6, "d")
    assert "rules[0]: duplicate key 'table' (first at line 3)" in str(error)


def test_yaml_swallowing_sql_quotes_is_refused(tmp_path: Path) -> None:
    text = "rules:\n" + rule(name="q", table='"Users"')
    error = load_error(tmp_path, text)
    assert (error.line, error.rule) == (3, "q")
    assert "YAML removes the double quotes" in str(error)
    assert error.hint is not None and "'\"Users\"'" in error.hint


def test_yaml_syntax_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, "slot: listener\nrules: [\n  - name: a\n")
    assert error.file is not None and error.file.endswith(DEFAULT_CONFIG_FILE)
    assert error.line is not None and error.line >= 2
    assert "invalid YAML" in str(error)
    error = load_error(tmp_path, "slot: listener\nworker:\n\tconcurrency: 2\n")
    assert error.line == 3 and error.hint is not None and "tabs" in error.hint


def test_recursive_alias(tmp_path: Path) -> None:
    error = load_error(tmp_path, "rules: &a\n  - *a\n")
    assert error.line == 1 and "alias refers to itself" in str(error)


@pytest.mark.parametrize("text", ["", "# just a comment\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    error = load_error(tmp_path, text)
    assert "the file is empty" in str(error)
    assert error.hint is not None and "workflow: listener_examples.onboarding:welcome" in error.hint


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("just text\n", "a single value")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    error = load_error(tmp_path, text)
    assert error.line == 1 and f"the top level must be a mapping of keys, not {kind}" in str(error)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.file == str(tmp_path / "nope.yaml")
    assert "not found" in str(info.value)
    assert info.value.hint is not None and "README 'Configuration'" in info.value.hint


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path)


def test_parse_config_names_the_string() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("slot: 'no way'\n")
    assert info.value.file == "<string>" and str(info.value).startswith("<string>:1: slot:")


# --- the retention window -----------------------------------------------------------------------------------


def test_retain_is_off_by_default_and_parses_durations_and_sizes() -> None:
    off = parse_config("rules: []\n").retain
    assert not off.enabled and off.duration_s is None and off.size_bytes is None
    assert off.warn_bytes == RETAIN_WARN_BYTES
    assert parse_config("retain:\n").retain == RetainSettings()
    retain = parse_config("retain:\n  duration: 1h30m\n  size: 1.5GB\n").retain
    assert retain.enabled and retain.duration_s == 5400 and retain.size_bytes == 3 * 1024**3 // 2
    assert retain.warn_bytes == 3 * 1024**3  # twice the size unless given
    only_warn = parse_config("retain:\n  warn_size: 512MB\n").retain
    assert not only_warn.enabled and only_warn.warn_bytes == 512 * 1024**2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("15min", 900), ("24h", 86400), ("7d", 604800), ("1w", 604800),
     ("1h30m", 5400), ("1.5h", 5400), (" 2H ", 7200)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("100B", 100), ("1kB", 1024), ("64KB", 65536), ("10MB", 10 * 1024**2), ("2 GB", 2 * 1024**3),
     ("1TB", 1024**4)],
)  # fmt: skip
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        (
            "retain:\n  duration: 24 hours\n",
            "retain.duration: '24 hours' is not a duration",
            "e.g. 90s, 15m, 24h",
        ),
        ("retain:\n  duration: 3600\n", "retain.duration: 3600 has no unit", "e.g. 90s, 15m, 24h"),
        ("retain:\n  duration: 0h\n", "retain.duration: duration '0h' is not more than 0", "24h"),
        ("retain:\n  size: lots\n", "retain.size: 'lots' is not a size", "e.g. 512MB, 10GB"),
        ("retain:\n  warn_size: 10\n", "retain.warn_size: 10 has no unit", "1kB = 1024 bytes"),
        ("retain:\n  sise: 1GB\n", "retain: unknown key 'sise'", "did you mean 'size'?"),
        ("size: 1GB\n", "unknown key 'size'", "'size' belongs under 'retain:'"),
        ("retain: 24h\n", "retain: expected keys", "put its keys on indented lines under 'retain:'"),
    ],
)
def test_retain_errors_name_the_line_and_the_fix(tmp_path: Path, text: str, message: str, hint: str) -> None:
    error = load_error(tmp_path, "slot: s\n" + text)
    assert error.line == 2 + ("\n  " in text)
    assert message in str(error)
    assert error.hint is not None and hint in error.hint


# --- the change journal -------------------------------------------------------------------------------------


def test_journal_is_off_by_default_and_keeps_a_duration() -> None:
    off = parse_config("rules: []\n").journal
    assert not off.enabled and off.keep_s is None
    assert not parse_config("journal:\n").journal.enabled
    journal = parse_config("journal:\n  keep: 7d\n").journal
    assert journal.enabled and journal.keep_s == 7 * 86400


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ("journal:\n  keep: a week\n", "journal.keep: 'a week' is not a duration", "e.g. 90s, 15m, 24h"),
        ("journal:\n  keep: 7\n", "journal.keep: 7 has no unit", "e.g. 90s, 15m, 24h"),
        ("journal:\n  keep: 0d\n", "journal.keep: duration '0d' is not more than 0", "7d"),
        ("journal:\n  kepe: 7d\n", "journal: unknown key 'kepe'", "did you mean 'keep'?"),
        ("keep: 7d\n", "unknown key 'keep'", "'keep' belongs under 'journal:'"),
        ("journal: 7d\n", "journal: expected keys", "put its keys on indented lines under 'journal:'"),
    ],
)
def test_journal_errors_name_the_line_and_the_fix(tmp_path: Path, text: str, message: str, hint: str) -> None:
    error = load_error(tmp_path, "slot: s\n" + text)
    assert error.line == 2 + ("\n  " in text)
    assert message in str(error)
    assert error.hint is not None and hint in error.hint


# --- the retention of finished runs ---------------------------------------------------------------------


def test_finished_runs_are_kept_for_ever_by_default_and_per_workflow() -> None:
    off = parse_config("rules: []\n").runs
    assert not off.enabled and off.keep_of("m:f") is None
    assert not parse_config("runs:\n").runs.enabled
    runs = parse_config("runs:\n  keep: 30d\n  workflows:\n    m.a:f: 7d\n    m.b:g: forever\n").runs
    assert runs.enabled and runs.keep_s == 30 * 86400
    assert (runs.keep_of("m.a:f"), runs.keep_of("m.b:g"), runs.keep_of("x:y")) == (
        7 * 86400,
        None,
        30 * 86400,
    )
    only = parse_config("runs:\n  workflows:\n    m.a:f: 1h\n").runs
    assert only.enabled and only.keep_of("m.a:f") == 3600 and only.keep_of("x:y") is None
    assert not parse_config("runs:\n  keep: forever\n").runs.enabled


@pytest.mark.parametrize(
    ("text", "line", "message", "hint"),
    [
        ("runs:\n  keep: a month\n", 3, "runs.keep: 'a month' is not a duration", "; or forever"),
        ("runs:\n  keep: 30\n", 3, "runs.keep: 30 has no unit", "e.g. 90s, 15m, 24h"),
        ("runs:\n  keep: 0d\n", 3, "runs.keep: duration '0d' is not more than 0", "7d"),
        ("runs:\n  kep: 30d\n", 3, "runs: unknown key 'kep'", "did you mean 'keep'?"),
        ("runs: 30d\n", 2, "runs: expected keys", "put its keys on indented lines under 'runs:'"),
        (
            "runs:\n  workflows:\n    orders: 7d\n",
            4,
            "'orders' is not a workflow reference",
            "module.path:function",
        ),
        (
            "runs:\n  keep: 1d\njournal:\n  keep: 7d\n",
            3,
            "runs.keep: 1d is shorter than journal.keep (7d): `listener replay` could deliver again",
            "keep finished runs at least as long (runs.keep: 7d), or shorten journal.keep",
        ),
        (
            "runs:\n  keep: 30d\n  workflows:\n    m:f: 1h\nretain:\n  duration: 24h\n",
            5,
            "runs.workflows.m:f: 1h is shorter than retain.duration (24h): `listener rewind`",
            "(runs.workflows.m:f: 24h), or shorten retain.duration",
        ),
    ],
)
def test_runs_errors_name_the_line_and_the_fix(
    tmp_path: Path, text: str, line: int, message: str, hint: str
) -> None:
    error = load_error(tmp_path, "slot: s\n" + text)
    assert error.line == line
    assert message in str(error)
    assert error.hint is not None and hint in error.hint


@pytest.mark.parametrize(
    ("body", "bad_line", "says", "fix"),
    [
        (
            "    table: t\n    message: orders\n    on: [insert]\n",
            "name: r",
            "rule has table and message: pick one",
            "exactly one of `table: public.users`, `message: <prefix>`, `channel: <name>`, `webhook:",
        ),
        ("    table: t\n", "name: r", "a table rule needs `on:`", "on: [insert, update]"),
        (
            "    message: orders\n    when: new.x > 1\n",
            "name: r",
            "when only apply to table rules, not to a message rule",
            "remove when",
        ),
        (
            "    channel: hooks\n    payload: [id]\n",
            "name: r",
            "payload only apply to table rules, not to a channel rule",
            "remove payload",
        ),
        (
            "    table: t\n    on: [insert]\n    changed: [status]\n",
            "name: r",
            "`changed:` applies to updates, but `on:` has no update",
            "add update to `on:`",
        ),
        (
            "    table: t\n    on: [insert]\n    payload: {was: older.status}\n",
            "payload:",
            "'older.status' is not new.<column> or old.<column>",
            "payload: {ticket: new.id",
        ),
        (
            "    table: t\n    on: [insert]\n    payload: []\n",
            "payload:",
            "lists no column",
            "payload: [id, status]",
        ),
        (
            "    table: t\n    on: [update]\n    changed: []\n",
            "changed:",
            "lists no column",
            "changed: [status",
        ),
        (
            "    table: t\n    on: [insert]\n    priority: 5000\n",
            "priority:",
            "must be at most 1000, got 5000",
            "priority: 0",
        ),
        ("    channel: ''\n", "channel:", "is not a valid channel name", "channel: orders"),
    ],
)
def test_rule_language_mistakes_point_at_the_line_and_say_the_fix(
    tmp_path: Path, body: str, bad_line: str, says: str, fix: str
) -> None:
    text = "rules:\n  - name: r\n    workflow: m:f\n" + body
    error = load_error(tmp_path, text)
    assert error.rule == "r"
    assert error.line == line_of(text, bad_line)
    assert says in str(error)
    assert error.hint is not None and fix in error.hint


def test_the_readme_configuration_block_is_valid() -> None:
    """README's "Configuration" block, every section of it, is a valid config."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("### Configuration") :].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(block)
    assert [w.name for w in config.webhooks] == ["stripe"] and config.http is not None
    assert {r.source for r in config.rules} == {"table", "webhook"}


def test_slot_failover_is_true_false_or_absent_and_its_line_is_kept(tmp_path: Path) -> None:
    assert parse_config("slot: s\n").slot_failover is None
    path = tmp_path / "listener.yaml"
    path.write_text("slot: s\nslot_failover: true\n")
    config = load_config(path)
    assert config.slot_failover is True
    assert config.setting_place("", "slot_failover") == (str(path), 2)  # for the PostgreSQL < 17 error
    error = load_error(tmp_path, "slot: s\nslot_failover: sometimes\n")
    assert error.line == 2 and "slot_failover" in str(error)
