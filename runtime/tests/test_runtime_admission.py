"""Admission sized to what a request really costs, tried as a new user would: a burst of concurrent
chats (half streamed) to `globex/oncall-helper` under `agentplane up` with the example specs (20,000
tokens and 60 requests a minute). Each chat reserves its prompt as litellm counts it and the agent's
`maxTokens`, so the burst admits about what the quota holds, and what it used stays within it.

Reserving 1 token per byte of prompt and of the largest context retrieval could add (the reservation
before) admitted 5 of 120 such chats (3,655 tokens used of 20,000); this one 26 (19,006 tokens)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.agentplane_up import KEYWORDS_ONLY, Up, copy_specs, start

TOKENS_PER_MINUTE = 20_000
"""globex's `quotas.llm.tokensPerMinute` in the example specs."""
CHATS = 60
"""Within globex's 60 requests a minute: every refusal is about tokens."""
QUESTION = "The primary database is failing over: what do I check first?"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp: Path = tmp_path_factory.mktemp("admission")
    server = start(copy_specs(tmp), tmp / "state", tmp / "up.log", **KEYWORDS_ONLY)
    yield server
    if server.process.poll() is None:
        server.stop()


async def _chat(http: httpx.AsyncClient, stream: bool) -> tuple[int, int, str]:
    """(HTTP status, tokens the answer used, the error code of a refusal)."""
    body: dict[str, object] = {"model": "oncall-helper", "messages": [{"role": "user", "content": QUESTION}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    response = await http.post("/chat/completions", json=body)
    if response.status_code != 200:
        return response.status_code, 0, str(response.json()["error"]["code"])
    if not stream:
        return 200, int(response.json()["usage"]["total_tokens"]), ""
    used = 0
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            event = json.loads(line.removeprefix("data: "))
            assert "error" not in event, event
            if event.get("usage"):
                used = int(event["usage"]["total_tokens"])
    return 200, used, ""


async def _burst(up: Up) -> list[tuple[int, int, str]]:
    async with httpx.AsyncClient(
        base_url=up.url("globex", "oncall-helper"),
        headers={"Authorization": f"Bearer {up.keys()['globex']}"},
        timeout=60,
        limits=httpx.Limits(max_connections=CHATS),
    ) as http:
        return await asyncio.gather(*(_chat(http, i % 2 == 0) for i in range(CHATS)))


def test_a_burst_admits_what_the_tokens_per_minute_hold(up: Up) -> None:
    # the quota counts per clock minute: start the burst early in one, so that it stays in it
    second = time.time() % 60
    if second > 40:
        time.sleep(60 - second + 0.5)
    outcomes = asyncio.run(_burst(up))
    answered = [used for status, used, _ in outcomes if status == 200]
    refused = [code for status, _, code in outcomes if status != 200]
    assert set(refused) == {"tokens_per_minute"}  # the burst is refused for its tokens, nothing else
    assert all(answered)  # every answer reported its usage
    per_answer = max(answered)
    holds = TOKENS_PER_MINUTE // per_answer  # chats of this size the quota holds
    assert sum(answered) <= TOKENS_PER_MINUTE  # no overshoot
    # near what the quota holds (the reservation before admitted 5 of a minute's ~27)
    assert len(answered) >= 0.75 * holds, (len(answered), holds, per_answer)
