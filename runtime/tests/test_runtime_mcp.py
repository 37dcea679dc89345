"""MCP tools against a real MCP server: the `mcp` package's own `MCPServer` over streamable HTTP,
served on loopback, driven through the runtime's tool loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError as McpToolError
from runtime_support import free_port, make_config, serve, tenant_name
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentplane_runtime import Settings
from agentplane_runtime.tools import McpSession, ToolError
from support.fake_llm import FakeLLM, reply, tool_calls

pytestmark = pytest.mark.asyncio


@dataclass
class Seen:
    """One HTTP request the MCP server received."""

    http_method: str
    rpc_method: str | None
    session: str | None
    protocol_version: str | None
    params: dict[str, Any]


@dataclass
class OrdersMcp:
    """A real MCP server with an order lookup, a tool that refuses, one that crashes and one that
    does not answer until released; it records what reached it over HTTP."""

    port: int
    seen: list[Seen] = field(default_factory=list)
    issued_sessions: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    slow_cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def server(self) -> MCPServer:
        server: MCPServer = MCPServer("orders", log_level="WARNING")

        @server.tool()
        def lookup_order(order_id: str) -> str:
            """Where an order is."""
            return f"Order {order_id} shipped on 2026-05-01."

        @server.tool()
        def archived_order(order_id: str) -> str:
            """An order the tool refuses to look up."""
            raise McpToolError(f"order {order_id} is archived")

        @server.tool()
        def crash() -> str:
            """A tool with a bug."""
            raise RuntimeError("password=hunter2")

        @server.tool()
        async def slow() -> str:
            """A tool that answers only when the test lets it."""
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.slow_cancelled.set()
                raise
            return "too late"

        return server

    def recording(self, app: ASGIApp) -> ASGIApp:
        """`app`, noting each request (its JSON-RPC method from the body) and each new session id."""

        async def recorder(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            body = bytearray()

            async def tapped_receive() -> Message:
                message = await receive()
                if message["type"] == "http.request" and scope["method"] == "POST":
                    body.extend(message.get("body", b""))
                    if not message.get("more_body", False):
                        payload = json.loads(body) if body else {}
                        self.seen.append(
                            Seen(
                                scope["method"],
                                payload.get("method"),
                                headers.get("mcp-session-id"),
                                headers.get("mcp-protocol-version"),
                                payload.get("params") or {},
                            )
                        )
                return message

            async def tapped_send(message: Message) -> None:
                if message["type"] == "http.response.start" and "mcp-session-id" not in headers:
                    for key, value in message.get("headers", []):
                        if key.decode().lower() == "mcp-session-id":
                            self.issued_sessions.append(value.decode())
                await send(message)

            if scope["method"] != "POST":
                self.seen.append(
                    Seen(
                        scope["method"],
                        None,
                        headers.get("mcp-session-id"),
                        headers.get("mcp-protocol-version"),
                        {},
                    )
                )
            await app(scope, tapped_receive, tapped_send)

        return recorder

    def calls(self) -> list[Seen]:
        return [s for s in self.seen if s.rpc_method == "tools/call"]


@contextlib.asynccontextmanager
async def orders_mcp(*, stateless: bool = False) -> AsyncIterator[OrdersMcp]:
    """Serve the orders MCP server on a free loopback port: stateful with SSE answers (the SDK's
    default), or stateless with plain JSON answers."""
    orders = OrdersMcp(free_port())
    app = orders.server().streamable_http_app(stateless_http=stateless, json_response=stateless)
    server = uvicorn.Server(
        uvicorn.Config(
            orders.recording(app),
            host="127.0.0.1",
            port=orders.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the MCP server stopped during startup")
            await asyncio.sleep(0.01)
        yield orders
    finally:
        orders.release.set()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def mcp_tool(name: str, url: str, tool: str | None = None, timeout: int = 5) -> dict[str, Any]:
    return {
        "type": "mcp",
        "name": name,
        "function_name": name.replace("-", "_"),
        "description": f"the {name} tool",
        "timeout_seconds": timeout,
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        "url": url,
        "tool": tool or name.replace("-", "_"),
        "auth": None,
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
        with pytest.raises(ToolError, match=r"^MCP server answered HTTP 404: Session not found$"):
            await session.request("tools/call", {"name": "lookup_order", "arguments": {"order_id": "A-17"}})
