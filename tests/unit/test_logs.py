"""`--log-format json`: one object per line, stable field names (listener.logs)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from listener import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    logs.configure(level, "text")
    root.handlers[:] = handlers
    logs._context.clear()


def test_a_json_line_holds_time_level_logger_message_and_the_fields_given(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure(logging.INFO, "json")
    logs.set_context(slot="orders")
    log = logging.getLogger("listener.test")
    log.info("run %s done", "r/0/1/0", extra=logs.fields(run_id="r/0/1/0", workflow="m:f", lsn=None))
    try:
        raise ValueError("bad \u00e9 value\nsecond line")
    except ValueError:
        log.exception("it failed", extra=logs.fields(rule="r"))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # a traceback stays inside its line
    first, second = map(json.loads, lines)
    assert first.keys() == {"time", "level", "logger", "message", "slot", "run_id", "workflow"}
    assert first["level"] == "INFO" and first["logger"] == "listener.test" and first["slot"] == "orders"
    assert first["message"] == "run r/0/1/0 done" and first["run_id"] == "r/0/1/0"
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None  # ISO 8601 with its zone (UTC)
    assert second["level"] == "ERROR" and second["rule"] == "r" and second["slot"] == "orders"
    assert "ValueError: bad \u00e9 value" in second["exception"] and "Traceback" in second["exception"]


def test_the_text_format_is_one_line_of_words(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure(logging.WARNING, "text")
    logging.getLogger("listener.test").warning("slot %r busy", "s", extra=logs.fields(slot="s"))
    logging.getLogger("listener.test").info("not shown")
    line = capsys.readouterr().err.strip()
    assert line.endswith(" WARNING listener.test: slot 's' busy") and "\n" not in line


def test_a_field_outside_the_stable_names_is_a_bug() -> None:
    with pytest.raises(AssertionError, match="not a log field"):
        logs.fields(table="t")
