"""Terminal primitives: text from configuration files and databases shown safely, consoles, JSON lines,
progress bars.

Such text is never read as rich markup (``[bold]``, or an example like ``on: [insert, update]``) and never
reaches the terminal as control characters: an ESC byte in a database value could otherwise move the
cursor, rewrite the screen or set the window title of whoever runs ``listener runs``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, ProgressColumn, TaskID
from rich.text import Text

from listener.defaults import PIPE_COLUMNS

# C0 controls but newline and tab, DEL, and C1 controls (0x9b is a one-byte CSI on some terminals)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with each control character shown as a ``\\x..`` escape (newlines and tabs kept)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def markup_safe(text: object) -> str:
    """``text`` to put inside a rich markup string: printable, and its brackets not read as tags."""
    return escape(printable(str(text)))


def cell(text: str, style: str = "") -> Text:
    """A rich Text of database text (a table cell, a line), printable."""
    return Text(printable(text), style)


# ---------------------------------------------------------------------------------------------------------
# Consoles, JSON for scripts, progress bars.


def stdout_console() -> Console:
    """A console for tables on stdout: the terminal's width, or PIPE_COLUMNS when piped (unless $COLUMNS)."""
    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(highlight=False, width=PIPE_COLUMNS)
    return console


def dumps(value: Any) -> str:
    """JSON text; datetimes as ISO 8601 in UTC (``2025-03-01T12:00:04.500000+00:00``)."""
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):  # in UTC: the same text whatever the server's or the client's time zone
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json_lines(out: IO[str], rows: Iterable[Any]) -> None:
    """One JSON object per line, one line per dataclass of ``rows``."""
    for row in rows:
        out.write(dumps(asdict(row)) + "\n")


@contextmanager
def progress_bar(
    console: Console, *columns: ProgressColumn, description: str, transient: bool
) -> Iterator[Callable[[int, int | None], None]]:
    """A progress callback ``(done, total)`` drawing a bar on ``console``; the bar appears at the first
    call (nothing is drawn for work that never reports) and stops when the block ends."""
    progress: Progress | None = None
    task: TaskID | None = None

    def report(done: int, total: int | None) -> None:
        nonlocal progress, task
        if progress is None:
            progress = Progress(*columns, console=console, transient=transient)
            progress.start()
            task = progress.add_task(description, total=total)
        assert task is not None
        progress.update(task, completed=done, total=total)

    try:
        yield report
    finally:
        if progress is not None:
            progress.stop()
