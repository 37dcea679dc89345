"""Request bodies are typed as OpenAI's API types them: a loosely typed value (a string where a
boolean or a number belongs) is refused with a 400 naming the field, not coerced; what the OpenAI
SDK sends is still answered."""

from __future__ import annotations

import httpx
import openai
import pytest
from runtime_support import make_config, serve, tenant_name

from agentplane_runtime import Settings
from support.fake_llm import FakeLLM

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]

HI = [{"role": "user", "content": "hi"}]

LOOSE: list[tuple[str, dict[str, object]]] = [
    ("stream", {"stream": "yes"}),
    ("stream", {"stream": "true"}),
    ("stream", {"stream": 1}),
    ("stream_options.include_usage", {"stream": True, "stream_options": {"include_usage": "yes"}}),
    ("max_tokens", {"max_tokens": "16"}),
    ("max_tokens", {"max_tokens": True}),
    ("max_completion_tokens", {"max_completion_tokens": "16"}),
    ("temperature", {"temperature": "0.5"}),
    ("temperature", {"temperature": True}),
    ("top_p", {"top_p": "1"}),
    ("seed", {"seed": "7"}),
    ("n", {"n": "1"}),
    ("tool_choice", {"tool_choice": "sometimes"}),
    ("stop", {"stop": ["END", 5]}),
]
"""(the field the error names, what the body adds to a valid request)"""


def assert_refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field, error
    assert error["message"].startswith(f"{field}: "), error
    assert error["type"] == "invalid_request_error"
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(("field", "loose"), LOOSE, ids=[f"{f}={v}" for f, v in LOOSE])
async def test_a_loosely_typed_value_is_refused_naming_its_field(
    local_settings: Settings, field: str, loose: dict[str, object]
) -> None:
    async with serve(local_settings, make_config(tenant_name())) as served:
        headers = {"Authorization": f"Bearer {await served.key()}"}
        async with httpx.AsyncClient(base_url=served.base_url, headers=headers, timeout=30) as http:
            assert_refused(await http.post("/chat/completions", json={"messages": HI, **loose}), field)


async def test_a_query_refuses_a_string_for_top_k(settings: Settings) -> None:
    config = make_config(tenant_name(), knowledge=["docs"])
    async with serve(settings.model_copy(update={"ensure_collections": True}), config) as served:
        headers = {"Authorization": f"Bearer {await served.key()}"}
        async with httpx.AsyncClient(base_url=served.base_url, headers=headers, timeout=30) as http:
            assert_refused(
                await http.post("/knowledge/docs/query", json={"query": "x", "top_k": "5"}), "top_k"
            )
            ok = await http.post("/knowledge/docs/query", json={"query": "x", "top_k": 5})
            assert ok.status_code == 200, ok.text


async def test_json_values_openai_accepts_are_answered(local_settings: Settings, fake_llm: FakeLLM) -> None:
    async with serve(local_settings, make_config(tenant_name())) as served:
        headers = {"Authorization": f"Bearer {await served.key()}"}
        async with httpx.AsyncClient(base_url=served.base_url, headers=headers, timeout=30) as http:
            body = {
                "messages": HI,
                "stream": False,
                "temperature": 1,  # an integer where a number belongs
                "top_p": 1,
                "max_tokens": 16,
                "seed": 7,
                "n": 1,
                "tool_choice": {"type": "function", "function": {"name": "calculator"}},
                "logprobs": False,  # a field this runtime does not use is ignored, as OpenAI would
                "some_future_field": {"anything": ["goes"]},
            }
            response = await http.post("/chat/completions", json=body)
            assert response.status_code == 200, response.text
        (upstream,) = fake_llm.chat_requests("gpt-4o-mini")
        assert (upstream.body["temperature"], upstream.body["top_p"], upstream.body["seed"]) == (1, 1, 7)


async def test_the_openai_sdk_requests_are_answered(local_settings: Settings, fake_llm: FakeLLM) -> None:
    async with serve(local_settings, make_config(tenant_name())) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        plain = await client.chat.completions.create(
            model="helper",
            messages=[{"role": "system", "content": "be short"}, {"role": "user", "content": "plain"}],
            temperature=0.3,
            top_p=0.9,
            max_tokens=64,
            seed=1,
            n=1,
            stop=["\n\n"],
            user="someone",
            metadata={"conversation_id": "c1"},
            response_format={"type": "text"},
        )
        assert plain.choices[0].message.content == "Fake answer to: plain"
        streamed = await client.chat.completions.create(
            model="helper",
            messages=[{"role": "user", "content": "streamed"}],
            stream=True,
            stream_options={"include_usage": True},
            max_completion_tokens=64,
        )
        pieces = [choice.delta.content or "" async for chunk in streamed for choice in chunk.choices]
        assert "".join(pieces) == "Fake answer to: streamed"
        # a conversation that carries tool calls and their results, with a tool choice
        with_tools = await client.chat.completions.create(
            model="helper",
            messages=[
                {"role": "user", "content": "what is 2+2?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "4"},
                {"role": "user", "content": "and with tools?"},
            ],
            tool_choice="auto",
            parallel_tool_calls=False,
        )
        assert with_tools.choices[0].message.content == "Fake answer to: and with tools?"
        await client.close()
