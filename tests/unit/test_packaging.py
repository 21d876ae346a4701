"""pyproject.toml lists listener's packages one by one (sql/ ships as listener.sql from the top level, which
setuptools' package discovery cannot map): a package missing from the list would be missing from the
wheel, and `pip install listener` would fail at its first import while the editable checkout works."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("listener", "listener_examples")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found - listed == set(), "packages missing from [tool.setuptools] packages in pyproject.toml"
    assert "listener.sql" in listed
