"""`listener demo`: the newcomer's first command shows every sample change running its workflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_every_workflow(dsn: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "listener", "--dsn", dsn, "demo", "--rows", "6"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert "6 of 6 changes ran their workflow" in proc.stdout
    assert "welcome email drafted for user0@example.com" in proc.stdout
    assert "ticket #1 priority normal -> urgent" in proc.stdout
