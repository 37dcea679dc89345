"""The runtime's metric contract, what the SLO rules and dashboards of `dashboards/` query: every chat
request counted once by status and code, fallbacks, the platform's own overhead apart from the
providers' and tools' time, the OpenTelemetry GenAI metrics, usage durability, and an exposition
that `promtool check metrics` accepts."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families
from runtime_support import CALCULATOR, Samples, make_config, scrape, serve, tenant_name, total
from runtime_support import parse_metrics as parse

from agentplane_runtime import Settings
from support.fake_llm import FakeLLM, error, reply, sleep, tool_calls
from support.prometheus import check_metrics, promtool

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def label_sets(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(ls) for n, ls in samples if n == name]


async def test_every_chat_request_is_counted_once_by_status_and_code(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    tenant = tenant_name()
    config = make_config(tenant, tools=[CALCULATOR])
    async with serve(settings.model_copy(update={"llm_retries": 0}), config) as served:
        key = await served.key()
        client = openai.AsyncOpenAI(api_key=key, base_url=served.base_url, max_retries=0)
        await client.chat.completions.create(model="helper", messages=HELLO)  # 200
        limited = openai.AsyncOpenAI(
            api_key=await served.key(tokens_per_minute=1), base_url=served.base_url, max_retries=0
        )
        with pytest.raises(openai.RateLimitError):  # 429: the key's quota
            await limited.chat.completions.create(model="helper", messages=HELLO)
        fake_llm.script("gpt-4o-mini", [error(500)])
        with pytest.raises(openai.InternalServerError) as failed:  # the provider's 500: our 502
            await client.chat.completions.create(model="helper", messages=HELLO)
        assert failed.value.status_code == 502
        with pytest.raises(openai.BadRequestError):  # 400 from the agent: tools are its own
            await client.chat.completions.create(
                model="helper",
                messages=HELLO,
                tools=[{"type": "function", "function": {"name": "x", "parameters": {}}}],
            )
        async with httpx.AsyncClient() as http:
            url = f"{served.base_url}/chat/completions"
            # refused before the agent sees them: an invalid body, a wrong key
            invalid = await http.post(
                url, json={"model": "helper"}, headers={"Authorization": f"Bearer {key}"}
            )
            assert invalid.status_code == 400
            unknown = await http.post(url, json={"model": "helper", "messages": HELLO})
            assert unknown.status_code == 401
            # a stream that fails mid-way: the tool round's follow-up call fails
            fake_llm.script("gpt-4o-mini", [tool_calls(("calculator", {"expression": "6*7"})), error(500)])
            async with http.stream(
                "POST",
                url,
                json={"model": "helper", "messages": HELLO, "stream": True},
                headers={"Authorization": f"Bearer {key}"},
            ) as stream:
                assert stream.status_code == 200
                body = (await stream.aread()).decode()
            assert '"type":"upstream_error"' in body
        samples = parse(await scrape(served.url))
        await client.close()
        await limited.close()

    def requests(status: str, code: str) -> float:
        return total(samples, "agentplane_requests_total", tenant=tenant, status=status, code=code)

    assert requests("ok", "200") == 1
    assert requests("rate_limited", "429") == 1
    assert requests("server_error", "502") == 2  # the plain one and the stream's error event
    assert requests("client_error", "400") == 2  # the agent's own 400 and the invalid body
    assert requests("client_error", "401") == 1
    assert total(samples, "agentplane_requests_total", tenant=tenant) == 7
    # the model that answered, else the agent's primary model; never a made-up one
    assert {s["model"] for s in label_sets(samples, "agentplane_requests_total")} == {"openai/gpt-4o-mini"}
    # the duration histograms cover the requests the agent handled (not those refused before it)
    assert total(samples, "agentplane_request_duration_seconds_count", tenant=tenant) == 5
    assert (
        total(samples, "agentplane_quota_rejections_total", tenant=tenant, limit="key_tokens_per_minute") == 1
    )


async def test_a_fallback_answer_counts_and_the_genai_metrics_follow_the_conventions(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    tenant = tenant_name()
    config = make_config(tenant, model="azure/gpt-4o", fallbacks=["openai/gpt-4o-mini"])
    async with serve(settings.model_copy(update={"llm_retries": 0}), config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script("gpt-4o", [error(500), error(500)])
        fake_llm.script("gpt-4o-mini", [reply("one", prompt_tokens=30, completion_tokens=1)])
        answer = await client.chat.completions.create(model="helper", messages=HELLO)
        assert answer.model == "openai/gpt-4o-mini"
        stream = await client.chat.completions.create(model="helper", messages=HELLO, stream=True)
        async for _ in stream:
            pass
        samples = parse(await scrape(served.url))
        await client.close()

    ours = {"tenant": tenant, "agent": "helper"}
    assert total(samples, "agentplane_fallbacks_total", **ours, model="openai/gpt-4o-mini") == 2
    assert total(samples, "agentplane_requests_total", **ours, model="openai/gpt-4o-mini", status="ok") == 2
    assert total(samples, "agentplane_time_to_first_token_seconds_count", **ours) == 1

    # the runtime as a client of providers: one series per call, failed ones with their error
    calls = {"gen_ai_operation_name": "chat", **ours}
    failed = {**calls, "gen_ai_provider_name": "azure.ai.openai", "gen_ai_request_model": "azure/gpt-4o"}
    assert (
        total(samples, "gen_ai_client_operation_duration_seconds_count", **failed, error_type="http_500") == 2
    )
    answered = {**calls, "gen_ai_provider_name": "openai", "gen_ai_request_model": "openai/gpt-4o-mini"}
    assert total(samples, "gen_ai_client_operation_duration_seconds_count", **answered, error_type="") == 2
    assert total(samples, "gen_ai_client_token_usage_count", **answered, gen_ai_token_type="input") == 2
    assert total(samples, "gen_ai_client_token_usage_sum", **answered, gen_ai_token_type="output") >= 1
    (tokens, *_) = [
        s for s in label_sets(samples, "gen_ai_client_token_usage_count") if s["gen_ai_token_type"] == "input"
    ]
    assert set(tokens) == {
        "tenant", "agent", "gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
        "gen_ai_response_model", "gen_ai_token_type",
    }  # fmt: skip
    assert tokens["gen_ai_response_model"]  # what the provider says answered
    # the conventions' bucket boundaries
    assert (
        total(samples, "gen_ai_client_token_usage_bucket", **answered, gen_ai_token_type="input", le="64.0")
        >= 1
    )
    assert ("gen_ai_client_operation_duration_seconds_bucket", "81.92") in {
        (n, dict(ls).get("le")) for n, ls in samples
    }

    # the runtime as a GenAI server: the agent is the model its callers ask for
    server = {
        **calls, "gen_ai_provider_name": "agentplane", "gen_ai_request_model": "helper",
        "gen_ai_response_model": "openai/gpt-4o-mini",
    }  # fmt: skip
    assert total(samples, "gen_ai_server_request_duration_seconds_count", **server, error_type="") == 2
    assert total(samples, "gen_ai_server_time_to_first_token_seconds_count", **server) == 1


async def test_the_overhead_leaves_out_the_time_spent_waiting_on_providers(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    tenant = tenant_name()
    async with serve(settings, make_config(tenant)) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script("gpt-4o-mini", [sleep(1.0)])  # the provider takes a second to answer
        await client.chat.completions.create(model="helper", messages=HELLO)
        fake_llm.chunk_delay_ms = 150  # ... and 1.65 s to stream its eleven words
        words = "one two three four five six seven eight"
        stream = await client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": words}], stream=True
        )
        async for _ in stream:
            pass
        samples = parse(await scrape(served.url))
        await client.close()
    ours = {"tenant": tenant, "agent": "helper"}
    duration = total(samples, "agentplane_request_duration_seconds_sum", **ours)
    overhead = total(samples, "agentplane_overhead_seconds_sum", **ours)
    assert total(samples, "agentplane_overhead_seconds_count", **ours) == 2
    assert duration >= 2.0
    # the provider's (at least) 1 + 1.65 seconds are left out of the overhead
    assert 0 < overhead <= duration - 2.0


async def test_usage_write_delay_is_observed_for_every_written_record(settings: Settings) -> None:
    tenant = tenant_name()
    own_stream = settings.model_copy(update={"usage_stream": f"agentplane:usage:{tenant}"})
    async with serve(own_stream, make_config(tenant)) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        for _ in range(3):
            await client.chat.completions.create(model="helper", messages=HELLO)
        samples: Samples = {}
        for _ in range(100):  # the flusher writes every 0.05 s
            samples = parse(await scrape(served.url))
            if total(samples, "agentplane_usage_written_total") >= 3:
                break
            await asyncio.sleep(0.1)
        await client.close()
    written = total(samples, "agentplane_usage_written_total")
    assert written == 3
    assert total(samples, "agentplane_usage_write_delay_seconds_count") == written
    assert total(samples, "agentplane_usage_write_delay_seconds_sum") > 0
    assert total(samples, "agentplane_usage_write_delay_seconds_bucket", le="900.0") == written


async def test_promtool_accepts_the_exposition(settings: Settings, fake_llm: FakeLLM) -> None:
    promtool()
    tenant = tenant_name()
    config = make_config(
        tenant, model="openai/flaky", fallbacks=["openai/gpt-4o-mini"], tools=[CALCULATOR], knowledge=["docs"]
    )
    tuned = settings.model_copy(update={"llm_retries": 0, "ensure_collections": True})
    async with serve(tuned, config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script("flaky", [error(500)])
        fake_llm.script("gpt-4o-mini", [tool_calls(("calculator", {"expression": "6*7"})), reply("42")])
        stream = await client.chat.completions.create(model="helper", messages=HELLO, stream=True)
        async for _ in stream:
            pass
        text = await scrape(served.url)
        await client.close()
    families = {family.name for family in text_string_to_metric_families(text)}
    # every family of the contract is there, with the process's own
    assert {
        "agentplane_requests", "agentplane_request_duration_seconds", "agentplane_time_to_first_token_seconds",
        "agentplane_overhead_seconds", "agentplane_tool_calls", "agentplane_tool_call_duration_seconds",
        "agentplane_retrievals", "agentplane_retrieval_duration_seconds", "agentplane_fallbacks",
        "agentplane_llm_attempts", "agentplane_circuit_state", "agentplane_tokens", "agentplane_cost_usd",
        "agentplane_active_requests", "agentplane_usage_written", "agentplane_usage_write_delay_seconds",
        "gen_ai_client_token_usage", "gen_ai_client_operation_duration_seconds",
        "gen_ai_server_request_duration_seconds", "gen_ai_server_time_to_first_token_seconds",
        "process_cpu_seconds", "process_resident_memory_bytes", "python_gc_objects_collected", "python_info",
    } <= families  # fmt: skip
    check_metrics(text)
