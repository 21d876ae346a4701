"""The connections of ``ctx.transaction()``: whatever a step's code leaves in its session is reset before
the connection serves another run, and after a commit that reset rides in the COMMIT's own message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import asyncpg
import pytest

from listener.pg.conninfo import asyncpg_params
from listener.runtime.workflow import StepConnection, reset_at_commit

if TYPE_CHECKING:
    from listener.runtime.workflow import StateConnection


@asynccontextmanager
async def one_connection_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        min_size=1, max_size=1, connection_class=StepConnection, **asyncpg_params(dsn, {})
    )
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


async def leave_state_behind(conn: StateConnection) -> None:
    await conn.execute("SET statement_timeout = '7s'")
    await conn.execute("SELECT pg_advisory_lock(4242)")
    await conn.execute("LISTEN step_channel")
    await conn.execute("DECLARE leftover CURSOR WITH HOLD FOR SELECT 1")


async def assert_clean(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT current_setting('statement_timeout') AS timeout,"
            " (SELECT count(*) FROM pg_locks"
            " WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks,"
            " (SELECT count(*) FROM pg_listening_channels()) AS channels,"
            " (SELECT count(*) FROM pg_cursors WHERE name = 'leftover') AS cursors"
        )
        assert row is not None
        assert dict(row) == {"timeout": "0", "locks": 0, "channels": 0, "cursors": 0}


@pytest.mark.parametrize("merged", [True, False])
async def test_a_committed_steps_session_is_reset_in_the_commits_message(dsn: str, merged: bool) -> None:
    sent: list[str] = []
    async with one_connection_pool(dsn) as pool:
        async with pool.acquire() as conn:
            reset = conn.get_reset_query()  # asyncpg's
            conn.add_query_logger(lambda logged: sent.append(logged.query))
            tx = conn.transaction()
            await tx.start()
            await leave_state_behind(conn)
            if merged:
                reset_at_commit(conn)
            await tx.commit()
        await asyncio.sleep(0.1)  # asyncpg calls query loggers soon after, not at once
        after_commit = sent[[q.startswith("COMMIT;") for q in sent].index(True) :]
        if merged:
            assert after_commit == [f"COMMIT;\n{reset}"]  # one message, nothing at the release
        else:
            assert after_commit == ["COMMIT;", reset]
        await assert_clean(pool)


async def test_a_failed_commit_still_resets_at_the_release(dsn: str) -> None:
    """A deferred constraint fails the COMMIT: the reset it carried never ran, so the release sends it."""
    async with one_connection_pool(dsn) as pool:
        async with pool.acquire() as conn:
            await conn.execute(
                "CREATE TEMP TABLE parent (id int PRIMARY KEY);"
                " CREATE TEMP TABLE child (parent int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)"
            )
            tx = conn.transaction()
            await tx.start()
            await leave_state_behind(conn)
            await conn.execute("INSERT INTO child VALUES (1)")
            reset_at_commit(conn)
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await tx.commit()
            await conn.execute("SET statement_timeout = '9s'")  # outside any transaction: kept until reset
            await conn.execute("SELECT pg_advisory_lock(4242)")
        await assert_clean(pool)
