"""Ingest: the sources (the replication slot, NOTIFY) → batches of events → the writer, which commits each
with its position and only then acknowledges it (the seam: :mod:`listener.ingest.source`).

Modules, one role each: ``session`` (:class:`Ingest`: sessions, reconnects, supervision), ``state`` (what
the tasks share), ``source`` (the seam and the queue to the writer), ``reader`` (the pgoutput source),
``notify`` (the NOTIFY source), ``writer``, ``reload``, ``rewinds``, ``slot``, ``backfill``, ``expand``,
``journal``.
"""

from listener.ingest.session import Ingest
from listener.ingest.state import IngestStats

__all__ = ["Ingest", "IngestStats"]
