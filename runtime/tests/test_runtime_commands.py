"""The runtime's `agentplane up` and `agentplane chat`, registered as entry points of the platform's
CLI (`agentplane.commands`) rather than imported by it; and the runtime never imports that CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from agentplane_platform.commands import installed_commands
from agentplane_runtime.commands import CHAT, UP

RUNTIME_SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_runtime_registers_up_and_chat() -> None:
    commands, unavailable = installed_commands()
    assert unavailable == []
    by_name = {command.name: command for command in commands}
    assert by_name["up"] is UP
    assert by_name["chat"] is CHAT


def test_agentplane_help_lists_them_without_loading_the_server() -> None:
    script = (
        "import sys\n"
        "from agentplane_platform.cli import parser\n"
        "parser().print_help()\n"
        "print('loaded:', sorted(m for m in sys.modules if m.split('.')[0] in ('litellm', 'fastapi')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert "    up        serve every agent of the specs locally" in result.stdout
    assert "    chat      talk to an agent of `agentplane up`" in result.stdout
    assert "loaded: []" in result.stdout
    assert result.stderr == ""


def test_up_and_chat_take_the_arguments_they_always_took() -> None:
    from agentplane_platform.cli import parser

    up = parser().parse_args(["up", "tree", "--port", "9000", "--host", "0.0.0.0", "--no-watch"])
    assert (up.path, up.port, up.host, up.state, up.watch) == ("tree", 9000, "0.0.0.0", ".agentplane", False)
    assert up.run == UP.run
    chat = parser().parse_args(["chat", "acme/support-bot", "hi", "--url", "http://h:1", "--key", "k"])
    assert (chat.target, chat.question, chat.url, chat.state, chat.key) == (
        "acme/support-bot",
        "hi",
        "http://h:1",
        ".agentplane",
        "k",
    )
    assert chat.run == CHAT.run


def test_the_runtime_never_imports_the_platform_cli() -> None:
    """The CLI sits above every member: the runtime uses platform's library modules only."""
    offenders = []
    for path in sorted(RUNTIME_SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [
                f"{path.relative_to(RUNTIME_SRC)}: {name}"
                for name in names
                if name == "agentplane_platform.cli" or name.startswith("agentplane_platform.cli.")
            ]
    assert offenders == []
