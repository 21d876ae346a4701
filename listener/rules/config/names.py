"""Names as PostgreSQL reads them: table names (``schema.table``, quoting and case folding as in
PostgreSQL's parser and ``quote_ident()``) and the column references of a key template.
"""

from __future__ import annotations

import re

from listener.pg.publications import MAX_IDENTIFIER_BYTES

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


KEY_FIELD = re.compile(r"\{(new|old)\.([^{}]+)\}")


def key_fields(template: str) -> list[tuple[str, str]]:
    """The (new|old, column) references of a key template."""
    return [(m[1], m[2]) for m in KEY_FIELD.finditer(template)]


# ---------------------------------------------------------------------------------------------------------
# What a webhook rule's `key:` and `payload:` name of a request: ``body.data.object.customer`` (a path into
# the parsed body; a number picks an array element), ``headers.x-shop-domain``, ``query.page``, ``method``,
# ``path``; ``body``, ``headers`` and ``query`` alone are the whole value.

WEBHOOK_ROOTS = ("body", "headers", "query", "method", "path")
# A queue rule's (listener.ingest.queues) name parts of a broker message the same way: ``body.<path>``,
# ``headers.<name>``, and the text parts ``key`` (the message key) and ``topic`` (topic, stream or subject).
QUEUE_ROOTS = ("body", "headers", "key", "topic")
_TEXT_ROOTS = ("method", "path", "key", "topic")  # no path below them
TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")


def request_ref(text: str, roots: tuple[str, ...] = WEBHOOK_ROOTS) -> tuple[str, str] | None:
    """``"body.data.id"`` -> ``("body", "data.id")``; None when ``text`` names no part of a request (or of
    a message, with ``roots=QUEUE_ROOTS``)."""
    root, dot, rest = text.strip().partition(".")
    if root not in roots:
        return None
    if not dot:
        return root, ""
    if root in _TEXT_ROOTS or not all(rest.split(".")):
        return None
    return root, rest


def request_key_fields(template: str, roots: tuple[str, ...] = WEBHOOK_ROOTS) -> list[tuple[str, str]] | None:
    """The request parts a webhook rule's key template names (message parts, with ``roots=QUEUE_ROOTS``),
    or None when a field is not one."""
    fields = [request_ref(m[1], roots) for m in TEMPLATE_FIELD.finditer(template)]
    if not fields or any(f is None for f in fields):
        return None
    return [f for f in fields if f is not None]
