"""The publications a session streams."""

from __future__ import annotations

from typing import Any

import psycopg

MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1; longer names are truncated, we refuse them
FILTERED_SUFFIX = "_filtered"


def filtered_publication(publication: str) -> str:
    """The second publication's name: ``<publication>_filtered``, the base shortened so the suffix fits
    PostgreSQL's 63-byte names (publication names are ASCII, the config checks)."""
    return publication[: MAX_IDENTIFIER_BYTES - len(FILTERED_SUFFIX)] + FILTERED_SUFFIX


# PostgreSQL 18 skips a streamed publication that does not exist at a decoded position (with a warning);
# before, that is an error.
SKIPS_MISSING_PUBLICATIONS = 180000


async def streamed_publications(conn: psycopg.AsyncConnection[Any], publication: str) -> list[str]:
    """The publications ingest streams: ``publication`` and the filtered (insert-only) one (always from 18,
    so one created later is picked up; before 18 only when it exists, which `init` ensures)."""
    version = conn.info.server_version
    filtered = filtered_publication(publication)
    if version < SKIPS_MISSING_PUBLICATIONS:
        cur = await conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [filtered])
        if await cur.fetchone() is None:
            return [publication]
    return [publication, filtered]
