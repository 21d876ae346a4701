"""kill -9 `listener run` while it reads a queue that a producer keeps filling: every message becomes exactly
one event and one run, none lost, none twice, and the stored positions end at the last message
(listener.ingest.queues: the position commits with the events, the broker is acknowledged after)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.chaos.test_kill9 import start_listener
from tests.queue_buses import BROKERS, Bus, Sent, eventually, made_bus

Conn = psycopg.Connection[tuple[object, ...]]
ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 3000
CHUNK = 100  # messages published at once
PAUSE_S = 0.1  # between chunks: the producer goes on for about 3 s, through the kills
KILL_AT = (0.3, 0.65)  # kill -9 once this share of the messages has events
KAFKA_PARTITIONS = 3
WAIT_S = 60.0


@pytest.fixture(params=BROKERS)
async def bus(request: pytest.FixtureRequest, broker_name: str) -> AsyncIterator[Bus]:
    async with made_bus(request.param, request, broker_name, partitions=KAFKA_PARTITIONS) as made:
        yield made


def counts(sql: Conn) -> tuple[int, int, int]:
    """(events, distinct messages among them, runs) of the queue."""
    row = sql.execute(
        "SELECT count(*), count(DISTINCT payload->'message'->>'position'),"
        " (SELECT count(*) FROM listener.runs) FROM listener.events WHERE source = 'queue'"
    ).fetchone()
    assert row is not None
    return int(str(row[0])), int(str(row[1])), int(str(row[2]))


async def produce(bus: Bus) -> list[Sent]:
    sent: list[Sent] = []
    for first in range(0, MESSAGES, CHUNK):
        chunk = range(first, min(first + CHUNK, MESSAGES))
        key = (lambda n: str(n).encode()) if bus.keys else (lambda n: None)
        sent += await asyncio.gather(*(bus.send(json.dumps({"n": n}).encode(), key=key(n)) for n in chunk))
        await asyncio.sleep(PAUSE_S)
    return sent


async def test_kill9_while_reading_a_queue_loses_no_message_and_reads_none_twice(
    bus: Bus, dsn: str, sql: Conn, tmp_path: Path
) -> None:
    started = time.monotonic()
    config = tmp_path / "listener.yaml"
    queue = {"name": "jobs", **bus.entry(), "fetch": 200}
    rule = {"name": "r", "queue": "jobs", "workflow": "listener_examples.tickets:triage"}
    config.write_text(
        yaml.safe_dump({"slot": "chaos", "publication": "chaos", "queues": [queue], "rules": [rule]})
    )
    log = tmp_path / "listener.log"
    process = start_listener(dsn, config, log)
    producer = asyncio.create_task(produce(bus))
    kills = 0
    try:
        for share in KILL_AT:

            async def reached(share: float = share, process: subprocess.Popen[bytes] = process) -> bool:
                assert process.poll() is None, log.read_text()[-3000:]
                return counts(sql)[0] >= share * MESSAGES

            await eventually(reached, f"{share:.0%} of the messages", WAIT_S)
            os.kill(process.pid, signal.SIGKILL)
            assert process.wait(30) == -signal.SIGKILL
            kills += 1
            process = start_listener(dsn, config, log)
        sent = await producer
        last: dict[str, tuple[int, ...]] = {}
        for s in sent:
            last[s.part] = max(last.get(s.part, ()), s.position)
        by_part = {s.part: s for s in sent if s.position == last[s.part]}

        async def all_in() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            if counts(sql)[0] < MESSAGES:
                return False
            return all([await bus.acknowledged(s) for s in by_part.values()])

        await eventually(all_in, "every message stored and acknowledged", WAIT_S)
        await asyncio.sleep(0.5)  # anything read twice would show now
    finally:
        producer.cancel()
        if process.poll() is None:
            process.terminate()
            process.wait(30)
    assert kills == len(KILL_AT)
    assert counts(sql) == (MESSAGES, MESSAGES, MESSAGES)  # one event and one run per message
    numbers = sql.execute("SELECT (payload->'data'->>'n')::int FROM listener.events WHERE source = 'queue'")
    assert sorted(int(str(n)) for (n,) in numbers) == list(range(MESSAGES))
    keys = {str(k) for (k,) in sql.execute("SELECT idempotency_key FROM listener.events")}
    assert keys == {f"r/jobs/{s.label}/0" for s in sent}
    rows = sql.execute("SELECT part, position FROM listener.queue_positions WHERE queue = 'jobs'")
    assert {str(part): tuple(p) for part, p in rows} == last  # type: ignore[arg-type]
    assert sql.execute("SELECT count(*) FROM listener.queue_parked").fetchone() == (0,)
    # (a killed process's last lines may be lost with its stdout buffer: the survivor's is there)
    assert "listener run: leader of slot 'chaos'" in log.read_text()
    assert time.monotonic() - started < WAIT_S
