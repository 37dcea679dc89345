"""Fallbacks, retries and the circuit breaker, against the fake upstream over HTTP."""

from __future__ import annotations

import openai
import pytest
from pydantic import SecretStr
from runtime_support import make_config, serve, tenant_name

from agentplane_runtime import Settings
from agentplane_runtime.llm import CircuitBreaker, CircuitState
from agentplane_runtime.retrieval import LiteLLMEmbedder
from support.fake_llm import FakeLLM, error, hang, reply

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


async def test_fallback_when_the_primary_returns_500(settings: Settings, fake_llm: FakeLLM) -> None:
    config = make_config(tenant_name(), model="openai/primary-model", fallbacks=["openai/gpt-4o-mini"])
    async with serve(settings, config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script("primary-model", [error(500), error(503)])
        completion = await client.chat.completions.create(model="helper", messages=MESSAGES)
        assert completion.model == "openai/gpt-4o-mini"
        # the primary was tried twice (one retry for a retryable error), then the fallback answered
        assert len(fake_llm.chat_requests("primary-model")) == 2
        assert len(fake_llm.chat_requests("gpt-4o-mini")) == 1
        await client.close()


async def test_an_embedding_call_leaves_chat_attempts_without_hidden_retries(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    """Each runtime attempt is one provider call, with no retry of a client library's inside it, also
    after an embedding call of the same provider (litellm's Azure SDK client, which retries by default,
    is shared between embeddings and its chat path; chat now goes out directly)."""
    azure = settings.model_copy(
        update={
            "azure_api_key": SecretStr("az-test"),
            "azure_api_base": fake_llm.root_url,
            "azure_api_version": "2024-10-21",
        }
    )
    config = make_config(tenant_name(), model="azure/retry-probe")
    async with serve(azure, config) as served:
        credentials = {"api_key": "az-test", "api_base": fake_llm.root_url, "api_version": "2024-10-21"}
        await LiteLLMEmbedder(lambda model: credentials).embed("azure/text-embedding-3-small", 1536, ["x"])
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script("retry-probe", [error(503)])
        completion = await client.chat.completions.create(model="helper", messages=MESSAGES)
        assert completion.choices[0].message.content == "Fake answer to: hello"
        calls = [r for r in fake_llm.requests if "/deployments/retry-probe/" in r.path]
        # the runtime's 2 attempts (one retry here): a failure, then the answer; no hidden retry between
        assert len(calls) == 2
        await client.close()


async def test_fallback_when_the_primary_times_out(settings: Settings, fake_llm: FakeLLM) -> None:
    quick = settings.model_copy(update={"llm_timeout_seconds": 0.5, "llm_retries": 0})
    config = make_config(tenant_name(), model="openai/slow-model", fallbacks=["openai/gpt-4o-mini"])
    async with serve(quick, config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script("slow-model", [hang(30)])
        stream = await client.chat.completions.create(model="helper", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Fake answer to: hello"
        assert len(fake_llm.chat_requests("slow-model")) == 1
        await client.close()


async def test_a_client_error_is_not_retried_nor_sent_to_a_fallback(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    config = make_config(tenant_name(), model="openai/primary-model", fallbacks=["openai/gpt-4o-mini"])
    async with serve(settings, config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script("primary-model", [error(400)])
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="helper", messages=MESSAGES)
        assert len(fake_llm.chat_requests("primary-model")) == 1
        assert fake_llm.chat_requests("gpt-4o-mini") == []
        await client.close()


async def test_every_model_failing_is_a_502(settings: Settings, fake_llm: FakeLLM) -> None:
    config = make_config(tenant_name(), model="openai/a-model", fallbacks=["openai/b-model"])
    async with serve(settings, config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script("a-model", [error(500)] * 2)
        fake_llm.script("b-model", [error(502)] * 2)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="helper", messages=MESSAGES)
        assert caught.value.status_code == 502
        assert caught.value.body["type"] == "upstream_error"  # type: ignore[index]
        await client.close()


async def test_the_circuit_opens_skips_the_model_and_closes_after_a_probe(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    tuned = settings.model_copy(
        update={
            "breaker_failures": 3,
            "breaker_window_seconds": 30,
            "breaker_open_seconds": 0.5,
            "llm_retries": 0,
        }
    )
    config = make_config(tenant_name(), model="openai/flaky-model", fallbacks=["openai/gpt-4o-mini"])
    async with serve(tuned, config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script("flaky-model", [error(500)] * 3)
        for _ in range(3):
            await client.chat.completions.create(model="helper", messages=MESSAGES)
        assert len(fake_llm.chat_requests("flaky-model")) == 3
        breaker = served.runtime.llm.breaker("openai/flaky-model")
        assert state_of(breaker) is CircuitState.OPEN
        # open: the primary is not called at all
        completion = await client.chat.completions.create(model="helper", messages=MESSAGES)
        assert completion.model == "openai/gpt-4o-mini"
        assert len(fake_llm.chat_requests("flaky-model")) == 3
        metrics = await served_metrics(served.url)
        assert 'agentplane_circuit_state{model="openai/flaky-model"} 2.0' in metrics
        # after the open period one probe goes through; it succeeds and closes the circuit
        import asyncio

        await asyncio.sleep(0.6)
        completion = await client.chat.completions.create(model="helper", messages=MESSAGES)
        assert completion.model == "openai/flaky-model"
        assert state_of(breaker) is CircuitState.CLOSED
        await client.close()


def state_of(breaker: CircuitBreaker) -> CircuitState:
    """The state, read through a call (mypy would otherwise narrow the attribute across calls)."""
    return breaker.state


async def served_metrics(url: str) -> str:
    import httpx

    async with httpx.AsyncClient() as http:
        return (await http.get(f"{url}/metrics")).text


async def test_breaker_half_open_failure_reopens_and_admits_one_probe() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, window=10, open_seconds=5, clock=lambda: now[0])
    breaker.failure()
    now[0] = 11  # the first failure left the window
    breaker.failure()
    assert state_of(breaker) is CircuitState.CLOSED
    breaker.failure()
    assert state_of(breaker) is CircuitState.OPEN
    assert not breaker.allow()
    now[0] = 16.5
    assert breaker.allow()  # the probe
    assert state_of(breaker) is CircuitState.HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.failure()
    assert state_of(breaker) is CircuitState.OPEN
    assert not breaker.allow()
    now[0] = 22
    assert breaker.allow()
    breaker.success()
    assert state_of(breaker) is CircuitState.CLOSED
    assert breaker.allow()


async def test_all_circuits_open_is_a_503_with_retry_after(settings: Settings, fake_llm: FakeLLM) -> None:
    tuned = settings.model_copy(update={"breaker_failures": 1, "breaker_open_seconds": 60, "llm_retries": 0})
    async with serve(tuned, make_config(tenant_name(), model="openai/only-model")) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script("only-model", [error(500)])
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="helper", messages=MESSAGES)
        fake_llm.script("only-model", [reply("never sent")])
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="helper", messages=MESSAGES)
        assert caught.value.status_code == 503
        assert int(caught.value.response.headers["retry-after"]) > 50
        assert len(fake_llm.chat_requests("only-model")) == 1
        await client.close()
