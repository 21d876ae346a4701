"""Text from configuration files and databases, shown on a terminal.

Such text is never read as rich markup (``[bold]``, or an example like ``on: [insert, update]``) and never
reaches the terminal as control characters: an ESC byte in a database value could otherwise move the
cursor, rewrite the screen or set the window title of whoever runs ``listener runs``.
"""

from __future__ import annotations

import re

from rich.markup import escape
from rich.text import Text

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
