"""The field validators of the configuration's models: each normalises a value or raises a pydantic
error carrying the message and the fix that the loader shows.
"""

from __future__ import annotations

import keyword
import re
import zoneinfo
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import cronsim
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from listener.pg.publications import MAX_IDENTIFIER_BYTES
from listener.rules.config.names import (
    KEY_FIELD,
    QUEUE_ROOTS,
    WEBHOOK_ROOTS,
    qualified_name,
    quote_ident,
    request_key_fields,
    request_ref,
    split_table,
)
from listener.rules.config.units import DURATION_HINT, SIZE_HINT, parse_duration, parse_rate, parse_size

Operation = Literal["insert", "update", "delete", "truncate"]
OPERATIONS: tuple[Operation, ...] = ("insert", "update", "delete", "truncate")
_TABLE_HINT = (
    'write schema.table, e.g. public.users; quote names with capitals or spaces: \'"Sales"."Items"\''
)


def custom_error(kind: str, message: str, hint: str, **context: Any) -> PydanticCustomError:
    # Pre-formatted message (pydantic templates know no !r); loader._describe() shows the hint as the fix.
    return PydanticCustomError(kind, "{message}", {"message": message, "hint": hint, **context})


def _normalize_table(value: str) -> str:
    try:
        return qualified_name(*split_table(value))
    except ValueError as exc:
        raise custom_error("table_name", str(exc), _TABLE_HINT) from None


def check_rule_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", value):
        hint = "start with a letter or '_', then letters, digits, '_', '.' or '-', e.g. onboard_user"
        raise custom_error("rule_name", f"{value!r} is not a valid rule name", hint)
    return value


def check_workflow(value: str) -> str:
    module, sep, function = value.partition(":")
    names = [*module.split("."), function]
    if not sep or not all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        hint = "write module.path:function, e.g. listener_examples.onboarding:welcome"
        raise custom_error("workflow_ref", f"{value!r} is not a workflow reference", hint)
    return value


def check_rate(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_rate(value)
        except ValueError:
            raise custom_error(
                "rate",
                f"rate {value!r} is not N/period",
                "write e.g. '60/minute' (second, minute, hour, day)",
            ) from None
    return value


def unit_required(kind: str, hint: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise custom_error(kind, f"{show(value)} has no unit", hint)
        return value

    return BeforeValidator(check)


def check_duration(value: str | None) -> str | None:
    if value is not None:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise custom_error("duration", f"{value!r} is not a duration", DURATION_HINT) from None
        if seconds <= 0:
            raise custom_error("duration", f"duration {value!r} is not more than 0", DURATION_HINT)
    return value


def check_size(value: str | None) -> str | None:
    if value is not None:
        try:
            size = parse_size(value)
        except ValueError:
            raise custom_error("size", f"{value!r} is not a size", SIZE_HINT) from None
        if size <= 0:
            raise custom_error("size", f"size {value!r} is not more than 0", SIZE_HINT)
    return value


_REQUEST_HINT = (
    "name parts of the request: body.<path> (e.g. body.data.object.customer; a number picks an array "
    "element), headers.<name>, query.<name>, method or path"
)
_MESSAGE_HINT = (
    "name parts of the message: body.<path> (e.g. body.order.customer; a number picks an array element), "
    "headers.<name>, key (the message key) or topic"
)


def _parts_of(info: ValidationInfo) -> tuple[tuple[str, ...], str, str] | None:
    """(roots, what, hint) when the rule being read is a webhook or queue rule, whose ``key:`` and
    ``payload:`` name parts of a request or message; None for the others."""
    if info.data.get("webhook") is not None:
        return WEBHOOK_ROOTS, "request", _REQUEST_HINT
    if info.data.get("queue") is not None:
        return QUEUE_ROOTS, "message", _MESSAGE_HINT
    return None


def check_key_template(value: str | None, info: ValidationInfo) -> str | None:
    if value is None:
        return value
    parts = _parts_of(info)
    if parts is not None:  # a webhook or queue rule's key names parts of the request or message
        roots, what, hint = parts
        if request_key_fields(value, roots) is None:
            raise custom_error(
                "key_template",
                f"key {value!r} names something other than a part of the {what}",
                f'{hint}, in braces: e.g. key: "{{body.customer}}"',
            )
    elif not KEY_FIELD.search(value):
        raise custom_error(
            "key_template",
            f"key {value!r} names no column",
            'use {new.column} or {old.column}, e.g. key: "{new.tenant_id}"',
        )
    return value


def check_source_name(what: str) -> AfterValidator:
    def check(value: str | None) -> str | None:
        if value is not None and (
            not value or (len(value.encode()) > MAX_IDENTIFIER_BYTES and what == "channel")
        ):
            hint = f"e.g. {what}: orders" + (
                " (a channel name has at most 63 bytes)" if what == "channel" else ""
            )
            raise custom_error(f"{what}_name", f"{value!r} is not a valid {what} name", hint)
        return value

    return AfterValidator(check)


def wrap_names(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        if not value:
            raise custom_error("names_empty", "lists no column", "write e.g. changed: [status, priority]")
        return tuple(v.strip() if isinstance(v, str) else v for v in value)
    return value


def payload_mapping(value: Any, info: ValidationInfo) -> Any:
    """``payload: [id, status]`` picks columns of the new row; ``payload: {ticket: new.id, was: old.status}``
    also renames them.  Both become {output name: "new.col" | "old.col"}.  A webhook rule's picks parts of
    the request instead (``[body.type]``, ``{customer: body.data.object.customer}``), kept as written; a
    queue rule's, parts of the message."""
    parts = _parts_of(info)
    if parts is not None:
        return _request_payload(value, *parts)
    if isinstance(value, list | tuple):
        if not value:
            raise custom_error("payload_empty", "lists no column", "write e.g. payload: [id, status]")
        out: dict[str, Any] = {}
        for item in value:
            if not isinstance(item, str):
                raise custom_error(
                    "payload_item", f"{item!r} is not a column name", "write e.g. payload: [id, status]"
                )
            side, _, column = item.strip().rpartition(".")
            out[column] = f"{side or 'new'}.{column}"
        return out
    if isinstance(value, dict):
        shaped: dict[str, Any] = {}
        for name, ref in value.items():
            if not isinstance(ref, str):
                raise custom_error(
                    "payload_item",
                    f"payload.{name}: {ref!r} is not a column",
                    "write e.g. payload: {ticket: new.id}",
                )
            side, _, column = ref.strip().rpartition(".")
            if side not in ("", "new", "old"):
                raise custom_error(
                    "payload_item",
                    f"payload.{name}: {ref!r} is not new.<column> or old.<column>",
                    "write e.g. payload: {ticket: new.id, was: old.status}",
                )
            shaped[str(name)] = f"{side or 'new'}.{column}"
        return shaped
    return value


def _request_payload(value: Any, roots: tuple[str, ...], what: str, hint: str) -> Any:
    example = "write e.g. payload: {customer: body.data.object.customer, kind: body.type}"
    if isinstance(value, list | tuple):
        if not value:
            raise custom_error("payload_empty", "lists nothing", "write e.g. payload: [body.type, body.id]")
        value = {str(item).rpartition(".")[2]: item for item in value}
    if not isinstance(value, dict):
        return value
    shaped: dict[str, Any] = {}
    for name, ref in value.items():
        if not isinstance(ref, str) or request_ref(ref, roots) is None:
            raise custom_error(
                "payload_item",
                f"payload.{name}: {ref!r} is not a part of the {what}",
                f"{hint}; {example}",
            )
        shaped[str(name)] = ref.strip()
    return shaped


def wrap_text_list(value: Any) -> Any:
    """One text or a list of them (``topics: orders`` or ``topics: [orders, refunds]``), none empty."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        if not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise custom_error(
                "text_list", f"{show(value)} is not a list of names", "write e.g. topics: [orders, refunds]"
            )
        return tuple(v.strip() for v in value)
    return value


def wrap_brokers(value: Any) -> Any:
    """Kafka brokers: a list of host:port, or one text of them separated by commas (a bootstrap string)."""
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()] or [value]
    return wrap_text_list(value)


def check_nonempty(what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not value.strip():
            raise custom_error(f"{what}_name", f"{what} is empty", f"name the {what}, e.g. {what}: listener")
        return value

    return AfterValidator(check)


def check_broker_url(example: str, schemes: tuple[str, ...]) -> AfterValidator:
    def check(value: str) -> str:
        scheme, sep, _ = value.partition("://")
        if not sep or scheme not in schemes:
            raise custom_error(
                "broker_url",
                f"{value!r} is not a {example} URL",
                f"use {' or '.join(s + '://' for s in schemes)}, e.g. url: {example}://127.0.0.1:"
                + ("6379/0" if example == "redis" else "4222"),
            )
        return value

    return AfterValidator(check)


def wrap_operations(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        return tuple(v.strip().lower() if isinstance(v, str) else v for v in value)
    return value


def dedupe_operations(value: tuple[Operation, ...]) -> tuple[Operation, ...]:
    if not value:
        raise custom_error("operations_empty", "lists no operation", "write e.g. on: [insert, update]")
    return tuple(dict.fromkeys(value))


def plain_identifier(what: str) -> AfterValidator:
    def check(value: str) -> str:
        if quote_ident(value) != value or len(value) > MAX_IDENTIFIER_BYTES:
            hint = f"use lower-case letters, digits and '_' (not an SQL keyword), e.g. {what}: listener"
            raise custom_error("identifier", f"{value!r} is not a plain lower-case identifier", hint)
        return value

    return AfterValidator(check)


_LISTEN_HINT = (
    'write host:port, e.g. listen: "127.0.0.1:8080" (one machine), "0.0.0.0:8080" (every IPv4 address) '
    'or "[::1]:8080" (IPv6); port 0 picks a free port'
)


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6 address]:port``) as (host, port); ValueError names what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{value!r} is not host:port")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"{value!r}: an IPv6 address goes in brackets, as [::1]:8080")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: an IPv6 address goes in brackets, as [::1]:8080")
    number = int(port)
    if number > 65535:
        raise ValueError(f"{value!r}: port {number} is beyond 65535")
    return host, number


def check_listen(value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as exc:
        raise custom_error("listen", str(exc), _LISTEN_HINT) from None
    return value


_PRESETS = ("standard", "stripe", "github", "shopify", "slack", "hmac-sha256", "none")  # listener.http.verify


def check_verify_preset(value: str) -> str:
    if value not in _PRESETS:
        raise custom_error(
            "verify_preset",
            f"{value!r} is not a signature preset",
            f"use one of {', '.join(_PRESETS)} (hmac-sha256: an X-Signature header of the body's HMAC)",
        )
    return value


def check_webhook_path(value: str) -> str:
    if not re.fullmatch(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*", value) or value in ("/healthz", "/readyz"):
        raise custom_error(
            "webhook_path",
            f"{value!r} is not a webhook path",
            "a path starting with '/', without spaces, query or fragment, other than /healthz and /readyz, "
            "e.g. path: /hooks/stripe",
        )
    return value


def check_env_name(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise custom_error(
            "env_name",
            f"{value!r} is not an environment variable name",
            "name the variable, not its value: e.g. secret_env: STRIPE_WEBHOOK_SECRET",
        )
    return value


# the nicknames Debian's cron knows (crontab(5)); @reboot has no tick
CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_HINT = (
    'five fields: minute hour day-of-month month day-of-week, e.g. cron: "0 2 * * *" (02:00 daily) or '
    '"*/15 9-17 * * 1-5"; a sixth field in front for seconds; or @hourly, @daily, @weekly, @monthly, @yearly'
)


def cron_fields(value: str) -> str:
    """A cron spec with its nickname (``@daily``) written out."""
    return CRON_ALIASES.get(value.strip().lower(), value)


def check_cron(value: str | None) -> str | None:
    if value is not None:
        try:
            next(cronsim.CronSim(cron_fields(value), datetime(2000, 1, 1, tzinfo=UTC)))
        except cronsim.CronSimError as exc:
            raise custom_error("cron", f"{value!r} is not a cron spec: {exc}", _CRON_HINT) from None
        except StopIteration:  # e.g. "0 0 30 2 *", which cronsim already refuses: a spec that never fires
            raise custom_error("cron", f"{value!r} never fires", _CRON_HINT) from None
    return value


def check_time_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise custom_error(
            "time_zone",
            f"{value!r} is not a time zone",
            "name an IANA time zone, e.g. tz: Europe/Paris, America/New_York or UTC",
        ) from None
    return value


def check_whole_seconds(value: str | None) -> str | None:
    """A duration of whole seconds, at least one (`every:`: ticks are keyed to the second)."""
    if value is not None:
        seconds = parse_duration(value)
        if seconds < 1 or seconds != int(seconds):
            raise custom_error(
                "duration", f"every {value!r} is not a whole number of seconds", "e.g. every: 30s, 5m or 1h"
            )
    return value


FOREVER = "forever"


def check_keep(value: str | None) -> str | None:
    """A retention period: a duration, or ``forever`` (never pruned)."""
    if value is None or value == FOREVER:
        return value
    try:
        check_duration(value)
    except PydanticCustomError as exc:
        raise custom_error("duration", str(exc), DURATION_HINT + f"; or {FOREVER} to keep them all") from None
    return value


def check_duration_or_zero(value: str) -> str:
    try:
        parse_duration(value)
    except ValueError:
        raise custom_error("duration", f"{value!r} is not a duration", DURATION_HINT + "; or 0s") from None
    return value


def check_slot(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9_]{1,63}", value):
        hint = "a slot name has 1 to 63 lower-case letters, digits or '_', e.g. slot: listener"
        raise custom_error("slot_name", f"{value!r} is not a valid replication slot name", hint)
    return value


TableName = Annotated[str, AfterValidator(_normalize_table)]
"""A table as ``schema.table`` in display form, quoted only where PostgreSQL's ``quote_ident`` would."""


def show(value: Any) -> str:
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
