"""Two `listener run` replicas with an ``every: 1s`` schedule, killed with SIGKILL again and again (one at a
time, and both at once): every tick from the first to the last has exactly one event, one run and one
effect; the ticks missed while both were down are made up (``catchup:``)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

from tests.runtime_support import EFFECTS_DDL
from tests.support import ROOT, cli, write_config

Conn = psycopg.Connection[tuple[object, ...]]
SCHEDULE = {
    "name": "beat",
    "every": "1s",
    "workflow": "tests.sample_workflows:two_steps",
    "overlap": "allow",
    "catchup": "1m",
}
ROUNDS = 8
WAIT_S = 60.0


def start(path: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        command = [sys.executable, "-m", "listener", "run", "-c", str(path)]
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(WAIT_S) == -signal.SIGKILL


def test_replicas_killed_again_and_again_make_one_run_per_tick(sql: Conn, tmp_path: Path) -> None:
    sql.execute(EFFECTS_DDL)
    env = {**os.environ, "LISTENER_DSN": sql.info.dsn, "PYTHONPATH": str(ROOT)}
    paths = []
    for slot in ("replica_a", "replica_b"):
        path = tmp_path / f"{slot}.yaml"
        write_config(path, [], slot=slot, publication=slot, schedules=[SCHEDULE])
        paths.append(path)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    replicas = [start(p, env, log) for p, log in zip(paths, logs, strict=True)]
    rng = random.Random(9)
    deadline = time.monotonic() + WAIT_S
    while sql.execute("SELECT count(*) FROM listener.events").fetchone() == (0,):
        assert time.monotonic() < deadline, logs[0].read_text() + logs[1].read_text()
        time.sleep(0.1)
    both_down = 0
    for round_ in range(ROUNDS):
        time.sleep(rng.uniform(1.0, 2.5))
        if round_ % 3 == 2:  # both at once: the ticks meanwhile are made up by the first one back
            for process in replicas:
                kill(process)
            time.sleep(rng.uniform(1.5, 3.0))
            both_down += 1
            replicas = [start(p, env, log) for p, log in zip(paths, logs, strict=True)]
        else:
            victim = rng.randrange(2)
            kill(replicas[victim])
            time.sleep(rng.uniform(0.2, 1.0))
            replicas[victim] = start(paths[victim], env, logs[victim])
    time.sleep(3)  # the last restart makes up what it missed
    paused = cli(sql.info.dsn, paths[0], "schedules", "pause", "beat")  # no tick after the count
    assert paused.exit_code == 0, paused.output
    time.sleep(1.5)  # a tick that was firing is committed
    ticks = [
        datetime.fromisoformat(str(tick))
        for (tick,) in sql.execute(
            "SELECT payload->'data'->>'tick' FROM listener.events WHERE source = 'schedule' ORDER BY 1"
        ).fetchall()
    ]
    assert both_down and len(ticks) >= 10
    assert len(set(ticks)) == len(ticks)
    missing = sorted(set(ticks[0] + timedelta(seconds=n) for n in range(len(ticks))) - set(ticks))
    assert ticks == [ticks[0] + timedelta(seconds=n) for n in range(len(ticks))], f"missing ticks {missing}"
    deadline = time.monotonic() + WAIT_S
    while sql.execute("SELECT count(*) FROM listener.runs WHERE status <> 'done'").fetchone() != (0,):
        assert time.monotonic() < deadline, "the runs did not finish"
        time.sleep(0.2)
    for process in replicas:
        process.terminate()
        assert process.wait(WAIT_S) == 0
    runs = sql.execute("SELECT count(*), count(DISTINCT event_key) FROM listener.runs").fetchone()
    assert runs == (len(ticks), len(ticks))
    effects = sql.execute("SELECT count(*), count(DISTINCT run_id) FROM public.effects").fetchone()
    assert effects == (len(ticks), len(ticks))  # each tick's workflow took effect once
