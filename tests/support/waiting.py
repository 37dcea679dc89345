"""Waiting for something to become true, always with a time limit, saying what was awaited when the
limit is reached. Every poll in the tests and their support code goes through here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import uvicorn

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A wait ran out of time (an assertion that did not come true in time)."""


def _timed_out(what: str, timeout: float, last: object, context: Callable[[], str] | None) -> WaitTimeout:
    message = f"timed out after {timeout:g}s waiting for {what}"
    if last is not None and not isinstance(last, bool):
        message += f" (last: {last!r})"
    if context is not None:
        message += f"\n{context()}"
    return WaitTimeout(message)


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 60.0,
    interval: float = 0.2,
    *,
    context: Callable[[], str] | None = None,
) -> T:
    """Call `probe` every `interval` seconds until it returns something truthy, and return that.

    After `timeout` seconds raise `WaitTimeout` naming `what`, with the probe's last answer and
    `context()` (a log tail, say). An exception from `probe` ends the wait: a probe that finds the
    awaited thing can never happen (a process exited) says so by raising."""
    if timeout <= 0:
        raise ValueError(f"a wait needs a positive timeout, not {timeout}")
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timed_out(what, timeout, last, context)
        time.sleep(min(interval, left))


def wait_for_http(url: str, timeout: float = 120.0) -> None:
    """Wait for `url` to answer a GET with anything but a server error (a process starting up)."""
    import httpx

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    wait_for(url, answers, timeout, interval=0.25)


async def wait_for_async(
    what: str,
    probe: Callable[[], Awaitable[T | None]],
    timeout: float = 60.0,
    interval: float = 0.2,
    *,
    context: Callable[[], str] | None = None,
) -> T:
    """`wait_for` in an event loop, for a coroutine function `probe`; the loop keeps running
    between probes."""
    if timeout <= 0:
        raise ValueError(f"a wait needs a positive timeout, not {timeout}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        last = await probe()
        if last:
            return last
        left = deadline - loop.time()
        if left <= 0:
            raise _timed_out(what, timeout, last, context)
        await asyncio.sleep(min(interval, left))


async def wait_until_serving(
    what: str, server: uvicorn.Server, task: asyncio.Task[None], timeout: float = 30.0
) -> None:
    """Wait for a uvicorn `server` whose `serve()` runs as `task` to accept connections; its own
    error if it stops during startup."""

    async def started() -> bool:
        if task.done():
            task.result()
            raise RuntimeError(f"{what} stopped during startup")
        return bool(server.started)

    await wait_for_async(f"{what} to start", started, timeout, interval=0.01)
