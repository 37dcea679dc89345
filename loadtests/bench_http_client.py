"""CPU of one direct LLM call in the runtime's client, `agentplane_runtime.http1`, beside aiohttp (the
client it replaced, still the one for calls through a proxy): the same plain chat request to the
fake upstream (tests/support/fake_llm.py, its own process), one call at a time, rounds alternating
which client goes first. Only this process's CPU is counted, so the upstream's is not.

    uv run python loadtests/bench_http_client.py [--calls 1000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import median

import aiohttp
import uvloop

from agentplane_runtime.http1 import Http1Pool, target_of

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.ports import free_port  # noqa: E402
from support.waiting import wait_for_http  # noqa: E402

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}],"max_tokens":16}'
HEADERS = {"content-type": "application/json", "accept": "application/json", "authorization": "Bearer sk"}


async def measure(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    pool = Http1Pool()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200, limit_per_host=0),
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_read=30)

    async def http1() -> bytes:  # as `providers.DirectClient` calls it
        response = await pool.post(target_of(url), HEADERS, BODY, connect_timeout=30, read_timeout=30)
        return await response.read()

    async def aiohttp_call() -> bytes:  # as `DirectClient` called it before `http1`
        response = await session.post(url, params={}, headers=HEADERS, data=BODY, timeout=timeout, proxy=None)
        try:
            return await response.read()
        finally:
            response.release()

    clients: dict[str, Callable[[], Awaitable[bytes]]] = {"http1": http1, "aiohttp": aiohttp_call}
    micros: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for call in clients.values():  # warm: connections, caches
            for _ in range(200):
                assert b"choices" in await call()
        for round_ in range(rounds):
            order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
            for name in order:
                started = time.process_time()
                for _ in range(calls):
                    await clients[name]()
                micros[name].append((time.process_time() - started) / calls * 1e6)
    finally:
        await session.close()
        await pool.aclose()
    return micros


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000, help="calls per client per round")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "support.fake_llm", "--port", str(port), "--no-record"],
        env={**os.environ, "PYTHONPATH": str(REPO / "tests")},
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wait_for_http(f"http://127.0.0.1:{port}/v1/models", timeout=60)
        micros = uvloop.run(measure(url, args.calls, args.rounds))
    finally:
        upstream.terminate()
        upstream.wait()
    base = median(micros["aiohttp"])
    for name, values in micros.items():
        print(
            f"{name:8} {median(values):6.0f} µs of CPU a call (median of {len(values)} rounds, "
            f"{min(values):.0f} to {max(values):.0f}); {median(values) / base:.2f}x aiohttp's"
        )


if __name__ == "__main__":
    main()
