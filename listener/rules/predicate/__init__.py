"""Rule predicates: SQL boolean expressions with PostgreSQL's own semantics, compiled once to closures.

A rule's ``when:`` is a SQL expression over ``new.<col>`` and ``old.<col>`` (a bare column means
``new.<col>``).  :func:`compile_predicate` parses it with pglast (the real PostgreSQL parser), checks every
column and type against the table at load time, and compiles it into nested Python closures; evaluation
never sends the text to a database and never walks the syntax tree again.

What "PostgreSQL's semantics" means here (tests/integration/test_predicate_conformance.py runs generated
expressions through a real server and this package and compares results and SQLSTATEs):

* three-valued logic; strict operators evaluate all their arguments, then return NULL on a NULL input;
  AND/OR/CASE/COALESCE are lazy, left to right;
* constant subexpressions are folded at load time under the planner's rules (``eval_const_expressions``):
  a constant that always fails (``1/0``) is a load-time error, as it is a plan-time error in PostgreSQL,
  unless the planner would never reach it (``false AND 1/0 = 1``);
* operator resolution: unknown-typed literals take the other operand's type (``new.amount > '10.5'``),
  numeric promotion int2 < int4 < int8 < numeric < float8; ``IN`` lists, CASE and COALESCE use
  ``select_common_type``; integer overflow, division by zero and invalid input raise
  :class:`EvaluationError` carrying PostgreSQL's SQLSTATE;
* numeric arithmetic is exact with PostgreSQL's result scales (``select_div_scale`` for division);
  numeric NaN and +-Infinity, float8 NaN, +-Infinity and -0 behave as in PostgreSQL (NaN equals NaN and
  sorts above everything); float8/float4 text follows ``float8out``/``float4out`` (shortest digits);
* text ordering is code-point order, which is PostgreSQL's only under the "C" collation: under another
  database collation an ordering comparison (and lower/upper/ILIKE) needs an explicit ``COLLATE "C"``;
* the session is fixed at ``TimeZone = 'UTC'``, ``DateStyle = ISO``, ``IntervalStyle = postgres``;
  ``now()``/``current_timestamp`` is the ``now`` argument (the change's commit time).

Dates and timestamps are held as PostgreSQL holds them (days / microseconds since 2000-01-01, the
infinities at the ends of the integer range), so infinities, BC and years past 9999 compare, add and
print as in PostgreSQL (see ``date2j``).

Values arrive as PostgreSQL text (pgoutput).  They are loaded lazily, only for referenced columns, with
psycopg's loaders chosen by type OID.  Two exceptions, both because psycopg's loader would lose meaning:
``interval`` (psycopg folds months into 30-day timedeltas, PostgreSQL adds calendar months) and jsonb
numbers (loaded as :class:`~decimal.Decimal`, not float, so ``->>`` and equality match).

Deliberately not supported, refused at load time with a hint (or an :class:`EvaluationError` whose
``sqlstate`` is None at run time, never a guessed answer): date/time text other than ISO 8601
(``'2024-01-31 12:00:00+02'``; PostgreSQL reads many more forms), time zone names other than UTC, the
``time`` types, jsonb ordering, arrays, regular expressions, ``LIKE`` on character(n), enum ordering
(the declared order is not known here; enum labels are not validated either), and the ``json`` type's
operators (cast to ``jsonb``).

The package follows PostgreSQL's own files, each module importing only those above it:
:mod:`.errors`; :mod:`.types` (the value model); :mod:`.textout` and :mod:`.textin` (the adt ``*out`` and
``*in`` functions); :mod:`.operators`, :mod:`.dates`, :mod:`.jsonb`, :mod:`.like` (operators and
functions); :mod:`.coercion` (casts); :mod:`.evaluator` (closures, strictness, three-valued logic);
:mod:`.parse` (pglast); :mod:`.loaders` (pgoutput text -> values); :mod:`.compiler` (syntax tree ->
closures); :mod:`.compiled` (:class:`Predicate`, :func:`compile_predicate`).
"""

from listener.rules.predicate.compiled import Predicate, compile_predicate
from listener.rules.predicate.errors import EvaluationError, MissingValue, PredicateError
from listener.rules.predicate.types import JSON_NULL, ColumnType, Interval

__all__ = [
    "JSON_NULL",
    "ColumnType",
    "EvaluationError",
    "Interval",
    "MissingValue",
    "Predicate",
    "PredicateError",
    "compile_predicate",
]
