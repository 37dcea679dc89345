"""The tests' own helpers: each is written once in `tests/support/`, and every wait has a time limit
and says what it waited for."""

from __future__ import annotations

import ast
import asyncio
import socket
import time
from pathlib import Path

import pytest
import uvicorn

from support.ports import free_port
from support.waiting import WaitTimeout, wait_for, wait_for_async, wait_until_serving

REPO = Path(__file__).resolve().parents[1]
TEST_CODE = (
    "tests",
    "loadtests",
    *(f"{m}/tests" for m in ("platform", "operator", "runtime", "infra", "dashboards")),
)
SHARED = {
    "free_port": "tests/support/ports.py",
    "wait_for": "tests/support/waiting.py",
}
COPIES = {
    "free_port": "free_port",
    "_free_port": "free_port",
    "wait_for": "wait_for",
    "_wait_for": "wait_for",
    "wait_until": "wait_for",
    "_wait_port": "wait_for",
}
"""Names the copies had, and the shared helper each one is."""


def _test_code() -> list[Path]:
    return sorted(path for folder in TEST_CODE for path in (REPO / folder).rglob("*.py"))


def test_each_helper_is_written_once() -> None:
    copies = []
    spec_fixtures = []
    for path in _test_code():
        where = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef):
                continue
            shared = COPIES.get(node.name)
            if shared is not None and SHARED[shared] != where:
                copies.append(f"{where}:{node.lineno} {node.name} (use support's {shared})")
            fixture = any("fixture" in ast.unparse(d) for d in node.decorator_list)
            if (
                fixture
                and "validate_paths" in ast.unparse(node)
                and where != "tests/support/example_specs.py"
            ):
                spec_fixtures.append(f"{where}:{node.lineno} {node.name} (use the `specs` fixture)")
    assert copies == []
    assert spec_fixtures == []


def test_free_port_is_free_on_the_address_asked_for() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # nothing holds it
    assert free_port("127.0.0.1") > 0


def test_wait_for_returns_what_the_probe_found() -> None:
    answers = iter([None, 0, "", "found"])
    assert wait_for("the third answer", lambda: next(answers), timeout=5, interval=0.01) == "found"


def test_a_wait_that_times_out_says_what_it_waited_for() -> None:
    began = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        wait_for("the moon to turn blue", lambda: [], timeout=0.3, interval=0.05, context=lambda: "sky: grey")
    assert 0.3 <= time.monotonic() - began < 2
    assert str(caught.value) == "timed out after 0.3s waiting for the moon to turn blue (last: [])\nsky: grey"


def test_a_probe_that_raises_ends_the_wait() -> None:
    def exited() -> bool:
        raise RuntimeError("the server exited")

    with pytest.raises(RuntimeError, match="the server exited"):
        wait_for("a server that exited", exited, timeout=30)


def test_a_wait_needs_a_time_limit() -> None:
    with pytest.raises(ValueError, match="positive timeout"):
        wait_for("forever", lambda: False, timeout=0)


@pytest.mark.asyncio
async def test_an_async_wait_times_out_too() -> None:
    async def never() -> bool:
        return False

    with pytest.raises(WaitTimeout, match="waiting for nothing"):
        await wait_for_async("nothing", never, timeout=0.2, interval=0.05)


@pytest.mark.asyncio
async def test_waiting_for_a_server_that_cannot_start_fails_instead_of_hanging() -> None:
    async def serve() -> None:  # what `server.serve()` does when it cannot bind, say
        await asyncio.sleep(0.05)
        raise OSError("address already in use")

    server = uvicorn.Server(uvicorn.Config("nowhere:app"))
    with pytest.raises(OSError, match="address already in use"):
        await wait_until_serving("a failing server", server, asyncio.create_task(serve()), timeout=20)


@pytest.mark.asyncio
async def test_waiting_for_a_server_that_never_starts_times_out() -> None:
    server = uvicorn.Server(uvicorn.Config("nowhere:app"))
    idle = asyncio.create_task(asyncio.sleep(30))
    try:
        with pytest.raises(WaitTimeout, match="waiting for a stuck server to start"):
            await wait_until_serving("a stuck server", server, idle, timeout=0.2)
    finally:
        idle.cancel()
