"""What `listener run` passes its worker processes, and how it names their ends."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from listener.runtime import processes


def test_a_child_gets_no_dsn_or_config_on_its_command_line_only_in_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    command = processes.child_command(verbose=2, log_format="json")  # logs as its parent does
    assert command == [
        *(
            sys.executable,
            "-m",
            "listener",
            "-v",
            "-v",
            "--log-format",
            "json",
            "worker",
            "--stop-with-parent",
        )
    ]
    env = processes.child_environment("conf/listener.yaml", "host=a password=secret", "host=b")
    assert env["LISTENER_CONFIG"] == str(tmp_path / "conf" / "listener.yaml")  # absolute: cwd may differ
    assert (env["LISTENER_DSN"], env["LISTENER_STATE_DSN"]) == ("host=a password=secret", "host=b")


def test_exit_statuses_name_the_signal_or_the_code() -> None:
    assert processes.exit_status(-9) == "was killed by SIGKILL"
    assert processes.exit_status(-15) == "was killed by SIGTERM"
    assert processes.exit_status(-200) == "was killed by signal 200"
    assert processes.exit_status(3) == "exited with code 3"


def test_the_default_is_one_child_with_two_cores_or_more(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, expected in ((1, 0), (2, 1), (64, 1)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert processes.auto_count() == expected
