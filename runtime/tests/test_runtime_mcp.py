"""MCP tools against a real MCP server: the `mcp` package's own `MCPServer` over streamable HTTP,
served on loopback (`support.mcp_server`), driven through the runtime's tool loop: results and
failures, schemas discovered from the server's listing, and sessions kept per conversation."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from runtime_support import free_port, make_config, serve, tenant_name

from agentplane_platform.api.v1alpha1 import EgressRule
from agentplane_platform.mcp import McpDenied, McpSession, McpSessionExpired, discover_parameters
from agentplane_runtime import Settings
from agentplane_runtime.local_specs import LocalDiscovery, load_specs
from agentplane_runtime.tools import SecretReader
from support.fake_llm import FakeLLM, reply, tool_calls
from support.mcp_server import orders_mcp

pytestmark = pytest.mark.asyncio


def mcp_tool(
    name: str,
    url: str,
    tool: str | None = None,
    timeout: int = 5,
    *,
    parameters: dict[str, Any] | None = None,
    stateless: bool = False,
) -> dict[str, Any]:
    return {
        "type": "mcp",
        "name": name,
        "function_name": name.replace("-", "_"),
        "description": f"the {name} tool",
        "timeout_seconds": timeout,
        "parameters": parameters or {"type": "object", "properties": {"order_id": {"type": "string"}}},
        "url": url,
        "tool": tool or name.replace("-", "_"),
        "auth": None,
        "stateless": stateless,
    }


def tool_results(fake: FakeLLM) -> list[str]:
    """The tool messages of the last request the model received."""
    return [m["content"] for m in fake.chat_requests()[-1].body["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("stateless", [False, True], ids=["stateful-sse", "stateless-json"])
async def test_mcp_tool_results_reach_the_model(
    local_settings: Settings, fake_llm: FakeLLM, stateless: bool
) -> None:
    async with orders_mcp(stateless=stateless) as orders:
        config = make_config(tenant_name(), tools=[mcp_tool("lookup-order", orders.url)])
        async with serve(local_settings, config) as served:
            client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
            fake_llm.script(
                "gpt-4o-mini",
                [
                    tool_calls(("lookup_order", {"order_id": "A-17"}), ("lookup_order", {"order_id": "B-2"})),
                    reply("A-17 and B-2 shipped."),
                ],
            )
            completion = await client.chat.completions.create(
                model="helper", messages=[{"role": "user", "content": "where are A-17 and B-2?"}]
            )
            await client.close()
        assert completion.choices[0].message.content == "A-17 and B-2 shipped."
        assert tool_results(fake_llm) == [
            "Order A-17 shipped on 2026-05-01.",
            "Order B-2 shipped on 2026-05-01.",
        ]
        calls = orders.calls()
        assert sorted(c.params["arguments"]["order_id"] for c in calls) == ["A-17", "B-2"]
        (offered,) = {s.params["protocolVersion"] for s in orders.seen if s.rpc_method == "initialize"}
        # after initialize every request names the negotiated protocol version (this server accepts
        # the client's offer), whether or not the server keeps sessions
        assert all(s.protocol_version == offered for s in orders.seen if s.rpc_method != "initialize")

        if stateless:
            assert orders.issued_sessions == []
            assert all(s.session is None for s in orders.seen)
            return
        # each call has its own session: the initialized notification and the call carry the id the
        # server issued for it, and the session is ended afterwards
        assert len(orders.issued_sessions) == 2
        assert sorted(c.session or "" for c in calls) == sorted(orders.issued_sessions)
        notified = [s.session for s in orders.seen if s.rpc_method == "notifications/initialized"]
        assert sorted(s or "" for s in notified) == sorted(orders.issued_sessions)
        deleted = [s.session for s in orders.seen if s.http_method == "DELETE"]
        assert sorted(s or "" for s in deleted) == sorted(orders.issued_sessions)
        async with httpx.AsyncClient() as http:
            for session in orders.issued_sessions:
                stale = await http.post(
                    orders.url,
                    json={"jsonrpc": "2.0", "id": 9, "method": "ping"},
                    headers={
                        "Accept": "application/json, text/event-stream",
                        "Mcp-Session-Id": session,
                        "MCP-Protocol-Version": offered,
                    },
                )
                assert stale.status_code == 404


async def test_mcp_tool_failures_reach_the_model_as_tool_errors(
    local_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with orders_mcp() as orders:
        # the same server under another host name: reachable, but not in the tenant's egress
        outside = orders.url.replace("127.0.0.1", "localhost")
        config = make_config(
            tenant_name(),
            tools=[
                mcp_tool("archived-order", orders.url),
                mcp_tool("crash", orders.url),
                mcp_tool("slow", orders.url, timeout=1),
                mcp_tool("renamed", orders.url, tool="no_such_tool"),
                mcp_tool("elsewhere", outside, tool="lookup_order"),
                mcp_tool("slashed", f"{orders.url}/", tool="lookup_order"),
                mcp_tool("misplaced", orders.url.replace("/mcp", "/tools"), tool="lookup_order"),
            ],
            egress=["127.0.0.1"],
            max_tool_calls=7,
        )
        async with serve(local_settings, config) as served:
            client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
            fake_llm.script(
                "gpt-4o-mini",
                [
                    tool_calls(
                        ("archived_order", {"order_id": "A-17"}),
                        ("crash", {}),
                        ("slow", {}),
                        ("renamed", {}),
                        ("elsewhere", {"order_id": "A-17"}),
                        ("slashed", {"order_id": "A-17"}),
                        ("misplaced", {"order_id": "A-17"}),
                    ),
                    reply("Sorry, the order tools failed."),
                ],
            )
            stream = await client.chat.completions.create(
                model="helper", messages=[{"role": "user", "content": "where is A-17?"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            await client.close()
            spans = {s.name: s for s in served.spans.get_finished_spans()}
        assert text == "Sorry, the order tools failed."
        errors = [json.loads(content)["error"] for content in tool_results(fake_llm)]
        # a tool's own refusal keeps its message
        assert "order A-17 is archived" in errors[0]
        # a crash inside the server is a tool error too; the server keeps the exception's text
        assert "Error executing tool crash" in errors[1]
        assert "hunter2" not in errors[1]
        assert "did not answer within 1 s" in errors[2]
        assert "no_such_tool" in errors[3]
        assert "egress allowlist" in errors[4]
        # a redirect is not followed (it could leave the allowlist) but named
        assert f"HTTP 307, a redirect to {orders.url};" in errors[5]
        assert errors[6] == "MCP server answered HTTP 404: Not Found"
        for name in ("archived-order", "crash", "slow", "renamed", "elsewhere", "slashed", "misplaced"):
            attributes = spans[f"execute_tool {name.replace('-', '_')}"].attributes
            assert attributes is not None
            assert attributes["error.type"] == "tool_error"
        # nothing reached the server for the refused host; the abandoned slow call's session was
        # ended, which stopped the tool on the server
        assert sorted(c.params["name"] for c in orders.calls()) == [
            "archived_order",
            "crash",
            "no_such_tool",
            "slow",
        ]
        await asyncio.wait_for(orders.slow_cancelled.wait(), 5)


async def test_mcp_http_errors_carry_the_servers_reason() -> None:
    async with orders_mcp() as orders, httpx.AsyncClient() as http:
        session = McpSession(http, orders.url, {})
        await session.initialize()
        session.session_id = "expired"
        with pytest.raises(McpSessionExpired, match=r"^MCP server answered HTTP 404: Session not found$"):
            await session.request("tools/call", {"name": "lookup_order", "arguments": {"order_id": "A-17"}})


# -- schemas discovered from the server's listing ----------------------------------------------


def spec_tree(root: Path, *, url: str, tool: str, port: int) -> Path:
    """A tenant whose agent uses an MCP Tool that declares no parameters; egress to loopback:`port`."""
    shop = root / "tenants" / "shop"
    documents = {
        "tenant.yaml": f"""
            apiVersion: agentplane.io/v1alpha1
            kind: Tenant
            metadata: {{name: shop}}
            spec:
              owners: [{{kind: Group, name: shop-team}}]
              allowedModels: [openai/gpt-4o-mini]
              egress: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
            """,
        "prompts/helper.yaml": """
            apiVersion: agentplane.io/v1alpha1
            kind: Prompt
            metadata: {name: helper, namespace: tenant-shop}
            spec: {version: 1, template: You help with orders.}
            """,
        "tools/lookup-order.yaml": f"""
            apiVersion: agentplane.io/v1alpha1
            kind: Tool
            metadata: {{name: lookup-order, namespace: tenant-shop}}
            spec: {{type: mcp, description: Where an order is, url: "{url}", tool: {tool}}}
            """,
        "agents/helper.yaml": """
            apiVersion: agentplane.io/v1alpha1
            kind: Agent
            metadata: {name: helper, namespace: tenant-shop}
            spec:
              description: Answers order questions
              model: {name: openai/gpt-4o-mini}
              prompt: {name: helper, version: 1}
              tools: [{name: lookup-order}]
            """,
    }
    for name, text in documents.items():
        path = shop / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(line.removeprefix(" " * 12) for line in text.splitlines()))
    return root


def discovery(tmp_path: Path) -> LocalDiscovery:
    return LocalDiscovery(SecretReader(tmp_path / "secrets", tmp_path / "keyvault"), timeout=5)


async def test_a_discovered_schema_is_offered_to_the_model_and_enforced(
    local_settings: Settings, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    async with orders_mcp() as orders:
        (listed,) = [t for t in await orders.server().list_tools() if t.name == "lookup_order"]
        tree = spec_tree(tmp_path / "specs", url=orders.url, tool="lookup_order", port=orders.port)
        found = discovery(tmp_path)
        loaded = await asyncio.to_thread(load_specs, tree, found)
        assert loaded.ok, loaded.errors
        (config,) = loaded.agents
        (tool,) = config.tools
        assert tool.parameters == listed.input_schema
        assert tool.parameters["required"] == ["order_id"]  # the server's own schema, not an empty one
        first = found.found[("tenant-shop", "lookup-order")]
        assert json.loads(first.parameters) == listed.input_schema
        # listed again (a reload): same schema, same hash, the time it was first discovered
        await asyncio.to_thread(load_specs, tree, found)
        assert found.found[("tenant-shop", "lookup-order")] == first

        async with serve(local_settings, config) as served:
            client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
            fake_llm.script(
                "gpt-4o-mini",
                [
                    tool_calls(("lookup_order", {"order": "A-17"})),
                    tool_calls(("lookup_order", {"order_id": "A-17"})),
                    reply("A-17 shipped."),
                ],
            )
            completion = await client.chat.completions.create(
                model="helper", messages=[{"role": "user", "content": "where is A-17?"}]
            )
            await client.close()
        assert completion.choices[0].message.content == "A-17 shipped."
        first_request, second_request, last_request = fake_llm.chat_requests()
        (offered,) = first_request.body["tools"]
        assert offered["function"]["name"] == "lookup_order"
        assert offered["function"]["parameters"] == listed.input_schema
        # the discovered schema is enforced: the made-up argument never reached the server
        wrong = [m["content"] for m in second_request.body["messages"] if m["role"] == "tool"]
        assert "'order_id' is a required property" in json.loads(wrong[0])["error"]
        assert [c.params["arguments"] for c in orders.calls()] == [{"order_id": "A-17"}]
        assert [m["content"] for m in last_request.body["messages"] if m["role"] == "tool"][-1] == (
            "Order A-17 shipped on 2026-05-01."
        )


async def test_a_server_that_cannot_be_listed_fails_the_agent_with_the_reason(tmp_path: Path) -> None:
    async with orders_mcp() as orders:
        closed = free_port()
        cases = {
            "unlisted": (orders.url, "no_such_tool", orders.port),
            "unreachable": (f"http://127.0.0.1:{closed}/mcp", "lookup_order", closed),
        }
        errors = {}
        for case, (url, tool, port) in cases.items():
            tree = spec_tree(tmp_path / case, url=url, tool=tool, port=port)
            loaded = await asyncio.to_thread(load_specs, tree, discovery(tmp_path))
            assert loaded.report.ok
            assert not loaded.ok
            assert loaded.agents == []  # not served, and never with an empty schema
            (errors[case],) = loaded.errors.values()
        for error in errors.values():
            assert "Agent tenant-shop/helper: Tool 'lookup-order' declares no parameters" in error
            assert "declare spec.parameters or make the server reachable" in error
        assert (
            "the MCP server lists no tool 'no_such_tool' (it lists: archived_order, count,"
            in errors["unlisted"]
        )
        assert "could not be reached (ConnectError" in errors["unreachable"]

        # a server outside the tenant's egress allowlist (its port here) is not even asked; `validate`
        # refuses such a Tool before merge, the operator meets it when a Tool is applied directly
        async with httpx.AsyncClient() as http:
            rule = EgressRule(cidr="127.0.0.1/32", ports=[orders.port + 1])
            with pytest.raises(McpDenied, match="is not in the tenant's egress allowlist"):
                await discover_parameters(
                    http, url=orders.url, tool="lookup_order", rules=[rule], headers={}, timeout=5
                )
        assert [s.rpc_method for s in orders.seen if s.rpc_method == "initialize"] == ["initialize"]


# -- sessions per conversation -----------------------------------------------------------------

NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


async def count_in(
    client: openai.AsyncOpenAI,
    fake: FakeLLM,
    conversation: str | None,
    *,
    via: str = "header",
    tool: str = "count",
) -> str:
    """Ask the model to call the counting tool once in `conversation`; what the tool answered."""
    fake.script("gpt-4o-mini", [tool_calls((tool, {})), reply("counted")])
    extra: dict[str, Any] = {}
    if conversation is not None and via == "header":
        extra["extra_headers"] = {"X-Conversation-Id": conversation}
    elif conversation is not None:
        extra["metadata"] = {"conversation_id": conversation}
    await client.chat.completions.create(
        model="helper", messages=[{"role": "user", "content": "count"}], **extra
    )
    (result,) = tool_results(fake)
    return result


async def test_one_mcp_session_per_conversation(local_settings: Settings, fake_llm: FakeLLM) -> None:
    async with orders_mcp() as orders:
        config = make_config(
            tenant_name(),
            tools=[
                mcp_tool("count", orders.url, parameters=NO_ARGUMENTS),
                mcp_tool("fresh-count", orders.url, tool="count", parameters=NO_ARGUMENTS, stateless=True),
            ],
        )
        async with serve(local_settings, config) as served:
            client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
            other = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
            # the server keeps state across the calls of one conversation, and starts over in another
            assert await count_in(client, fake_llm, "c-1") == "1"
            assert await count_in(client, fake_llm, "c-1") == "2"
            assert await count_in(client, fake_llm, "c-2", via="metadata") == "1"
            assert await count_in(client, fake_llm, "c-2", via="header") == "2"
            assert await count_in(client, fake_llm, "c-1", via="metadata") == "3"
            # without a conversation id every call has a session of its own, ended after it
            assert await count_in(client, fake_llm, None) == "1"
            assert await count_in(client, fake_llm, None) == "1"
            # a Tool that wants no session state gets none, even within a conversation
            assert await count_in(client, fake_llm, "c-1", tool="fresh_count") == "1"
            # the same conversation id from another caller is another session
            assert await count_in(other, fake_llm, "c-1") == "1"
            assert await count_in(client, fake_llm, "c-1") == "4"
            kept = {c.session for c in orders.calls()}
            assert len(kept) == 6  # c-1, c-2, two calls without one, the stateless Tool's, the other caller's
            assert len(served.runtime.chat.tools.sessions) == 3

            # the server forgets c-1's session: the next call starts a new one, transparently
            c1 = orders.calls()[-1].session
            assert c1 is not None
            async with httpx.AsyncClient() as http:
                ended = await http.delete(orders.url, headers={"Mcp-Session-Id": c1})
                assert ended.status_code == 200
            assert await count_in(client, fake_llm, "c-1") == "1"
            assert await count_in(client, fake_llm, "c-1") == "2"
            assert orders.calls()[-1].session not in (None, c1)

            for bad in ({"X-Conversation-Id": "has space"}, {"X-Conversation-Id": "x" * 129}):
                with pytest.raises(openai.BadRequestError, match="conversation id is 1 to 128"):
                    await client.chat.completions.create(
                        model="helper", messages=[{"role": "user", "content": "count"}], extra_headers=bad
                    )
            with pytest.raises(openai.BadRequestError, match="name different conversations"):
                await client.chat.completions.create(
                    model="helper",
                    messages=[{"role": "user", "content": "count"}],
                    extra_headers={"X-Conversation-Id": "c-1"},
                    metadata={"conversation_id": "c-2"},
                )
            await client.close()
            await other.close()
            kept_now = {orders.calls()[-1].session, orders.calls()[2].session}  # c-1's new one, c-2's
            assert not kept_now & set(orders.deleted())
        # at shutdown the kept sessions are ended: every session the server issued was deleted
        assert kept_now <= set(orders.deleted())
        assert sorted(orders.issued_sessions) == sorted(orders.deleted())


async def test_idle_and_surplus_sessions_are_ended(local_settings: Settings, fake_llm: FakeLLM) -> None:
    async with orders_mcp() as orders:
        config = make_config(tenant_name(), tools=[mcp_tool("count", orders.url, parameters=NO_ARGUMENTS)])
        idle_settings = local_settings.model_copy(update={"mcp_session_idle_seconds": 0.5})
        async with serve(idle_settings, config) as served:
            client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
            assert await count_in(client, fake_llm, "idle") == "1"
            idle = orders.calls()[-1].session
            assert idle is not None
            # unused for longer than mcp_session_idle_seconds: ended (DELETE), and forgotten
            deadline = time.monotonic() + 10
            while idle not in orders.deleted():
                assert time.monotonic() < deadline, "the idle session was never ended"
                await asyncio.sleep(0.05)
            assert len(served.runtime.chat.tools.sessions) == 0
            assert await count_in(client, fake_llm, "idle") == "1"
            await client.close()

        bounded_settings = local_settings.model_copy(update={"mcp_max_sessions": 2})
        async with serve(bounded_settings, config) as served:
            client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
            assert await count_in(client, fake_llm, "first") == "1"
            assert await count_in(client, fake_llm, "second") == "1"
            assert await count_in(client, fake_llm, "first") == "2"
            second = orders.calls()[-2].session
            # beyond mcp_max_sessions the least recently used session is ended
            assert await count_in(client, fake_llm, "third") == "1"
            assert len(served.runtime.chat.tools.sessions) == 2
            deadline = time.monotonic() + 5
            while second not in orders.deleted():
                assert time.monotonic() < deadline, "the least recently used session was never ended"
                await asyncio.sleep(0.05)
            assert await count_in(client, fake_llm, "first") == "3"  # the recently used one is kept
            assert await count_in(client, fake_llm, "second") == "1"  # the ended one starts over
            await client.close()
