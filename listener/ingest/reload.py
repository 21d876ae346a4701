"""Reload: new rules at a precise point of the stream, marked by a logical decoding message.

``listener reload`` (SIGHUP) calls :func:`reload`, which writes the marker; the reader applies the new
rules when the marker comes through the slot (:func:`apply_reload`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from listener.errors import ConfigError, ReloadDeferred
from listener.ingest.state import IngestState
from listener.logs import fields
from listener.pg.lsn import format_lsn
from listener.rules.compile import compile_rules
from listener.rules.config import Config

logger = logging.getLogger(__name__)

RELOAD_PREFIX = "listener.reload"  # the logical decoding message that marks where new rules apply

# Brings the source's publications up to what a new config needs, keeping what ``keep`` needs as well
# (None: exactly the new config's): `listener init`'s work, which the service hands to ``Ingest.reload``.
Prepare = Callable[[Config, Config | None], object]


async def reload(ingest: IngestState, config: Config, *, prepare: Prepare) -> int:
    """Switch to ``config``'s rules at a precise point of the stream; return that LSN.

    The new rules are compiled against the catalog first (an invalid config raises and the old rules
    keep running), the publications are brought up to date by ``prepare`` (the service passes
    `listener init`'s), then a non-transactional logical decoding message ``listener.reload`` is
    written: transactions committed before it were matched by the old rules, those after it by the new
    ones, and none is lost or matched twice on the way."""
    check_reloadable(ingest.config, config)
    async with ingest.catalog_lock:  # a session ending meanwhile waits to close the connection
        catalog = ingest.catalog
        if catalog is None or not ingest.streaming.is_set():
            raise ReloadDeferred("ingest is not streaming")
        return await _reload(ingest, config, catalog, prepare)


def check_reloadable(old: Config | None, new: Config) -> None:
    """Refuse a new config that changes what only a restart can (a ConfigError naming the key)."""
    restart_only = ("slot", "slot_failover", "publication", "state_schema", "dsn", "state_dsn", "http",
                    "webhooks", "schedules", "queues", "sink")  # fmt: skip
    for key in restart_only:
        if old is not None and getattr(new, key) != getattr(old, key):
            raise ConfigError(
                f"reload cannot change `{key}:`", hint="restart listener to change it", file=new.source_path
            )


async def _reload(
    ingest: IngestState, config: Config, catalog: psycopg.AsyncConnection[Any], prepare: Prepare
) -> int:
    rules = await compile_rules(config, catalog)  # raises ConfigError: the old rules stay
    # The publications first carry what either set of rules needs; only after the marker (in WAL order)
    # do they narrow to the new rules, so no change that the rules in force would match is filtered.
    await asyncio.to_thread(prepare, config, ingest.config)
    token = f"{ingest.slot}/{uuid.uuid4()}"
    ingest.pending_rules[token] = (config, rules)
    cur = await catalog.execute(
        "SELECT (pg_logical_emit_message(false, %s, %s) - '0/0')::int8", [RELOAD_PREFIX, token]
    )
    row = await cur.fetchone()
    assert row is not None
    await asyncio.to_thread(prepare, config, None)
    return int(row[0])


def apply_reload(ingest: IngestState, token: str, lsn: int) -> bool:
    """At the reload message: the new rules from here on.  False when the token is not ours (another
    process's reload, or one from before a restart: its rules are the file's, loaded at start)."""
    pending = ingest.pending_rules.pop(token, None)
    if pending is None:
        return False
    ingest.config, ingest.rules = pending
    ingest.reloads.append(lsn)
    logger.info(
        "rules reloaded: %d rule(s) apply from LSN %s on",
        len(ingest.rules.rules),
        format_lsn(lsn),
        extra=fields(slot=ingest.slot, lsn=format_lsn(lsn)),
    )
    return True
