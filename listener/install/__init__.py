"""Prerequisites (`listener check`), setup (`listener init`) and teardown (`listener drop`).

Each check names what is wrong and the exact SQL or config change that fixes it.  ``init`` applies the
state schema migrations, creates (or corrects) the publications for exactly the rule tables — publishing
only the operations the rules use, so an application table without a primary key keeps accepting
UPDATE/DELETE when no rule asks for them — and creates the logical slot.  All of it is safe to run twice.

Pushdown (PostgreSQL 15+, planned by :mod:`listener.rules.pushdown`): the tables whose rules share a row
filter are published by a second publication, ``<publication>_filtered``, with that filter; tables whose
rules name their columns get a column list.  ``init`` creates the second publication even while no table needs
it, and empties rather than drops it when none does any more: the server decodes the WAL from the slot's
confirmed position with the catalog of that time, so a publication dropped in between would lose the
changes it carried there, and one created in between fails decoding before PostgreSQL 18.  ``drop``
removes both.

Modules, each importing only those before it: :mod:`.privileges` (the role's rights, :class:`CheckResult`),
:mod:`.publications` (planning, probing, statements), :mod:`.slots` (the replication slot),
:mod:`.failover` (``slot_failover:``, the failover slot's checks), :mod:`.checks` (``listener check``),
:mod:`.provision` (``listener init`` and ``listener drop``).
"""

from listener.install.checks import check
from listener.install.privileges import CheckResult
from listener.install.provision import drop, init
from listener.install.publications import (
    FILTER_SETTINGS,
    PublicationAccess,
    Pushdown,
    compile_rules,
    ensure_publication,
    ensure_publications,
    plan_pushdown,
    probe_pushdown,
    publication_statements,
    read_catalog,
    tail_publications,
)
from listener.install.slots import ensure_slot, lost_slot

__all__ = [
    "FILTER_SETTINGS",
    "CheckResult",
    "PublicationAccess",
    "Pushdown",
    "check",
    "compile_rules",
    "drop",
    "ensure_publication",
    "ensure_publications",
    "ensure_slot",
    "init",
    "lost_slot",
    "plan_pushdown",
    "probe_pushdown",
    "publication_statements",
    "read_catalog",
    "tail_publications",
]
