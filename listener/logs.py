"""The logs: lines for a terminal, or one JSON object per line for a collector (``--log-format json``).

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, ``exception`` with a
traceback, and the fields of :data:`FIELDS` where the line is about one of them: a log call passes them as
``extra=`` (:func:`fields` leaves out the unknown ones), and :func:`set_context` adds those that hold for
the whole process (the slot).  Their names are stable: alerts and dashboards may key on them.  The text
format shows the message alone; it says the same in words.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The logger of `listener run`'s startup line: shown at the default level (WARNING) too.
STARTUP_LOGGER = "listener.startup"
# The fields a line may carry beside its message, by these names only.
FIELDS = (
    "slot",
    "epoch",
    "lsn",
    "rule",
    "workflow",
    "run_id",
    "attempt",
    "webhook",
    "schedule",
    "queue",
    "rewind",
)

_handler: logging.Handler | None = None
_context: dict[str, Any] = {}


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the given fields of :data:`FIELDS` that have a value."""
    unknown = set(values) - set(FIELDS)
    assert not unknown, f"not a log field: {sorted(unknown)}"
    return {name: value for name, value in values.items() if value is not None}


def configure(level: int, log_format: LogFormat = "text") -> None:
    """Log at ``level`` and above to standard error, in ``log_format`` (again: the last call wins)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(log_format))
    root.addHandler(handler)
    root.setLevel(level)
    _handler = handler


def set_context(**values: Any) -> None:
    """Fields every JSON line of this process carries from now on (e.g. ``slot``)."""
    _context.update(fields(**values))
    if _handler is not None and isinstance(_handler.formatter, JsonFormatter):
        _handler.formatter.static_fields = dict(_context)


def _formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
        timestamp="time",
        static_fields=dict(_context),
        json_ensure_ascii=False,
    )
