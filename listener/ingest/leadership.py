"""Leadership of the slot: any number of `listener run` replicas, exactly one of them streaming.

A slot has one reader.  Replicas of the service against one database campaign for it with a session-level
advisory lock of the state database, keyed on the state schema and the slot (:func:`lock_key`); the holder
is the leader.  The others stand by: they try the lock every ``LEADER_POLL_S`` (their workers and HTTP
endpoints serve meanwhile), and the first to get it once the leader's session ends -- it stopped, crashed,
or its host or network died -- takes over.

The lock alone is not enough: a leader whose lock connection died may not know it yet and still stream
and write.  So on election the new leader takes the slot's next **epoch** (``leaders``,
sql/0010_leaders.sql) and every checkpoint it writes carries it; the state database refuses a checkpoint
write of any other epoch, together with the events of its transaction (:class:`~listener.errors.Deposed`).
A deposed leader learns it at its next write at the latest; it also checks its lock connection every
``LEADER_CHECK_S`` and stands down when that fails for ``LEADER_CHECK_TIMEOUT_S``.  The server notices a
vanished host through TCP keepalives, set short on the lock's connection, and frees the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from listener.defaults import (
    LEADER_CHECK_S,
    LEADER_CHECK_TIMEOUT_S,
    LEADER_KEEPALIVE_S,
    LEADER_POLL_S,
)
from listener.logs import fields
from listener.pg.conninfo import SESSION_SETTINGS, asyncpg_params
from listener.queue import queries
from listener.supervise import describe, sleep_unless

logger = logging.getLogger(__name__)

_TRY_LEAD = queries.get("try_lead")
_ELECT = queries.get("elect")
_LEADER = queries.get("leader")


def lock_key(schema: str, slot: str) -> int:
    """The advisory lock of ``slot`` served from state schema ``schema`` (a non-negative int8; advisory
    locks are per database already)."""
    digest = hashlib.blake2b(f"listener leader {schema}.{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def identity() -> str:
    """How the other replicas name this one: host and PID."""
    return f"{socket.gethostname()} PID {os.getpid()}"


@dataclass
class Lease:
    """This replica leads the slot, as ``epoch``, until ``lost`` is set."""

    epoch: int
    lost: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Leader:
    """The slot's leader as the state database records it."""

    epoch: int
    holder: str
    since: datetime

    def describe(self) -> str:
        return f"{self.holder} (epoch {self.epoch}, since {self.since:%Y-%m-%d %H:%M:%S %Z})"


class Campaign:
    """One replica's candidacy for the slot: :meth:`lead` waits until it is the leader, :meth:`hold` keeps
    watching the lock's connection, :meth:`resign` frees the lock."""

    def __init__(self, dsn: str, *, schema: str, slot: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self.slot = slot
        self.key = lock_key(schema, slot)
        self.conn: asyncpg.Connection | None = None
        self.role = "starting"  # "leader", "standby"
        self.stood_by = False  # it was a standby: leading is a takeover
        # Says the first outcome (leader or standby, in words) instead of this module's own line, once:
        # the service's startup line (listener.service).
        self.announce: Callable[[str], None] | None = None

    async def _connect(self) -> asyncpg.Connection:
        # Server-side keepalives: a leader whose host vanished frees the lock within about
        # LEADER_KEEPALIVE_S * 4 (over TCP; a Unix socket closes with its process anyway).
        keepalive = str(int(LEADER_KEEPALIVE_S))
        settings = {
            **SESSION_SETTINGS,
            "search_path": self.schema,
            "tcp_keepalives_idle": keepalive,
            "tcp_keepalives_interval": keepalive,
            "tcp_keepalives_count": "3",
        }
        return await asyncpg.connect(**asyncpg_params(self.dsn, settings))

    async def lead(self, stop: asyncio.Event) -> Lease | None:
        """Wait until this replica holds the slot's lock, then take the next epoch: the lease (None when
        ``stop`` is set first).  A connection failure is raised (the caller retries transient ones)."""
        announced = False
        while not stop.is_set():
            try:
                if self.conn is None or self.conn.is_closed():
                    self.conn = await self._connect()
                held = await self.conn.fetchval(_TRY_LEAD, self.key)
                epoch = int(await self.conn.fetchval(_ELECT, self.slot, identity())) if held else 0
            except BaseException:
                self.role = "starting"  # not a healthy standby while it cannot reach the state database
                raise
            extra = fields(slot=self.slot, epoch=epoch or None)
            if held:
                if self.stood_by:
                    logger.warning(
                        "taking over slot %r as its leader (epoch %d)", self.slot, epoch, extra=extra
                    )
                elif not self._announced(f"leader of slot {self.slot!r} (epoch {epoch})"):
                    logger.info("leading slot %r (epoch %d)", self.slot, epoch, extra=extra)
                self.role = "leader"
                return Lease(epoch)
            if not announced:
                announced = True
                leader = await self.leader()
                text = (
                    f"standby for slot {self.slot!r}, streamed by another replica, "
                    f"{leader.describe() if leader is not None else '(not recorded yet)'}; this one takes "
                    "over when that one stops (its workers run meanwhile)"
                )
                if not self._announced(text):
                    logger.warning("%s", text, extra=extra)
            self.role, self.stood_by = "standby", True
            await sleep_unless(stop, LEADER_POLL_S)
        return None

    def _announced(self, text: str) -> bool:
        """Hand the first outcome to ``announce`` (True), or leave it to the caller to log (False)."""
        announce, self.announce = self.announce, None
        if announce is None:
            return False
        announce(text)
        return True

    async def leader(self) -> Leader | None:
        assert self.conn is not None
        row = await self.conn.fetchrow(_LEADER, self.slot)
        return Leader(int(row["epoch"]), str(row["holder"]), row["since"]) if row is not None else None

    async def hold(self, lease: Lease, stop: asyncio.Event) -> None:
        """Check the lock's connection every ``LEADER_CHECK_S`` until ``stop``; when it fails (closed, or
        no answer within ``LEADER_CHECK_TIMEOUT_S``) the lock may be someone else's: set ``lease.lost``."""
        conn = self.conn
        assert conn is not None
        while not stop.is_set():
            try:
                await conn.fetchval("SELECT 1", timeout=LEADER_CHECK_TIMEOUT_S)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning(
                    "lost the lock of slot %r (%s): standing down as its leader (epoch %d)",
                    self.slot,
                    describe(exc),
                    lease.epoch,
                    extra=fields(slot=self.slot, epoch=lease.epoch),
                )
                self.role = "starting"
                await self.close()
                lease.lost.set()
                return
            await sleep_unless(stop, LEADER_CHECK_S)

    async def resign(self) -> None:
        """Free the lock (a clean stop): a standby takes over at its next try, not after a timeout."""
        self.role = "starting"
        await self.close()

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            await asyncio.wait_for(conn.close(), LEADER_CHECK_TIMEOUT_S)
        if not conn.is_closed():
            conn.terminate()
