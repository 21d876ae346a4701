"""The errors of rule predicates: load-time refusals (:class:`PredicateError`), run-time failures with
PostgreSQL's SQLSTATE (:class:`EvaluationError`) -- both defined in :mod:`listener.errors` with every other
error, named here too -- a column absent from a row (:class:`MissingValue`), and the SQLSTATEs.
"""

from __future__ import annotations

from typing import Final

from listener.errors import EvaluationError as EvaluationError
from listener.errors import PredicateError as PredicateError

# ---------------------------------------------------------------------------------------------- errors


class MissingValue(KeyError):
    """The change carries no value for a referenced column (an unchanged TOAST value, or a key-only old
    row): the caller decides what that means."""

    def __init__(self, side: str, column: str) -> None:
        super().__init__(f"{side}.{column}")
        self.side = side
        self.column = column


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


def invalid(type_label: str, text: str, sqlstate: str = INVALID_TEXT) -> EvaluationError:
    return EvaluationError(f'invalid input syntax for type {type_label}: "{text}"', sqlstate)


def unsupported(what: str) -> EvaluationError:
    return EvaluationError(what, None)


def unread(type_label: str, text: str) -> EvaluationError:
    """Text in a form PostgreSQL's date/time parser may accept but listener does not read."""
    return EvaluationError(
        f'listener cannot read "{text}" as {type_label}',
        None,
        hint="write dates and times in ISO 8601 ('2024-01-31 12:00:00+00') and intervals as "
        "'1 day 02:00:00' / '3 mons'",
    )
