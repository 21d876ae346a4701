"""The errors of rule predicates: load-time refusals (:class:`PredicateError`), run-time failures with
PostgreSQL's SQLSTATE (:class:`EvaluationError`), a column absent from a row (:class:`MissingValue`).
"""

from __future__ import annotations

from typing import Final

from listener.errors import ListenerError

# ---------------------------------------------------------------------------------------------- errors


class PredicateError(ListenerError, ValueError):
    """A ``when:`` expression that cannot be compiled: says what is wrong, quotes the part, gives the fix.

    ``fragment`` is the offending part (as PostgreSQL deparses it), ``position`` its 0-based character
    offset in the predicate text, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        text: str | None = None,
        fragment: str | None = None,
        position: int | None = None,
        hint: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        shown = message
        if text is not None and position is not None:
            shown += "\n" + _caret(text, position)
        super().__init__(shown, hint=hint)
        self.what = message
        self.text = text
        self.fragment = fragment
        self.position = position
        self.sqlstate = sqlstate  # set when a constant part always fails: the error PostgreSQL raises
        # True when PostgreSQL would accept the expression but listener cannot evaluate it exactly
        self.limitation = False


class EvaluationError(ListenerError):
    """Raised while evaluating, where PostgreSQL would raise (``sqlstate`` is its SQLSTATE).

    ``sqlstate`` is None when the failure is a limit of listener rather than an error PostgreSQL would
    raise (a date format listener does not parse)."""

    def __init__(self, message: str, sqlstate: str | None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.sqlstate = sqlstate


class MissingValue(KeyError):
    """The change carries no value for a referenced column (an unchanged TOAST value, or a key-only old
    row): the caller decides what that means."""

    def __init__(self, side: str, column: str) -> None:
        super().__init__(f"{side}.{column}")
        self.side = side
        self.column = column


def _caret(text: str, position: int) -> str:
    """The line of ``text`` holding ``position``, with a caret under it."""
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    line = text[start : end if end >= 0 else len(text)]
    return f"  {line}\n  {' ' * (position - start)}^"


# SQLSTATEs raised at evaluation, as PostgreSQL names them
NUMERIC_OUT_OF_RANGE: Final = "22003"
DIVISION_BY_ZERO: Final = "22012"
INVALID_TEXT: Final = "22P02"
DATETIME_OVERFLOW: Final = "22008"
INVALID_PARAMETER: Final = "22023"
INVALID_ESCAPE: Final = "22025"
INTERVAL_FIELD_OVERFLOW: Final = "22015"
UNTRANSLATABLE: Final = "22P05"
NOT_SUPPORTED: Final = "0A000"


def _invalid(type_label: str, text: str, sqlstate: str = INVALID_TEXT) -> EvaluationError:
    return EvaluationError(f'invalid input syntax for type {type_label}: "{text}"', sqlstate)


def _unsupported(what: str) -> EvaluationError:
    return EvaluationError(what, None)


def _unread(type_label: str, text: str) -> EvaluationError:
    """Text in a form PostgreSQL's date/time parser may accept but listener does not read."""
    return EvaluationError(
        f'listener cannot read "{text}" as {type_label}',
        None,
        hint="write dates and times in ISO 8601 ('2024-01-31 12:00:00+00') and intervals as "
        "'1 day 02:00:00' / '3 mons'",
    )
