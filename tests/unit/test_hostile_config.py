"""Configuration files an attacker or an accident could write: each gets a ConfigError naming the line,
never a traceback, a RecursionError or unbounded memory; and user text never becomes terminal markup or
escape sequences."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from listener.cli.main import main
from listener.errors import ConfigError
from listener.rules.config import parse_config

RULE = "rules:\n  - name: r\n    table: t\n    on: [insert]\n    workflow: m:f\n"


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, filename="listener.yaml")
    return caught.value


def test_yaml_aliases_that_expand_without_limit_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    error = refused("\n".join(lines) + "\n" + RULE)  # a billion laughs: 10**9 values
    assert "aliases" in str(error) and error.line is not None and error.hint


def test_deep_nesting_is_refused_with_its_line() -> None:
    error = refused(RULE + "ingest: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nest" in str(error) and error.line == 6
    error = refused(RULE + "x:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 400)))
    assert "nest" in str(error) and error.line is not None


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x07", "\x9b"])
def test_control_characters_are_refused_with_their_line(char: str) -> None:
    error = refused(RULE + f"slot: a{char}b\n")
    assert error.line == 6 and "character" in str(error) and repr(char)[1:-1] in str(error)


@pytest.mark.parametrize(
    "when",
    ["(" * 3000 + "true" + ")" * 3000, "1" + " + 1" * 5000 + " > 0", " AND ".join(["true"] * 5000),
     "NOT " * 3000 + "true", "CASE WHEN " * 400 + "true" + " THEN true END" * 400],
)  # fmt: skip
def test_deep_when_expressions_never_raise_recursion_error(when: str) -> None:
    from listener.rules.predicate import ColumnType, PredicateError, compile_predicate

    try:
        predicate = compile_predicate(when, {"n": ColumnType("n", 23, "integer")})
    except PredicateError as exc:  # refused with a message, as PostgreSQL refuses what is too deep
        assert "deep" in str(exc) or "stack depth" in str(exc)
    else:
        from datetime import UTC, datetime

        assert predicate.evaluate({"n": b"1"}, None, datetime.now(UTC)) is True


def run_cli(tmp_path: Path, text: str, *args: str) -> str:
    config = tmp_path / "listener.yaml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["-c", str(config), "--dsn", "postgresql://nowhere.invalid/x", *args])
    assert result.exit_code == 2, result.output
    return result.output


def test_error_messages_are_never_read_as_markup(tmp_path: Path) -> None:
    output = run_cli(tmp_path, RULE.replace("[insert]", "[sometimes]"), "check")
    assert "e.g. on: [insert, update]" in output
    output = run_cli(tmp_path, RULE.replace("name: r", "name: '[/bold]x'"), "check")
    assert "'[/bold]x' is not a valid rule name" in output


def test_database_text_reaches_the_terminal_without_control_characters() -> None:
    import io
    from datetime import UTC, datetime

    from rich.console import Console

    from listener.cli.render import printable
    from listener.cli.views import print_runs
    from listener.ops.runs import RunRow

    assert printable("a\x1b[2Jb\x07\x00\x9b\n\tc") == "a\\x1b[2Jb\\x07\\x00\\x9b\n\tc"
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)  # a terminal: rich writes its own ANSI
    hostile = "\x1b]0;owned\x07\x1b[2J[/bold]x"
    row = RunRow(
        "run-1", hostile, 0, "r", hostile, "failed", 1, 1, datetime.now(UTC), None, None, None, hostile
    )
    print_runs(console, [row], limit=10)
    text = out.getvalue()
    assert "\\x1b]0;owned\\x07" in text and "[/bold]x" in text
    assert "\x1b]" not in text and "\x07" not in text and "\x1b[2J" not in text
