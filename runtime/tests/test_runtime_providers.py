"""The two ways a call reaches its provider: OpenAI and Azure OpenAI directly (one pooled client, the
parameters as litellm maps them), everything else through litellm. Both give the same `Delta`s for the
same answer; a failed call says what failed; an answer not read to its end gives its connection back."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiohttp import web
from runtime_support import make_config, serve, tenant_name

from agentplane_runtime import Settings
from agentplane_runtime.providers import (
    Answer,
    Call,
    Delta,
    DirectClient,
    ProviderError,
    _proxy_for_origin,
    open_litellm,
    provider_params,
    proxy_for,
)
from support.fake_llm import FakeLLM, error, reply, tool_calls
from support.ports import free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]

MESSAGES = [{"role": "user", "content": "hello"}]


def call(fake: FakeLLM, model: str, *, stream: bool, timeout: float = 5.0, base: str | None = None) -> Call:
    return Call(
        model=model,
        messages=MESSAGES,
        params={"max_tokens": 32, "temperature": 0.2},
        tools=None,
        stream=stream,
        timeout=timeout,
        credentials={"api_key": "sk-test", "api_base": base or fake.base_url},
    )


async def read(answer: Answer) -> list[Delta]:
    return [delta async for delta in answer]


def summary(deltas: list[Delta]) -> tuple[str, list[tuple[str, str]], str | None, tuple[int, int]]:
    """What a caller makes of an answer: its text, its tool calls, its finish reason, its usage."""
    text = "".join(d.content or "" for d in deltas)
    calls: dict[int, list[str]] = {}
    for d in deltas:
        for tc in d.tool_calls:
            slot = calls.setdefault(tc.index, ["", ""])
            slot[0] += tc.name or ""
            slot[1] += tc.arguments or ""
    finish = next((d.finish_reason for d in reversed(deltas) if d.finish_reason), None)
    usage = next(
        ((d.prompt_tokens or 0, d.completion_tokens or 0) for d in deltas if d.prompt_tokens), (0, 0)
    )
    return text, [(name, args) for name, args in (calls[i] for i in sorted(calls))], finish, usage


@pytest.mark.parametrize("stream", [False, True])
async def test_the_direct_path_and_litellm_give_the_same_answer(fake_llm: FakeLLM, stream: bool) -> None:
    direct = DirectClient()
    try:
        seen = []
        for path in ("direct", "litellm"):
            fake_llm.script("gpt-4o-mini", [tool_calls(("add", {"a": 1, "b": 2})), reply("one two three")])
            opened = []
            for _ in range(2):
                c = call(fake_llm, "openai/gpt-4o-mini", stream=stream)
                answer = await (direct.open(c) if path == "direct" else open_litellm(c))
                opened.append(summary(await read(answer)))
            seen.append(opened)
        assert seen[0] == seen[1]
        called, answered = seen[0]
        assert called[1] == [("add", '{"a": 1, "b": 2}')]
        assert called[2] == "tool_calls"
        assert answered[0] == "one two three"
        assert answered[2] == "stop"
        assert answered[3][1] > 0  # the usage came along, streamed or not
    finally:
        await direct.aclose()


async def test_litellm_decides_the_parameters_of_the_direct_path(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    """A reasoning model takes `max_completion_tokens` and refuses `temperature`: litellm's rules."""
    assert provider_params("openai/gpt-4o-mini", {"max_tokens": 9, "temperature": 0.3}) == {
        "max_tokens": 9,
        "temperature": 0.3,
    }
    config = make_config(tenant_name(), model="openai/o3-mini")
    async with serve(settings, config) as served, httpx.AsyncClient(base_url=served.base_url) as http:
        response = await http.post(
            "/chat/completions",
            json={"model": "x", "messages": MESSAGES, "max_tokens": 12, "temperature": 0.3},
            headers={"Authorization": f"Bearer {await served.key()}"},
        )
        assert response.status_code == 200, response.text
    (sent,) = fake_llm.chat_requests("o3-mini")
    assert sent.body["max_completion_tokens"] == 12
    assert "max_tokens" not in sent.body
    assert "temperature" not in sent.body


async def test_a_failed_call_says_what_failed(fake_llm: FakeLLM) -> None:
    direct = DirectClient()
    try:
        fake_llm.script("gpt-4o-mini", [error(429), error(400), error(503)])
        kinds = []
        for _ in range(3):
            with pytest.raises(ProviderError) as caught:
                await direct.open(call(fake_llm, "openai/gpt-4o-mini", stream=False))
            kinds.append((caught.value.kind, caught.value.retryable, caught.value.invalid_request))
        assert kinds == [("rate_limited", True, False), ("http_400", False, True), ("http_503", True, False)]
        closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
        with pytest.raises(ProviderError) as refused:
            await direct.open(call(fake_llm, "openai/gpt-4o-mini", stream=False, base=closed))
        assert (refused.value.kind, refused.value.retryable) == ("connection_error", True)
    finally:
        await direct.aclose()


async def test_an_abandoned_stream_gives_its_connection_back(fake_llm: FakeLLM) -> None:
    """With one connection in the pool, the next call can only be made if the stream let go of it."""
    direct = DirectClient(max_connections=1)
    fake_llm.chunk_delay_ms = 200
    try:
        # 40 words at 200 ms each: the stream would hold its connection for 8 s if it were not let go
        fake_llm.script("gpt-4o-mini", [reply(" ".join(["slow"] * 40))])
        answer = await direct.open(call(fake_llm, "openai/gpt-4o-mini", stream=True))
        first = await anext(answer)
        assert first.id
        await answer.aclose()
        # closed before its first chunk was read (a caller gone at once), or dropped unread
        for drop in (True, False):
            fake_llm.script("gpt-4o-mini", [reply(" ".join(["slow"] * 40))])
            unread = await asyncio.wait_for(direct.open(call(fake_llm, "openai/gpt-4o-mini", stream=True)), 5)
            if drop:
                del unread
            else:
                await unread.aclose()
        fake_llm.script("gpt-4o-mini", [reply("next")])  # plain: the chunk delay does not apply
        again = await asyncio.wait_for(
            direct.open(call(fake_llm, "openai/gpt-4o-mini", stream=False, timeout=2)), 5
        )
        assert summary(await read(again))[0] == "next"
    finally:
        await direct.aclose()


async def test_the_direct_path_takes_the_proxy_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.openai.azure.com")
    _proxy_for_origin.cache_clear()
    try:
        assert proxy_for("https://api.openai.com/v1/chat/completions") == "http://proxy.internal:3128"
        assert proxy_for("https://acme.openai.azure.com/openai/deployments/gpt-4o/chat/completions") is None
        assert proxy_for("http://localhost:8080/v1/chat/completions") is None
    finally:
        _proxy_for_origin.cache_clear()


async def test_a_provider_cookie_goes_to_no_later_call() -> None:
    """The direct path's pooled client is shared by every tenant: a cookie a provider sets on one
    answer (OpenAI's edge sets some) must not ride on the next call, which may be another tenant's."""
    seen: list[str | None] = []

    async def completions(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response(
            {
                "id": "c",
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
        response.set_cookie("__cf_bm", "tenant-a-session", path="/")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    direct = DirectClient()
    try:
        # a name, not an address: aiohttp's jar keeps no cookie of an address
        to = Call(
            model="openai/gpt-4o-mini",
            messages=MESSAGES,
            params={},
            tools=None,
            stream=False,
            timeout=5.0,
            credentials={"api_key": "sk-test", "api_base": f"http://localhost:{port}/v1"},
        )
        for _ in range(2):
            answer = await direct.open(to)
            assert summary(await read(answer))[0] == "hi"
        assert seen == [None, None]
    finally:
        await direct.aclose()
        await runner.cleanup()


async def test_a_call_through_a_proxy_goes_to_the_proxy(
    fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy is the fake provider itself, and the provider's own name resolves nowhere: an answer
    can only come through the proxy (plain, streamed, and a refusal read back)."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", fake_llm.base_url.removesuffix("/v1"))
    _proxy_for_origin.cache_clear()
    direct = DirectClient()
    unreachable = "http://llm.agentplane.invalid/v1"
    try:
        fake_llm.script("gpt-4o-mini", [reply("through the proxy"), reply("streamed through it"), error(429)])
        for stream in (False, True):
            answer = await direct.open(call(fake_llm, "openai/gpt-4o-mini", stream=stream, base=unreachable))
            assert summary(await read(answer))[0] == (
                "streamed through it" if stream else "through the proxy"
            )
        with pytest.raises(ProviderError) as refused:
            await direct.open(call(fake_llm, "openai/gpt-4o-mini", stream=False, base=unreachable))
        assert refused.value.kind == "rate_limited"
        assert "HTTP 429" in str(refused.value)
        assert len(fake_llm.chat_requests("gpt-4o-mini")) == 3
    finally:
        await direct.aclose()
        _proxy_for_origin.cache_clear()
