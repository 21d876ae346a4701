"""The SQL against the state schema: named blocks in ``sql/queries/*.sql`` (shipped as
``listener.sql``), parsed once, handed out by name.

A block starts with its header, comment lines of ``key: value``::

    -- name: insert_events
    -- placeholders: asyncpg
    -- (further comment lines say what the statement does and why)
    INSERT INTO ...

``placeholders`` declares how the statement takes its parameters, and the loader checks that it holds
exactly that kind:

* ``asyncpg``: ``$1``, ``$2``, ... (the server's own; asyncpg sends them as they are);
* ``psycopg``: ``%s`` or ``%(name)s`` (psycopg's; a literal ``%`` is written ``%%``).  A block with only
  named ones (``%(name)s``) can also be run through asyncpg: ``Query.asyncpg`` numbers them in order of
  first appearance, and ``Query.args`` puts the values in that order.  One statement then serves both
  drivers (``next_generation`` is run by `listener rewind` and `retry` through psycopg, by `replay`
  through asyncpg);
* ``none``: no parameter at all.

A block whose statement still needs identifiers (a schema name) declares them: ``-- identifiers: schema``;
its text is then a ``psycopg.sql.SQL`` template with those fields (``{schema}``), filled by ``compose``.

SQL against the *source* database's catalogs (``pg_publication``, ``pg_replication_slots``, ...) is not
here: it stays beside the code that inspects them.
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, get_args

from psycopg import sql

Style = Literal["asyncpg", "psycopg", "none"]
STYLES: tuple[Style, ...] = get_args(Style)

_HEADER = re.compile(r"^--\s*([a-z]+):\s*(.*?)\s*$")
_HEADER_KEYS = ("name", "placeholders", "identifiers")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# What the server does not read as SQL: comments, quoted literals and identifiers, dollar quotes.
_NOT_CODE = re.compile(
    r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(\$[A-Za-z_]*\$).*?\1", re.DOTALL
)
_DOLLAR = re.compile(r"\$(\d+)")
# psycopg reads every % of the text (it does not parse SQL): %s, %b, %t, %(name)s, %% and nothing else.
_PERCENT = re.compile(r"%(?:\(([A-Za-z_][A-Za-z0-9_]*)\))?([sbt%])|%")


class QueryError(RuntimeError):
    """A block of ``sql/queries`` is malformed: a packaging bug, found when the module is first used."""


@dataclass(frozen=True, slots=True)
class Query:
    """One named statement."""

    name: str
    placeholders: Style
    text: str
    where: str  # file:line of its header
    identifiers: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The named psycopg parameters, in order of first appearance (``$1``, ``$2``, ... for asyncpg)."""
        seen: dict[str, None] = {}
        for match in _PERCENT.finditer(self.text):
            if match[1]:
                seen.setdefault(match[1])
        return tuple(seen)

    @property
    def asyncpg(self) -> str:
        """The text for asyncpg: as it is, or with named psycopg parameters numbered (see ``names``)."""
        if self.placeholders != "psycopg":
            return self.text
        names = self.names
        if not names:
            raise QueryError(f"{self.where}: query {self.name} has positional %s: asyncpg cannot run it")
        numbers = {name: n for n, name in enumerate(names, start=1)}

        def replace(match: re.Match[str]) -> str:
            return f"${numbers[match[1]]}" if match[1] else "%"

        return _PERCENT.sub(replace, self.text)

    def args(self, **values: Any) -> list[Any]:
        """The values of the named parameters as asyncpg takes them (in the order of ``names``)."""
        names = self.names
        if set(values) != set(names):
            raise QueryError(f"query {self.name} takes {', '.join(names)}, given {', '.join(values)}")
        return [values[name] for name in names]

    def compose(self, **identifiers: sql.Composable) -> sql.Composed:
        """The statement with its identifier fields filled (``psycopg.sql``)."""
        return sql.SQL(self.text).format(**identifiers)


def _check(query: Query) -> None:
    """The declared placeholder style is the one the text holds, and the identifier fields are declared."""
    code = _NOT_CODE.sub(" ", query.text)  # where the server reads $n
    dollars = sorted({int(d) for d in _DOLLAR.findall(code)})
    # psycopg reads %s everywhere, literals included; elsewhere only code counts
    percents = list(_PERCENT.finditer(query.text if query.placeholders == "psycopg" else code))
    params = [m for m in percents if m[2] in ("s", "b", "t")]
    where = f"{query.where}: query {query.name} declares placeholders: {query.placeholders} but"
    if query.placeholders == "psycopg":
        if not params:
            raise QueryError(f"{where} has no %s parameter")
        if any(m[2] is None for m in percents):
            raise QueryError(f"{where} has a lone % (psycopg wants %%)")
        if dollars:
            raise QueryError(f"{where} has asyncpg parameters (${dollars[0]})")
        if any(m[1] for m in params) and any(not m[1] for m in params):
            raise QueryError(f"{where} mixes %s and %(name)s")
    elif params:
        raise QueryError(f"{where} has psycopg parameters ({params[0][0]})")
    elif query.placeholders == "asyncpg":
        if not dollars:
            raise QueryError(f"{where} has no $n parameter")
        if dollars != list(range(1, dollars[-1] + 1)):
            raise QueryError(f"{where} skips a parameter number: ${', $'.join(map(str, dollars))}")
    elif dollars:
        raise QueryError(f"{where} has parameters (${dollars[0]})")
    if not query.identifiers:  # braces are the SQL's own (a '{}' jsonb literal)
        return
    fields = {f for _, f, _, _ in string.Formatter().parse(query.text) if f is not None}
    if fields != set(query.identifiers):
        declared = ", ".join(query.identifiers) or "none"
        raise QueryError(
            f"{query.where}: query {query.name} declares identifiers: {declared} but its text has fields "
            f"{', '.join(sorted(fields)) or 'none'}"
        )


def parse(text: str, filename: str) -> list[Query]:
    """The named blocks of one file.  Lines before the first ``-- name:`` are the file's own comment."""
    blocks: list[Query] = []
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"^--\s*name:", line)]
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        header: dict[str, str] = {}
        i = start
        while i < end and (match := _HEADER.match(lines[i])) and match[1] in _HEADER_KEYS:
            if match[1] in header:
                raise QueryError(f"{filename}:{i + 1}: {match[1]} given twice")
            header[match[1]] = match[2]
            i += 1
        where = f"{filename}:{start + 1}"
        name = header["name"]
        if not _NAME.match(name):
            raise QueryError(f"{where}: query name {name!r} is not a lower-case identifier")
        style = header.get("placeholders")
        if style not in STYLES:
            raise QueryError(f"{where}: query {name} needs '-- placeholders: {' | '.join(STYLES)}'")
        while i < end and lines[i].startswith("--"):  # the block's comment
            i += 1
        body = "\n".join(lines[i:end]).strip()
        if not body:
            raise QueryError(f"{where}: query {name} has no statement")
        idents = tuple(x.strip() for x in header.get("identifiers", "").split(",") if x.strip())
        query = Query(name, style, body, where, idents)
        _check(query)
        blocks.append(query)
    return blocks


@functools.cache
def load() -> dict[str, Query]:
    """Every named block of ``sql/queries``, by name; a name given twice is a packaging bug."""
    found: dict[str, Query] = {}
    folder = resources.files("listener.sql").joinpath("queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for query in parse(entry.read_text(encoding="utf-8"), f"sql/queries/{entry.name}"):
            if query.name in found:
                first = found[query.name].where
                raise QueryError(f"{query.where}: query {query.name} is also defined at {first}")
            found[query.name] = query
    return found


def query(name: str) -> Query:
    """The named block ``name``."""
    try:
        return load()[name]
    except KeyError:
        raise QueryError(f"no query {name!r} in sql/queries") from None


def get(name: str) -> str:
    """The text of the named block ``name``, as its placeholders declare."""
    return query(name).text
