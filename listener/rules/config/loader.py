"""Loading ``listener.yaml``: the YAML node tree (composed with ``SafeLoader`` instead of
``yaml.safe_load``, so that every value keeps its line number and duplicate keys, which PyYAML silently
collapses, are refused), the models, and each pydantic error reported as
``file:line, rule 'name': field.path: what is wrong`` with a fix.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic_core import ErrorDetails

from listener.defaults import CONFIG_MAX_DEPTH, CONFIG_MAX_VALUES
from listener.errors import ConfigError
from listener.rules.config.models import (
    EXAMPLE_CONFIG,
    Config,
    IngestSettings,
    JournalSettings,
    RetainSettings,
    Rule,
    RunsSettings,
    WorkerSettings,
)
from listener.rules.config.validators import OPERATIONS, show

# ---------------------------------------------------------------------------------------------------------
# Loading: YAML node tree -> plain values + line numbers -> models -> errors that point at lines.

YamlPath = tuple[str | int, ...]
_SECTIONS: dict[str, type[BaseModel]] = {
    "ingest": IngestSettings,
    "worker": WorkerSettings,
    "retain": RetainSettings,
    "journal": JournalSettings,
    "runs": RunsSettings,
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
    # settings whose value only fails once the service runs: `http: listen:`, `slot_failover:` (top
    # level: section ""), each `webhooks:` and `schedules:` entry
    places: list[tuple[tuple[str | int, ...], tuple[str, str]]] = [
        (("http", "listen"), ("http", "listen")),
        (("slot_failover",), ("", "slot_failover")),
    ]
    places += [(("webhooks", index), ("webhooks", str(index))) for index in range(len(config.webhooks))]
    places += [(("schedules", index), ("schedules", str(index))) for index in range(len(config.schedules))]
    places += [(("queues", index), ("queues", str(index))) for index in range(len(config.queues))]
    for path, name in places:
        line = doc.lines.get(path)
        if line is not None:
            config._setting_lines[name] = line
    return config


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _check_shape(text: str, filename: str) -> None:
    """Refuse nesting deeper than CONFIG_MAX_DEPTH, reading events (the parser keeps a stack, no
    recursion)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > CONFIG_MAX_DEPTH:
                raise ConfigError(
                    f"the values nest more than {CONFIG_MAX_DEPTH} levels deep",
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
    if doc.values > CONFIG_MAX_VALUES:
        raise ConfigError(
            f"the file expands to more than {CONFIG_MAX_VALUES} values through YAML aliases (*name)",
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
    elif kind == "unknown_webhook":
        where = ("rules", ctx["index"], "webhook")
    elif kind == "duplicate_webhook":
        where = ("webhooks", ctx["index"])
    elif kind == "unknown_queue":
        where = ("rules", ctx["index"], "queue")
    elif kind == "duplicate_queue":
        where = ("queues", ctx["index"], "name")
    elif kind == "duplicate_schedule":
        where = ("schedules", ctx["index"], "name")
    elif kind == "runs_keep_short":
        where = tuple(ctx["path"])
    if kind == "missing":
        where, what = loc[:-1], f"missing required key {loc[-1]!r}"
        hint = _MISSING_HINTS.get(str(loc[-1]))
    elif kind == "extra_forbidden":
        where, what = loc[:-1], f"unknown key {loc[-1]!r}"
        hint = _suggest_key(str(loc[-1]), loc[:-1])
    elif kind == "literal_error" and len(loc) >= 2 and loc[-2] == "on":
        what = f"unknown operation {show(value)}"
        hint = f"use any of {', '.join(OPERATIONS)}, e.g. on: [insert, update]"
    elif kind == "literal_error" and loc[-1] == "overlap":
        what = f"unknown overlap {show(value)}"
        hint = "use skip (no run while the last tick's is unfinished), buffer_one (one may wait) or allow"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        what, hint = f"expected a whole number, got {show(value)}", _field_example(loc)
    elif kind in ("float_type", "float_parsing", "finite_number"):
        what, hint = f"expected a number, got {show(value)}", _field_example(loc)
    elif kind in ("greater_than", "greater_than_equal"):
        bound = f"more than {show(ctx['gt'])}" if kind == "greater_than" else f"at least {show(ctx['ge'])}"
        what, hint = f"must be {bound}, got {show(value)}", _field_example(loc)
    elif kind in ("less_than", "less_than_equal"):
        bound = f"less than {show(ctx['lt'])}" if kind == "less_than" else f"at most {show(ctx['le'])}"
        what, hint = f"must be {bound}, got {show(value)}", _field_example(loc)
    elif kind == "string_type":
        what = f"expected text, got {show(value)}"
        hint = "quote the value: YAML reads unquoted numbers, true/false, null and dates as such"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        what = f"expected keys (`name: value` lines), got {show(value)}"
        if where[:1] == ("rules",):
            hint = "write each rule as a list item: `- name: ...` then `table:`, `on:`, `workflow:` under it"
        elif where[:1] in (("ingest",), ("worker",), ("retain",), ("journal",), ("runs",)):
            hint = f"put its keys on indented lines under '{where[0]}:'"
    elif kind in ("tuple_type", "list_type"):
        what = f"expected a list, got {show(value)}"
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
    return f"e.g. {loc[-1]}: {show(info.default)}"


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
