"""What a request costs, counted truly: a model without a price is refused before it is sent (its
fallbacks too), a Tenant's declared price is what its usage rows cost, and the provider embedding
calls of a chat or an upload are metered (a usage row each) and counted against the tenant's tokens
per minute and budget like chat calls."""

from __future__ import annotations

import httpx
import litellm
import openai
import pytest
from runtime_support import (
    MINUTE,
    Served,
    counters,
    limit,
    make_config,
    parse_metrics,
    scrape,
    serve,
    tenant_name,
    total,
)
from sqlalchemy import select
from test_runtime_audit import audited, wait_for_records

from agentplane_platform.api.v1alpha1.tenant import ModelPrice
from agentplane_platform.config import AgentConfig
from agentplane_platform.db import UsageRecord
from agentplane_runtime import Settings
from agentplane_runtime.llm import Price, count_text_tokens, count_tokens, price_of
from agentplane_runtime.offline import PRICE, offline_model
from support.example_specs import example_config, load_example_specs
from support.fake_llm import FakeLLM, reply
from support.services import Server
from support.waiting import wait_for_async

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]

EMBEDDER = "openai/text-embedding-3-small"
"""The embedding model of `make_config`'s knowledge bases (litellm prices it)."""


async def rows(served: Served, tenant: str, count: int) -> list[UsageRecord]:
    """The tenant's usage rows once there are `count` of them."""

    async def enough() -> list[UsageRecord] | None:
        async with served.runtime.engine.connect() as connection:
            result = await connection.execute(
                select(UsageRecord.__table__).where(UsageRecord.tenant == tenant)
            )
            found = [UsageRecord(**dict(r)) for r in result.mappings()]
        return found if len(found) >= count else None

    return await wait_for_async(f"{count} usage rows of {tenant}", enough, 20, interval=0.05)


def with_prices(config: AgentConfig, prices: dict[str, ModelPrice]) -> AgentConfig:
    return config.model_copy(update={"model_prices": prices})


def kb_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"ensure_collections": True})


async def test_a_model_without_a_price_is_refused_before_it_is_sent(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    tenant = tenant_name()
    async with serve(settings, make_config(tenant, model="openai/house-model")) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        for stream in (False, True):
            with pytest.raises(openai.UnprocessableEntityError) as caught:
                await client.chat.completions.create(
                    model="helper", messages=[{"role": "user", "content": "hello"}], stream=stream
                )
            error = caught.value.body
            assert isinstance(error, dict)
            assert error["code"] == "model_price_unknown"
            assert "'openai/house-model' has no price" in error["message"]
            assert "spec.modelPrices" in error["message"]
            assert error["request_id"] == caught.value.response.headers["x-request-id"]
        await client.close()
        refused = await rows(served, tenant, 2)
    assert fake_llm.chat_requests() == []  # nothing was sent
    assert {(r.status, r.http_status, r.error_type, r.cost_usd) for r in refused} == {
        ("error", 422, "model_price_unknown", 0.0)
    }


async def test_a_fallback_without_a_price_is_skipped(settings: Settings, fake_llm: FakeLLM) -> None:
    tenant = tenant_name()
    config = make_config(tenant, model="openai/house-model", fallbacks=["openai/gpt-4o-mini"])
    async with serve(settings, config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        answer = await client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "hello"}]
        )
        await client.close()
    assert answer.model == "openai/gpt-4o-mini"
    assert [r.body["model"] for r in fake_llm.chat_requests()] == ["gpt-4o-mini"]


async def test_a_tenants_declared_price_is_what_the_usage_row_costs(
    settings: Settings, fake_llm: FakeLLM, redis_server: Server
) -> None:
    tenant = tenant_name()
    await limit(redis_server, tenant)
    prices = {
        "openai/house-model": ModelPrice(input_per_million_tokens=1.5, output_per_million_tokens=6),
        # a declared price replaces litellm's
        "openai/gpt-4o-mini": ModelPrice(input_per_million_tokens=100, output_per_million_tokens=200),
    }
    config = with_prices(make_config(tenant, model="openai/house-model"), prices)
    async with serve(settings, config) as served:
        served.runtime.chat.quota.clock = lambda: MINUTE
        fake_llm.script("house-model", [reply("an answer", prompt_tokens=1000, completion_tokens=500)])
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        await client.chat.completions.create(model="helper", messages=[{"role": "user", "content": "hi"}])
        await client.close()
        (row,) = await rows(served, tenant, 1)
    assert row.model == "openai/house-model"
    assert row.cost_usd == pytest.approx((1000 * 1.5 + 500 * 6) / 1_000_000)
    _, spend = await counters(redis_server, tenant)
    assert spend == pytest.approx(row.cost_usd)


async def test_a_chats_query_embedding_writes_a_usage_row_and_counts_against_the_quota(
    settings: Settings, fake_llm: FakeLLM, redis_server: Server
) -> None:
    tenant = tenant_name()
    await limit(redis_server, tenant)
    question = "How long does express shipping take to the islands?"
    async with serve(kb_settings(settings), make_config(tenant, knowledge=["docs"])) as served:
        served.runtime.chat.quota.clock = lambda: MINUTE
        fake_llm.script("gpt-4o-mini", [reply("one day", prompt_tokens=300, completion_tokens=40)])
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        answer = await client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": question}]
        )
        await client.close()
        found = await rows(served, tenant, 2)
    (chat,) = [r for r in found if r.status == "ok"]
    (embedding,) = [r for r in found if r.status == "embedding"]
    assert embedding.request_id == chat.request_id
    assert embedding.model == EMBEDDER
    assert embedding.prompt_tokens == -(-len(question) // 4)  # as the provider (the fake) counted them
    assert (embedding.completion_tokens, embedding.llm_calls) == (0, 0)
    assert embedding.cost_usd == pytest.approx(embedding.prompt_tokens * 0.02 / 1_000_000)
    assert answer.usage is not None
    assert answer.usage.total_tokens == 340  # the chat's own tokens
    tokens, spend = await counters(redis_server, tenant)
    assert tokens == 340 + embedding.prompt_tokens  # settled: the chat's and the embedding's
    assert spend == pytest.approx(chat.cost_usd + embedding.cost_usd)  # the budget left is lower by both
    assert embedding.cost_usd > 0


async def test_an_uploads_embeddings_are_metered_and_refused_over_the_quota(
    settings: Settings, fake_llm: FakeLLM, redis_server: Server
) -> None:
    tenant = tenant_name()
    await limit(redis_server, tenant, tokens=200)
    async with serve(
        audited(kb_settings(settings), tenant), make_config(tenant, knowledge=["docs"])
    ) as served:
        served.runtime.chat.quota.clock = lambda: MINUTE
        key = await served.key(roles=["admin"])
        async with httpx.AsyncClient(
            base_url=served.base_url, headers={"Authorization": f"Bearer {key}"}
        ) as http:
            text = "Standard shipping takes 3 to 5 business days; express takes one."
            created = await http.post(
                "/knowledge/docs/documents", files={"file": ("a.md", text.encode(), "text/markdown")}
            )
            assert created.status_code == 201, created.text
            (row,) = await rows(served, tenant, 1)
            assert (row.status, row.model, row.prompt_tokens) == ("embedding", EMBEDDER, -(-len(text) // 4))
            assert row.cost_usd > 0
            tokens, spend = await counters(redis_server, tenant)
            assert tokens == row.prompt_tokens
            assert spend == pytest.approx(row.cost_usd)
            samples = parse_metrics(await scrape(served.url))
            assert (
                total(samples, "agentplane_tokens_total", tenant=tenant, model=EMBEDDER) == row.prompt_tokens
            )
            assert total(
                samples, "agentplane_cost_usd_total", tenant=tenant, model=EMBEDDER
            ) == pytest.approx(row.cost_usd)
            too_big = await http.post(
                "/knowledge/docs/documents",
                files={"file": ("b.md", ("word " * 400).encode(), "text/markdown")},
            )
        assert too_big.status_code == 429, too_big.text
        assert too_big.json()["error"]["code"] == "tokens_per_minute"
        found = await wait_for_records(served, tenant, 2)  # the first upload, and the refusal
        (refusal,) = [r for r in found if r["action"] == "quota.refused"]
        assert refusal["request_id"] == too_big.json()["error"]["request_id"]
        assert isinstance(refusal["details"], dict)
        assert refusal["details"]["limit"] == "tokens_per_minute"
    assert (
        len([r for r in fake_llm.requests if r.path.endswith("/embeddings")]) == 1
    )  # the refused one was never sent


async def test_an_embedding_model_without_a_price_refuses_the_chat(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    tenant = tenant_name()
    config = make_config(tenant, knowledge=["docs"])
    config = config.model_copy(
        update={
            "knowledge": [config.knowledge[0].model_copy(update={"embedding_model": "openai/house-embedder"})]
        }
    )
    async with serve(kb_settings(settings), config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            await client.chat.completions.create(
                model="helper", messages=[{"role": "user", "content": "hello"}]
            )
        await client.close()
    assert "'openai/house-embedder' has no price" in str(caught.value)
    assert fake_llm.requests == []


async def test_every_model_of_the_example_specs_has_a_price() -> None:
    """The example agents' models and provider embedding models are priced by litellm (the offline
    model of `agentplane up` declares its own 0): nothing in `specs/` is refused for want of one."""
    specs = load_example_specs()
    for namespace, name in specs.agents:
        config = example_config(specs, namespace, name)
        models = [config.model.name, *config.model.fallbacks]
        models += [
            kb.embedding_model for kb in config.knowledge if not kb.embedding_model.startswith("local/")
        ]
        for model in models:
            assert price_of(model, config.model_prices, {}) is not None, (name, model)
            assert price_of(offline_model(model), {}, {}) == Price("runtime", PRICE)
    assert price_of("openai/house-model", {}, {}) is None


async def test_which_price_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tenant's declaration, else the platform's (`AGENTPLANE_MODEL_PRICES`, JSON), else litellm's."""
    monkeypatch.setenv(
        "AGENTPLANE_MODEL_PRICES",
        '{"openai/house-model": {"inputPerMillionTokens": 2, "outputPerMillionTokens": 8},'
        ' "openai/gpt-4o-mini": {"inputPerMillionTokens": 0, "outputPerMillionTokens": 0}}',
    )
    platform = Settings().model_prices
    tenant = {"openai/house-model": ModelPrice(input_per_million_tokens=1, output_per_million_tokens=4)}
    house = price_of("openai/house-model", tenant, platform)
    assert house == Price("tenant", tenant["openai/house-model"])
    assert house.cost("openai/house-model", 1_000_000, 500_000) == pytest.approx(3.0)
    from_platform = price_of("openai/house-model", {}, platform)
    assert from_platform is not None
    assert from_platform.source == "platform"
    assert from_platform.cost("openai/house-model", 1_000_000, 500_000) == pytest.approx(6.0)
    assert price_of("openai/gpt-4o-mini", {}, platform) == Price("platform", platform["openai/gpt-4o-mini"])
    litellm_price = price_of("openai/gpt-4o-mini", {}, {})
    assert litellm_price == Price("litellm")
    assert litellm_price.cost("openai/gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "azure/gpt-4o", "gemini/gemini-2.5-pro"])
async def test_litellms_price_of_a_call_is_its_cost_map_price(model: str) -> None:
    """A linear price is kept as two rates (no cost map lookup per call); a tiered one (Gemini 2.5 Pro
    costs more per token above 200k) is still priced by litellm per call: the same figures either way."""
    for prompt, completion in [(1, 0), (0, 1), (1234, 56), (300_000, 4_000)]:
        expected = sum(
            litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=completion)
        )
        assert Price("litellm").cost(model, prompt, completion) == pytest.approx(expected, rel=1e-12)


async def test_a_prompt_is_counted_by_litellm_and_never_under_reserved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    messages = [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "What is a quota? " * 50},
    ]
    counted = count_tokens("openai/gpt-4o-mini", messages, None)
    assert 200 < counted < len(str(messages)) // 2  # a tokenizer's count, far below one token a byte

    def broken(**_: object) -> int:
        raise ValueError("a shape the counter does not handle")

    monkeypatch.setattr(litellm, "token_counter", broken)
    assert count_tokens("openai/gpt-4o-mini", messages, None) > len(str(messages)) // 2  # bytes, then


@pytest.mark.parametrize(
    "model", ["openai/gpt-4o-mini", "gpt-4o", "azure/gpt-35-turbo", "anthropic/claude-3-5-sonnet-20240620"]
)
async def test_a_prompt_is_counted_as_litellm_counts_it_with_its_tokenizer_chosen_once(model: str) -> None:
    """The tokenizer is chosen once per model (litellm chooses it on every count otherwise): the
    counts are litellm's own, with a tool definition, a named message and text alike."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "calculator",
                "description": "Evaluates arithmetic.",
                "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "What is a quota? " * 5, "name": "bob"},
    ]
    for offered in (None, tools):
        assert count_tokens(model, messages, offered) == litellm.token_counter(
            model=model, messages=messages, tools=offered
        )
    assert count_text_tokens(model, ["a quota", "a budget"]) == sum(
        litellm.token_counter(model=model, text=text) for text in ("a quota", "a budget")
    )
