"""`listener tail`: the decoded changes of the configured tables (written as JSON lines by the command).

Streams from a temporary slot (dropped by the server when the session ends; the main slot is never
touched) through a publication of its own for the rule tables with every operation, which tail drops on
exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Protocol

from psycopg import sql

from listener import install as setup
from listener.pg import conninfo
from listener.pg import pgoutput as po
from listener.pg.assembler import Assembler
from listener.pg.changes import Change, TxnCommit
from listener.pg.conninfo import connect_async
from listener.pg.publications import MAX_IDENTIFIER_BYTES
from listener.pg.replication import ReplicationSession
from listener.pg.types import TypeRegistry
from listener.rules.compile import RuleSet
from listener.rules.config import Config


class TailOutput(Protocol):
    """Where tail's changes go (the command writes them as JSON lines)."""

    def change(self, change: Change) -> None:
        """One change, as soon as it is decoded."""

    def flush(self) -> None:
        """The end of one read from the server."""

    def notice(self, text: str) -> None:
        """What tail says about itself: the publication it streams, then that it streams."""


def tail_names(config: Config) -> tuple[str, str]:
    """(publication, temporary slot) names for this tail process.

    The base names are shortened so the PID suffix always fits: PostgreSQL would otherwise truncate
    the name at 63 bytes, cutting the PID off, and two tails would share (and drop) one publication.
    """
    suffix = f"_tail_{os.getpid()}"
    keep = MAX_IDENTIFIER_BYTES - len(suffix)  # slot and publication names are ASCII (config checks)
    return f"{config.publication[:keep]}{suffix}", f"{config.slot[:keep]}{suffix}"


async def tail(
    config: Config,
    dsn: str,
    *,
    output: TailOutput,
    max_changes: int | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Give ``output`` the changes until ``stop`` is set or ``max_changes`` came; return how many came."""
    stop = stop or asyncio.Event()
    rules = RuleSet(config.rules)
    publication, slot = tail_names(config)
    with conninfo.connection(dsn) as conn:
        publications, borrowed = setup.tail_publications(conn, publication, config, rules)
    if borrowed is not None:
        output.notice(
            f"listener tail: no publication of its own ({borrowed}); streaming {', '.join(publications)}, "
            "which carry only the operations and rows the rules use"
        )
    printed = 0
    try:
        session = await ReplicationSession.connect(dsn, slot=slot)
        try:
            start = await session.create_slot(temporary=True)
            await session.start(publication=publications, start_lsn=start, messages=False)
            tables = ", ".join(f"{s}.{t}" for s, t in rules.tables) or "no tables"
            output.notice(f"listener tail: streaming changes of {tables} (Ctrl-C to stop)")
            decoder = po.Decoder(session.protocol_version)
            types = TypeRegistry()
            assembler = Assembler(types)
            catalog = await connect_async(dsn)
            async with catalog:
                while not stop.is_set() and (max_changes is None or printed < max_changes):
                    read = asyncio.create_task(session.read())
                    halt = asyncio.create_task(stop.wait())
                    await asyncio.wait({read, halt}, return_when=asyncio.FIRST_COMPLETED)
                    halt.cancel()
                    if not read.done():
                        read.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await read
                        break
                    for lsn, payload in read.result():
                        msg = decoder.decode(payload)
                        item = assembler.feed(lsn, msg)
                        if isinstance(msg, po.Relation):
                            unknown = types.unknown(c.type_oid for c in msg.columns)
                            if unknown:
                                await types.resolve(catalog, unknown)
                                assembler.relation(msg)
                        elif isinstance(item, Change):
                            output.change(item)
                            printed += 1
                        elif isinstance(item, TxnCommit):
                            session.confirm(item.end_lsn)
                        if max_changes is not None and printed >= max_changes:
                            break
                    output.flush()
        finally:
            await session.close()
    finally:
        if borrowed is None:
            with conninfo.connection(dsn) as conn:
                conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))
    return printed


async def tail_until_signal(config: Config, dsn: str, *, output: TailOutput, max_changes: int | None) -> int:
    """`listener tail`: :func:`tail` until ``max_changes`` came, SIGINT or SIGTERM."""
    from listener import service

    stop = asyncio.Event()
    remove = service.install_signal_handlers(stop)
    try:
        return await tail(config, dsn, output=output, max_changes=max_changes, stop=stop)
    finally:
        remove()
