"""The chat command `agentplane up`'s banner shows runs where `up` runs: `uv run agentplane chat ...` only
with uv on PATH; `make chat ...` in the repository without it (where `make up` installed uv privately);
else this environment's own `agentplane`."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agentplane_platform.config import AgentConfig
from agentplane_runtime import Settings
from agentplane_runtime.local import local_settings
from agentplane_runtime.local_banner import banner
from agentplane_runtime.local_specs import load_specs
from agentplane_runtime.terminal import chat_command_line

REPO = Path(__file__).resolve().parents[2]
QUESTION = "How do I return an item?"
BASE = "http://127.0.0.1:8080"


@pytest.fixture(scope="module")
def agents() -> list[AgentConfig]:
    loaded = load_specs(REPO / "specs")
    assert loaded.ok, loaded.problems([REPO / "specs"])
    return loaded.agents


@pytest.fixture
def in_repository(monkeypatch: pytest.MonkeyPatch) -> Path:
    """`up` started in the repository from its `.venv`, as `make up` starts it."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "prefix", str(REPO / ".venv"))
    return REPO


def _path_with(tmp_path: Path, *, uv: bool) -> str:
    """A PATH of one directory, holding an executable `uv` or not."""
    directory = tmp_path / ("with-uv" if uv else "without-uv")
    directory.mkdir()
    if uv:
        fake = directory / "uv"
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return str(directory)


def _settings(state: str = ".agentplane") -> Settings:
    return local_settings(state=Path(state), host="127.0.0.1", port=8080)


def _try_it(text: str) -> str:
    """The banner's chat line: the first line after `Try it:`."""
    lines = text.splitlines()
    return lines[lines.index("Try it:") + 1].strip()


def test_with_uv_on_path_the_banner_shows_uv_run(
    in_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agents: list[AgentConfig]
) -> None:
    monkeypatch.setenv("PATH", _path_with(tmp_path, uv=True))
    keys = {config.tenant: "ap_x_y" for config in agents}
    first = agents[0]
    assert _try_it(banner(_settings(), agents, keys, BASE)) == (
        f"uv run agentplane chat {first.tenant}/{first.agent} '{QUESTION}'"
    )


def test_without_uv_on_path_the_banner_shows_make_chat_in_the_repository(
    in_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agents: list[AgentConfig]
) -> None:
    monkeypatch.setenv("PATH", _path_with(tmp_path, uv=False))
    keys = {config.tenant: "ap_x_y" for config in agents}
    first = agents[0]
    text = banner(_settings(), agents, keys, BASE)
    assert _try_it(text) == f"make chat AGENT={first.tenant}/{first.agent} Q='{QUESTION}'"
    assert "uv run" not in text


def test_elsewhere_without_uv_it_is_this_environments_agentplane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", _path_with(tmp_path, uv=False))
    monkeypatch.chdir(tmp_path)
    line = chat_command_line("acme/support-bot", QUESTION, base_url=BASE, state=Path(".agentplane"))
    program, *rest = shlex.split(line)
    assert Path(program).is_absolute()
    assert os.access(program, os.X_OK)
    assert rest == ["chat", "acme/support-bot", QUESTION] or rest == [
        "-m",
        "agentplane_platform",
        "chat",
        "acme/support-bot",
        QUESTION,
    ]


def test_a_port_or_state_of_its_own_is_passed_on(
    in_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = "http://127.0.0.1:9000", Path("/srv/my state")
    monkeypatch.setenv("PATH", _path_with(tmp_path, uv=True))
    assert chat_command_line("acme/support-bot", None, base_url=url, state=state) == (
        "uv run agentplane chat acme/support-bot --url http://127.0.0.1:9000 --state '/srv/my state'"
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    assert chat_command_line("acme/support-bot", None, base_url=url, state=state) == (
        "make chat AGENT=acme/support-bot CHAT_ARGS='--url http://127.0.0.1:9000 --state '\"'\"'/srv/my state'\"'\"''"
    )


def test_the_make_chat_line_runs_agentplane_chat_with_the_question_as_written(
    in_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The banner's `make chat` line, run by a shell in the repository, reaches `uv run agentplane
    chat` with each argument intact (a stand-in uv records them: no server is needed for that)."""
    system_path = os.environ["PATH"]
    monkeypatch.setenv("PATH", _path_with(tmp_path, uv=False))
    question = """What's "30 days" in $HOME's `terms`?"""
    line = chat_command_line(
        "acme/support-bot", question, base_url="http://127.0.0.1:9000", state=Path("/srv/my state")
    )
    assert line.startswith("make chat ")
    calls = tmp_path / "calls.jsonl"
    recorder = tmp_path / "uv"
    recorder.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(calls)!r}, 'a') as f: f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    recorder.chmod(recorder.stat().st_mode | stat.S_IXUSR)
    subprocess.run(
        ["bash", "-c", f"{line} UV={shlex.quote(str(recorder))}"],
        cwd=REPO,
        env={**os.environ, "PATH": system_path},  # make and bash; the stand-in is named by UV=
        check=True,
        capture_output=True,
        timeout=60,
    )
    recorded = [json.loads(call) for call in calls.read_text().splitlines()]
    assert recorded[-1] == [
        "run",
        "agentplane",
        "chat",
        "acme/support-bot",
        question,
        "--url",
        "http://127.0.0.1:9000",
        "--state",
        "/srv/my state",
    ]
