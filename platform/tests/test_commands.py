"""The plugin seam of the `agentplane` CLI: commands other packages register under the entry-point
group `agentplane.commands` (the runtime's `up` and `chat`), found without platform importing them."""

from __future__ import annotations

import argparse
import ast
import io
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import TextIO

import pytest

from agentplane_platform.cli import run
from agentplane_platform.commands import ENTRY_POINT_GROUP, Command, load_commands

PLATFORM_SRC = Path(__file__).resolve().parents[1] / "src"


class Echo:
    """A plugin command that reports what it was given."""

    help = "say the arguments back"

    def __init__(self, name: str = "echo") -> None:
        self.name = name
        self.seen: list[argparse.Namespace] = []

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("words", nargs="*")
        parser.add_argument("--loud", action="store_true")

    def run(self, args: argparse.Namespace, out: TextIO) -> int:
        self.seen.append(args)
        text = " ".join(args.words)
        out.write((text.upper() if args.loud else text) + "\n")
        return 3


ECHO = Echo()


def _help(plugins: list[Command], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        run(["--help"], plugins=plugins)
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [["up"], ["up", "specs", "--port", "9000"], ["chat", "acme/bot", "hi", "-h"]]
)
def test_without_the_runtime_up_and_chat_say_what_to_install(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(argv, plugins=[]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        "error: this command needs the agent runtime (agentplane-runtime); "
        "install it with `uv sync --all-packages` (or `make install`)\n"
    )
    assert captured.out == ""


def test_help_lists_up_and_chat_whether_or_not_the_runtime_is_installed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = _help([], capsys)
    assert "up        (not installed: needs agentplane-runtime)" in missing
    assert "chat      (not installed: needs agentplane-runtime)" in missing
    provided = _help([Echo("chat"), Echo("up")], capsys)
    assert "up        say the arguments back" in provided
    assert "chat      say the arguments back" in provided
    assert provided.index("    up ") < provided.index("    chat ")  # as before: up, then chat


def test_a_plugin_command_parses_its_own_arguments_and_returns_its_exit_code() -> None:
    echo = Echo()
    out = io.StringIO()
    assert run(["echo", "--loud", "hello", "there"], out=out, plugins=[echo]) == 3
    assert out.getvalue() == "HELLO THERE\n"
    assert [args.words for args in echo.seen] == [["hello", "there"]]


def test_a_plugin_cannot_take_a_builtin_command(capsys: pytest.CaptureFixture[str]) -> None:
    impostor = Echo("validate")
    assert run(["validate", "--no-policies", str(PLATFORM_SRC / "missing")], plugins=[impostor]) == 1
    assert impostor.seen == []
    assert "ignoring the plugin command 'validate': the name is taken" in capsys.readouterr().err


def test_entry_points_that_do_not_load_are_reported_not_fatal() -> None:
    found = [
        EntryPoint("echo", f"{__name__}:ECHO", ENTRY_POINT_GROUP),
        EntryPoint("gone", "agentplane_no_such_package.commands:GONE", ENTRY_POINT_GROUP),
        EntryPoint("odd", "json:dumps", ENTRY_POINT_GROUP),
    ]
    commands, unavailable = load_commands(found)
    assert commands == [ECHO]
    assert [u.entry_point for u in unavailable] == [
        "gone = agentplane_no_such_package.commands:GONE",
        "odd = json:dumps",
    ]
    assert unavailable[0].reason.startswith(
        "ModuleNotFoundError: No module named 'agentplane_no_such_package'"
    )
    assert unavailable[1].reason == "not an agentplane command (needs name, help, add_arguments, run)"


def test_platform_never_names_a_module_of_the_runtime() -> None:
    """Dependencies point one way: platform below the runtime. Also no `importlib` by name."""
    offenders = []
    for path in sorted(PLATFORM_SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value] if node.value.startswith("agentplane_runtime") else []
            offenders += [
                f"{path.relative_to(PLATFORM_SRC)}: {n}" for n in names if n.startswith("agentplane_runtime")
            ]
    assert offenders == []
