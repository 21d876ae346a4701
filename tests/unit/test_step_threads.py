"""The threads of plain step functions (listener.runtime.workflow._Threads): reused while they are idle,
never bounded by the functions that hang, gone once idle long enough."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from listener.runtime.workflow import _Threads


def run_and_wait(threads: _Threads) -> int:
    """Run a job; return the ident of the thread that ran it."""
    ran: list[int] = []
    done = threading.Event()

    def record() -> None:
        ran.append(threading.get_ident())
        done.set()

    threads.run(record)
    assert done.wait(5)
    return ran[0]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_an_idle_thread_runs_the_next_function() -> None:
    threads = _Threads(idle_s=5)
    first = run_and_wait(threads)
    wait_for(lambda: threads._idle == 1)
    assert run_and_wait(threads) == first  # no new thread


def test_a_function_that_hangs_holds_only_its_own_thread() -> None:
    threads = _Threads(idle_s=5)
    release = threading.Event()
    hung: list[int] = []

    def hang() -> None:
        hung.append(threading.get_ident())
        release.wait()

    threads.run(hang)
    wait_for(lambda: bool(hung))
    try:
        others = {run_and_wait(threads) for _ in range(3)}
        assert hung[0] not in others
    finally:
        release.set()


def test_a_thread_idle_for_long_ends() -> None:
    threads = _Threads(idle_s=0.1)
    ident = run_and_wait(threads)
    wait_for(lambda: threads._idle == 1)
    wait_for(lambda: ident not in {t.ident for t in threading.enumerate()})
    assert threads._idle == 0
    run_and_wait(threads)  # a new thread runs the next one


def test_threads_are_daemons_so_a_hung_function_never_blocks_the_exit() -> None:
    threads = _Threads(idle_s=5)
    daemon: list[bool] = []
    done = threading.Event()

    def note() -> None:
        daemon.append(threading.current_thread().daemon)
        done.set()

    threads.run(note)
    assert done.wait(5) and daemon == [True]
