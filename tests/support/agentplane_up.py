"""`agentplane up` as a user runs it: a subprocess on a free port over a copy of the example specs,
talked to with the OpenAI SDK (no provider key in its environment, so the offline model answers).
Light on purpose: importing it does not load the runtime (litellm alone takes seconds)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from support.ports import free_port
from support.waiting import WaitTimeout, wait_for

REPO = Path(__file__).resolve().parents[2]
KEYWORDS_ONLY = {"AGENTPLANE_LOCAL_EMBEDDINGS": "false"}
"""Environment of a start that needs no dense vectors: loading the local model (torch) takes seconds."""
AGENTS = [
    ("acme", "billing-assistant"),
    ("acme", "legacy-support-bot"),
    ("acme", "support-bot"),
    ("globex", "oncall-helper"),
]


@dataclass
class Up:
    process: subprocess.Popen[str]
    port: int
    state: Path
    specs: Path
    log: Path
    clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, tenant: str, agent: str) -> str:
        return f"{self.base}/t/{tenant}/a/{agent}/v1"

    def keys(self) -> dict[str, str]:
        keys: dict[str, str] = json.loads((self.state / "api-keys.json").read_text())
        return keys

    def output(self) -> str:
        return self.log.read_text()

    def client(self, tenant: str, agent: str, key: str | None = None) -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=self.url(tenant, agent), api_key=key or self.keys()[tenant], max_retries=0
        )
        self.clients.append(client)
        return client

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 30) -> None:
        """`wait_for`, with what `agentplane up` printed in the failure."""
        wait_for(
            what, check, timeout, interval=0.1, context=lambda: f"agentplane up printed:\n{self.output()}"
        )

    def stop(self) -> int:
        for client in self.clients:
            client.close()
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)


def up_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AGENTPLANE_", "OPENAI_", "AZURE_", "OTEL_"))
    }
    env.update(HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def agentplane(*args: str) -> list[str]:
    """The command line of `agentplane ARGS...` as a user runs it, in this environment."""
    return [sys.executable, "-m", "agentplane_platform", *args]


def start(specs: Path, state: Path, log: Path, **env: str) -> Up:
    """Start `agentplane up` and wait until it is ready; `env` adds environment variables."""
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            agentplane("up", str(specs), "--port", str(port), "--state", str(state)),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=up_env(**env),
            text=True,
        )
    up = Up(process, port, state, specs, log)

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"agentplane up exited with {process.returncode}:\n{up.output()}")
        try:
            return httpx.get(f"{up.base}/healthz/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        up.wait("agentplane up to become ready", ready, timeout=120)
    except WaitTimeout:
        process.kill()
        raise
    return up


def copy_specs(tmp: Path) -> Path:
    specs = tmp / "specs"
    shutil.copytree(REPO / "specs", specs)
    return specs
