"""Admission sized to what a request really costs, tried as a new user would: a burst of concurrent
chats (half streamed), then chats one at a time, to `globex/oncall-helper` under `agentplane up`
with the example specs (20,000 tokens and 60 requests a minute). Each chat reserves its prompt as litellm counts it and the agent's
`maxTokens`, and gives back what its answer did not use, so the chats admit about what the quota
holds, and what they used stays within it.

Reserving 1 token per byte of prompt and of the largest context retrieval could add (the reservation
before) admitted 5 of 120 such chats (3,655 tokens used of 20,000); this one 26 (19,006 tokens).

How many chats of a burst are admitted depends on how many answers settle before the last is checked,
which is the machine's timing; so after the burst, chats go one at a time, each after the one before
has settled, until one is refused. What they admitted together does not depend on timing."""

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
CHATS = 30
"""Concurrent chats in the burst: more than the tokens hold. With the chats after it, within globex's
60 requests a minute, though a chat refused once its context is known (not at admission) counts one."""
MAX_TOKENS = 600
"""oncall-helper's `model.maxTokens` in the example specs."""
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


async def _burst_then_one_by_one(up: Up) -> tuple[list[tuple[int, int, str]], list[tuple[int, int, str]]]:
    """A burst of concurrent chats, then chats one at a time (each after the one before has
    settled) until one is refused."""
    async with httpx.AsyncClient(
        base_url=up.url("globex", "oncall-helper"),
        headers={"Authorization": f"Bearer {up.keys()['globex']}"},
        timeout=60,
        limits=httpx.Limits(max_connections=CHATS),
    ) as http:
        burst = await asyncio.gather(*(_chat(http, i % 2 == 0) for i in range(CHATS)))
        after: list[tuple[int, int, str]] = []
        while not after or after[-1][0] == 200:
            assert len(after) < 30, after
            after.append(await _chat(http, len(after) % 2 == 0))
    return list(burst), after


def test_a_burst_admits_what_the_tokens_per_minute_hold(up: Up) -> None:
    # the quota counts per clock minute: start early in one, so that every chat stays in it
    second = time.time() % 60
    if second > 20:
        time.sleep(60 - second + 0.5)
    minute = time.time() // 60
    burst, after = asyncio.run(_burst_then_one_by_one(up))
    assert time.time() // 60 == minute, "the chats took longer than the minute they started in"
    answered = [used for status, used, _ in burst + after if status == 200]
    refused = [code for status, _, code in burst + after if status != 200]
    assert set(refused) == {"tokens_per_minute"}  # refused for tokens, nothing else
    assert all(answered)  # every answer reported its usage
    assert sum(answered) <= TOKENS_PER_MINUTE  # no overshoot
    per_answer = max(answered)
    # the burst alone: each chat reserves at most its prompt and the agent's maxTokens, however many
    # answers settle before the last is checked (1 token a byte of prompt and context admitted 5)
    admitted = sum(status == 200 for status, _, _ in burst)
    assert admitted >= TOKENS_PER_MINUTE // (per_answer + MAX_TOKENS), (admitted, per_answer)
    # what an answer did not use goes back to the quota: once a chat after the burst is refused,
    # less than one reservation is left, so the chats admitted near what the quota holds
    holds = TOKENS_PER_MINUTE // per_answer
    assert len(answered) >= 0.85 * holds, (admitted, len(after), len(answered), holds, per_answer)
