"""The tool loop: the upstream asks for tool calls, the runtime runs them and feeds the results back."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
import uvicorn
from runtime_support import (
    CALCULATOR,
    free_port,
    make_config,
    parse_metrics,
    scrape,
    serve,
    tenant_name,
    total,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agentplane_runtime import Settings
from agentplane_runtime.tool_arguments import (
    InvalidArguments,
    UnusableParameters,
    checked_arguments,
    compiled_configs,
)
from agentplane_runtime.tools import ToolError, calculate
from support.fake_llm import FakeLLM, reply, tool_calls
from support.waiting import wait_until_serving

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]


class ToolServer:
    """A real HTTP server playing the tools: `/ok` echoes, `/fail` 500s, `/hang` never answers, `/big` is large."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []

        async def ok(request: Request) -> Response:
            body = await request.json()
            self.calls.append(("ok", body, dict(request.headers)))
            return JSONResponse({"status": "shipped", "order": body.get("order_id")})

        async def fail(request: Request) -> Response:
            self.calls.append(("fail", {}, dict(request.headers)))
            return PlainTextResponse("database on fire", status_code=500)

        async def hang(request: Request) -> Response:
            self.calls.append(("hang", {}, dict(request.headers)))
            await asyncio.sleep(60)
            return PlainTextResponse("late")

        async def big(request: Request) -> Response:
            return PlainTextResponse("x" * 100_000)

        self.app = Starlette(
            routes=[
                Route("/ok", ok, methods=["POST"]),
                Route("/fail", fail, methods=["POST"]),
                Route("/hang", hang, methods=["POST"]),
                Route("/big", big, methods=["POST"]),
            ]
        )


@pytest_asyncio.fixture
async def tool_server() -> AsyncIterator[tuple[ToolServer, int]]:
    tools = ToolServer()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(tools.app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    await wait_until_serving("the tool server", server, task)
    yield tools, port
    server.should_exit = True
    server.force_exit = True
    await asyncio.wait_for(task, 30)


def http_tool(name: str, url: str, timeout: int = 5, **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "name": name,
        "function_name": name.replace("-", "_"),
        "description": f"the {name} tool",
        "timeout_seconds": timeout,
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        "url": url,
        "method": "POST",
        "headers": {"X-Static": "yes"},
        "auth": None,
        "max_response_bytes": 4096,
        **extra,
    }


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


async def test_tool_loop_runs_tools_and_feeds_results_back(
    settings: Settings, fake_llm: FakeLLM, tool_server: tuple[ToolServer, int], tmp_path: Path
) -> None:
    tools, port = tool_server
    secrets = tmp_path / "secrets"
    (secrets / "order-lookup").mkdir(parents=True)
    (secrets / "order-lookup" / "token").write_text("s3cret\n")
    lookup = http_tool(
        "order-lookup",
        f"http://127.0.0.1:{port}/ok",
        auth={
            "header": "Authorization",
            "scheme": "Bearer",
            "secret": {"kubernetes": {"name": "orders", "key": "token"}},
        },
    )
    config = make_config(tenant_name(), tools=[lookup, CALCULATOR])
    async with serve(settings.model_copy(update={"secrets_dir": secrets}), config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script(
            "gpt-4o-mini",
            [
                tool_calls(
                    ("order_lookup", {"order_id": "A-17"}), ("calculator", {"expression": "(2 + 3) * 4"})
                ),
                reply("Order A-17 shipped; 20."),
            ],
        )
        completion = await client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "where is A-17?"}]
        )
        assert completion.choices[0].message.content == "Order A-17 shipped; 20."
        first, second = fake_llm.chat_requests("gpt-4o-mini")
        assert [t["function"]["name"] for t in first.body["tools"]] == ["order_lookup", "calculator"]
        results = tool_messages(second.body)
        assert json.loads(results[0]["content"]) == {"status": "shipped", "order": "A-17"}
        assert json.loads(results[1]["content"]) == {"result": 20}
        (call,) = tools.calls
        assert call[2]["authorization"] == "Bearer s3cret"
        assert call[2]["x-static"] == "yes"
        # usage adds up both LLM calls
        assert completion.usage is not None
        assert completion.usage.prompt_tokens > 0
        extra = completion.model_extra or {}
        assert extra["agentplane"]["tool_calls"] == 2
        await client.close()


async def test_failing_and_hanging_tools_are_reported_to_the_model(
    settings: Settings, fake_llm: FakeLLM, tool_server: tuple[ToolServer, int]
) -> None:
    _, port = tool_server
    config = make_config(
        tenant_name(),
        tools=[
            http_tool("broken", f"http://127.0.0.1:{port}/fail"),
            http_tool("sleepy", f"http://127.0.0.1:{port}/hang", timeout=1),
            http_tool("outside", "http://evil.example/steal"),
        ],
    )
    async with serve(settings, config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script(
            "gpt-4o-mini",
            [
                tool_calls(("broken", {}), ("sleepy", {}), ("outside", {}), ("nonexistent", {})),
                reply("Sorry, the tools failed."),
            ],
        )
        stream = await client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "try"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Sorry, the tools failed."
        errors = [json.loads(m["content"])["error"] for m in tool_messages(fake_llm.chat_requests()[-1].body)]
        assert errors[0].startswith("HTTP 500: database on fire")
        assert "did not answer within 1 s" in errors[1]
        assert "egress allowlist" in errors[2]
        assert "no tool named 'nonexistent'" in errors[3]
        spans = {s.name: s for s in served.spans.get_finished_spans()}
        assert spans["execute_tool broken"].attributes is not None
        assert spans["execute_tool broken"].attributes["error.type"] == "tool_error"
        samples = parse_metrics(await scrape(served.url))
        await client.close()
    ours = {"tenant": config.tenant, "agent": "helper"}
    outcomes = {
        tool: outcome
        for (name, labels), value in samples.items()
        if name == "agentplane_tool_calls_total" and value == 1
        for tool, outcome in [(dict(labels)["tool"], dict(labels)["outcome"])]
    }
    assert outcomes == {"broken": "error", "sleepy": "timeout", "outside": "denied", "nonexistent": "unknown"}
    durations = {tool: total(samples, "agentplane_tool_call_duration_seconds_sum", **ours, tool=tool)
                 for tool in ("broken", "sleepy", "outside")}  # fmt: skip
    assert durations["sleepy"] >= 1.0  # its timeout
    assert all(
        total(samples, "agentplane_tool_call_duration_seconds_count", **ours, tool=t) == 1 for t in durations
    )
    # the second the tools were waited on is not the platform's own time
    duration = total(samples, "agentplane_request_duration_seconds_sum", **ours)
    assert total(samples, "agentplane_overhead_seconds_sum", **ours) <= duration - 1.0


async def test_tool_calls_are_bounded_by_max_tool_calls(settings: Settings, fake_llm: FakeLLM) -> None:
    config = make_config(tenant_name(), tools=[CALCULATOR], max_tool_calls=2)
    async with serve(settings, config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script(
            "gpt-4o-mini",
            [tool_calls(("calculator", {"expression": "1+1"}))] * 5 + [reply("done")],
        )
        completion = await client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "loop"}]
        )
        requests = fake_llm.chat_requests("gpt-4o-mini")
        # two tool rounds, then a call without tools, which must answer
        assert len(requests) == 3
        assert "tools" not in requests[2].body
        assert (completion.model_extra or {})["agentplane"]["tool_calls"] == 2
        await client.close()


async def test_calculator_is_safe() -> None:
    assert calculate("2 ** 10 + sqrt(16) - 7 // 2") == 1025.0
    assert calculate("round(pi, 2)") == 3.14
    for hostile in (
        "__import__('os').system('id')",
        "9 ** 9 ** 9",
        "(1).__class__",
        "open('x')",
        "1e308 * 1e308 * 10",
    ):
        with pytest.raises(ToolError):
            calculate(hostile)


ORDER_PARAMETERS = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string", "pattern": "^[0-9]+$"},
        "notify": {"type": "string", "format": "email"},
    },
    "required": ["order_id"],
    "additionalProperties": False,
}


async def test_invalid_arguments_never_reach_the_tool_and_the_model_corrects_them(
    settings: Settings, fake_llm: FakeLLM, tool_server: tuple[ToolServer, int]
) -> None:
    tools, port = tool_server
    lookup = http_tool("order-lookup", f"http://127.0.0.1:{port}/ok", parameters=ORDER_PARAMETERS)
    config = make_config(tenant_name(), tools=[lookup, CALCULATOR])
    async with serve(settings, config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script(
            "gpt-4o-mini",
            [
                tool_calls(
                    ("order_lookup", {"order_id": "abc", "notify": "not-an-address", "rush": True}),
                    ("calculator", {"expression": 5}),
                ),
                tool_calls(("order_lookup", {"order_id": "17"}), ("calculator", {"expression": "2 + 3"})),
                reply("Order 17 shipped; 5."),
            ],
        )
        completion = await client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "where is order abc?"}]
        )
        assert completion.choices[0].message.content == "Order 17 shipped; 5."
        _, second, third = fake_llm.chat_requests("gpt-4o-mini")
        refused = [json.loads(m["content"])["error"] for m in tool_messages(second.body)]
        assert refused == [
            "the arguments do not match the tool's parameters: "
            "arguments.order_id: 'abc' does not match '^[0-9]+$'; "
            "arguments.notify: 'not-an-address' is not a 'email'; "
            "arguments: Additional properties are not allowed ('rush' was unexpected)",
            "the arguments do not match the tool's parameters: arguments.expression: 5 is not of type 'string'",
        ]
        assert "tools" in second.body  # the model may try again: refused calls still count
        results = tool_messages(third.body)[2:]
        assert [json.loads(m["content"]) for m in results] == [
            {"status": "shipped", "order": "17"},
            {"result": 5},
        ]
        assert [call[1] for call in tools.calls] == [{"order_id": "17"}]  # only the valid call got through
        spans = [s for s in served.spans.get_finished_spans() if s.name.startswith("execute_tool")]
        errors = [(s.name, (s.attributes or {}).get("error.type")) for s in spans]
        assert sorted(errors, key=str) == sorted(
            [
                ("execute_tool order_lookup", "invalid_arguments"),
                ("execute_tool calculator", "invalid_arguments"),
                ("execute_tool order_lookup", None),
                ("execute_tool calculator", None),
            ],
            key=str,
        )
        samples = parse_metrics(await scrape(served.url))
        await client.close()
    ours = {"tenant": config.tenant, "agent": "helper"}
    for tool in ("order-lookup", "calculator"):
        calls = {o: total(samples, "agentplane_tool_calls_total", **ours, tool=tool, outcome=o)
                 for o in ("ok", "invalid_arguments", "error")}  # fmt: skip
        assert calls == {"ok": 1, "invalid_arguments": 1, "error": 0}
        # the duration is the tool's: a refused call did not run it
        assert total(samples, "agentplane_tool_call_duration_seconds_count", **ours, tool=tool) == 1


async def test_arguments_are_checked_with_validators_compiled_once_per_config() -> None:
    lookup = http_tool("order-lookup", "http://127.0.0.1:1/ok", parameters=ORDER_PARAMETERS)
    broken = http_tool("broken", "http://127.0.0.1:1/ok", parameters={"type": "object", "required": "yes"})
    config = make_config(tenant_name(), tools=[lookup, broken, CALCULATOR])
    tool = config.tools[0]
    gc.collect()  # configs of earlier tests that are gone
    before = compiled_configs()
    assert checked_arguments(config, tool, '{"order_id": "17"}') == {"order_id": "17"}
    assert checked_arguments(config, tool, '{"order_id": "18"}') == {"order_id": "18"}
    assert compiled_configs() == before + 1
    with pytest.raises(InvalidArguments, match=r"not valid JSON"):
        checked_arguments(config, tool, '{"order_id": ')
    with pytest.raises(InvalidArguments, match=r"must be a JSON object, not list"):
        checked_arguments(config, tool, "[]")
    many = json.dumps({"order_id": 1, **{f"x{i}": i for i in range(9)}})
    with pytest.raises(InvalidArguments) as raised:
        checked_arguments(config, tool, many)
    assert str(raised.value).startswith(
        "the arguments do not match the tool's parameters: arguments.order_id: 1 is not of type 'string'; "
    )
    with pytest.raises(UnusableParameters, match=r"parameters.required: got 'yes' \(expected an array\)"):
        checked_arguments(config, config.tools[1], "{}")
    builtin = config.tools[2]
    with pytest.raises(InvalidArguments, match=r"arguments: 'expression' is a required property"):
        checked_arguments(config, builtin, "{}")
    same = config.model_copy()  # an equal config is another version's object: compiled on its own
    checked_arguments(same, same.tools[0], '{"order_id": "17"}')
    assert compiled_configs() == before + 2
    del config, same, tool, builtin, raised  # the traceback holds the config too
    gc.collect()
    assert compiled_configs() == before  # a config no longer served takes its validators with it
