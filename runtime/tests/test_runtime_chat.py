"""Chat completions through the OpenAI SDK, against a runtime served over HTTP and the fake upstream."""

from __future__ import annotations

import httpx
import openai
import pytest
from runtime_support import make_config, serve, tenant_name

from agentplane_runtime import Settings
from support.fake_llm import FakeLLM, reply

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]


async def test_chat_completion_through_the_openai_sdk(settings: Settings, fake_llm: FakeLLM) -> None:
    tenant = tenant_name()
    async with serve(settings, make_config(tenant)) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url)
        models = await client.models.list()
        assert [m.id for m in models.data] == ["helper"]
        completion = await client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "What is agentplane?"}]
        )
        assert completion.choices[0].message.content == "Fake answer to: What is agentplane?"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.model == "openai/gpt-4o-mini"
        assert completion.usage is not None
        assert completion.usage.prompt_tokens > 0
        assert (
            completion.usage.total_tokens
            == completion.usage.prompt_tokens + completion.usage.completion_tokens
        )
        # the upstream got the rendered system prompt, the caller's message and the agent's parameters
        (upstream,) = fake_llm.chat_requests("gpt-4o-mini")
        messages = upstream.body["messages"]
        assert messages[0] == {"role": "system", "content": f"You are helper of {tenant}. Be brief."}
        assert messages[1] == {"role": "user", "content": "What is agentplane?"}
        assert upstream.body["temperature"] == 0.2
        assert upstream.headers["authorization"] == "Bearer sk-test"
        await client.close()


async def test_streaming_with_usage(settings: Settings, fake_llm: FakeLLM) -> None:
    async with serve(settings, make_config(tenant_name())) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url)
        fake_llm.script("gpt-4o-mini", [reply("one two three four", prompt_tokens=11, completion_tokens=4)])
        stream = await client.chat.completions.create(
            model="helper",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        finish = None
        usage = None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        assert "".join(pieces) == "one two three four"
        assert len([p for p in pieces if p]) == 4  # streamed word by word, not buffered
        assert finish == "stop"
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 4, 15)
        await client.close()


async def test_azure_primary_and_request_id_echo(settings: Settings, fake_llm: FakeLLM) -> None:
    async with serve(settings, make_config(tenant_name(), model="azure/gpt-4o")) as served:
        key = await served.key()
        async with httpx.AsyncClient(base_url=served.base_url) as http:
            response = await http.post(
                "/chat/completions",
                json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {key}", "X-Request-ID": "req-42"},
            )
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == "req-42"
        assert response.json()["id"] == "chatcmpl-req-42"
        assert response.headers["x-agentplane-model"] == "azure/gpt-4o"
        (upstream,) = fake_llm.chat_requests("gpt-4o")
        assert upstream.path == "/openai/deployments/gpt-4o/chat/completions"
        assert upstream.headers["api-key"] == "az-test"


async def test_errors_are_openai_shaped_with_the_request_id(settings: Settings) -> None:
    async with serve(settings, make_config(tenant_name())) as served:
        client = openai.AsyncOpenAI(
            api_key="ap_0000000000000000_nope", base_url=served.base_url, max_retries=0
        )
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="helper", messages=[{"role": "user", "content": "hi"}])
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["type"] == "authentication_error"
        assert body["request_id"] == caught.value.response.headers["x-request-id"]
        assert "Traceback" not in caught.value.response.text
        good = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        with pytest.raises(openai.BadRequestError) as bad:
            await good.chat.completions.create(model="helper", messages=[])
        assert "messages" in str(bad.value.message)
        await client.close()
        await good.close()
