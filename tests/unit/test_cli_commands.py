"""The `listener` group loads each command's module when the command is looked up: the table in
listener/cli/main.py names every command of every module, and `listener worker` starts without importing
what only other commands use."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import click

from listener.cli.main import COMMAND_MODULES, main

CLI_DIR = Path(__file__).resolve().parents[2] / "listener" / "cli"


def test_the_table_names_every_command_of_every_module() -> None:
    modules = sorted(path.stem for path in CLI_DIR.glob("*_commands.py"))
    assert sorted(set(COMMAND_MODULES.values())) == modules
    for module_name in modules:
        module = importlib.import_module(f"listener.cli.{module_name}")
        names = sorted(command.name or "" for command in module.COMMANDS)
        assert names == sorted(name for name, m in COMMAND_MODULES.items() if m == module_name), module_name


def test_every_command_is_found_and_takes_the_global_options_after_its_name() -> None:
    with click.Context(main) as ctx:
        for name in main.list_commands(ctx):
            command = main.get_command(ctx, name)
            assert command is not None and command.name == name
            assert any("--config" in param.opts for param in command.params), name
        assert main.get_command(ctx, "no-such-command") is None


def test_listener_worker_imports_neither_ingest_nor_the_installer() -> None:
    probe = (
        "import sys\n"
        "from listener.cli.main import main\n"
        "try:\n"
        "    main(['worker', '--help'], prog_name='listener')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('listener.ingest', 'listener.install', 'listener.cli.views')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_worker_http_that_is_not_host_and_port_is_refused_before_anything_starts() -> None:
    from click.testing import CliRunner

    for value in ("nonsense", "localhost:99999", "::1:9188", ""):
        result = CliRunner().invoke(main, ["worker", "--http", value])
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--http'" in result.output and "e.g. 127.0.0.1:9188" in result.output
