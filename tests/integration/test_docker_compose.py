"""`docker compose up` from a fresh clone (issue 10.2), as far as it can be tested without a Docker engine:
the compose file parses and names only files that exist, the image's Dockerfile copies what exists, and
what the listener container runs (the example rules over the demo schema the postgres container creates)
works when run directly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def with_defaults(text: str) -> str:
    """``${VAR:-default}`` as Docker Compose reads it with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def host_sources(service: dict[str, Any]) -> list[Path]:
    sources = []
    for volume in service.get("volumes", []):
        source = with_defaults(volume).split(":", 1)[0]
        if source.startswith("."):  # a bind mount (named volumes have no path)
            sources.append(ROOT / source)
    return sources


def test_the_compose_file_names_only_files_that_exist() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"postgres", "listener"}
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        assert "healthcheck" in service, name
        for source in host_sources(service):
            assert source.exists(), f"{name} mounts {source}, which a fresh clone lacks"
    for volume in services["postgres"]["volumes"]:
        if not volume.startswith("."):
            assert volume.split(":", 1)[0] in doc["volumes"]
    postgres = services["postgres"]
    assert "wal_level=logical" in postgres["command"]
    assert all(with_defaults(p).startswith("127.0.0.1:") for p in postgres["ports"])  # no clash on 5432
    assert any(v.endswith("/docker-entrypoint-initdb.d/10-demo.sql:ro") for v in postgres["volumes"])
    listener = services["listener"]
    assert listener["depends_on"]["postgres"]["condition"] == "service_healthy"
    config_dir = host_sources(listener)[0]
    config_file = with_defaults(listener["environment"]["LISTENER_CONFIG"]).removeprefix("/config/")
    assert (config_dir / config_file).is_file()
    assert (ROOT / listener["build"] / "Dockerfile").is_file()


def test_the_dockerfile_copies_what_exists() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert 'ENTRYPOINT ["listener"]' in lines


def test_what_the_listener_container_runs_works_directly(tmp_path: Path, dsn: str, sql: Any) -> None:
    """The postgres container's init script makes the demo schema; the listener container checks and
    runs the mounted config, its workflows imported from the installed package, from /config."""
    listener = compose()["services"]["listener"]
    sql.execute((ROOT / "listener_examples" / "demo.sql").read_text().encode())
    config_dir = host_sources(listener)[0]
    config = config_dir / with_defaults(listener["environment"]["LISTENER_CONFIG"]).removeprefix("/config/")
    workdir = tmp_path / "config"  # the image's WORKDIR, not the repository
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(LISTENER_DSN=dsn, LISTENER_CONFIG=str(config))
    run = [sys.executable, "-m", "listener"]
    check = subprocess.run([*run, "check"], capture_output=True, text=True, timeout=120, cwd=workdir, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "✓ workflows: 3 rule(s) import" in check.stdout
    init = subprocess.run([*run, "init"], capture_output=True, text=True, timeout=120, cwd=workdir, env=env)
    assert init.returncode == 0, init.stderr
    with psycopg.connect(dsn) as conn:  # the demo's own state schema
        assert conn.execute("SELECT to_regnamespace('listener_demo') IS NOT NULL").fetchone() == (True,)
    status = subprocess.run(  # the healthcheck's command
        [*run, *listener["healthcheck"]["test"][2:]],  # ["CMD", "listener", ...]
        capture_output=True,
        text=True,
        timeout=120,
        cwd=workdir,
        env=env,
    )
    assert status.returncode == 0, status.stderr
