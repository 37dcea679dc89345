"""A real MCP server for tests: the `mcp` package's own `MCPServer` over streamable HTTP, served on
loopback, recording what reaches it over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError as McpToolError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from support.ports import free_port
from support.waiting import wait_until_serving


@dataclass
class Seen:
    """One HTTP request the MCP server received."""

    http_method: str
    rpc_method: str | None
    session: str | None
    protocol_version: str | None
    params: dict[str, Any]
    api_key: str | None = None
    """The `X-Api-Key` header, which tests use as the tool's credential."""


@dataclass
class OrdersMcp:
    """A real MCP server with an order lookup, a tool that refuses, one that crashes, one that
    counts its calls per MCP session and one that does not answer until released; it records what
    reached it over HTTP."""

    port: int
    seen: list[Seen] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    """Calls of `count` per MCP session id."""
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
        def count(ctx: Context) -> str:
            """How many times this tool was called in this MCP session: state the server keeps."""
            session = (ctx.headers or {}).get("mcp-session-id", "")
            self.counts[session] += 1
            return str(self.counts[session])

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
                                headers.get("x-api-key"),
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
                        headers.get("x-api-key"),
                    )
                )
            await app(scope, tapped_receive, tapped_send)

        return recorder

    def calls(self) -> list[Seen]:
        return [s for s in self.seen if s.rpc_method == "tools/call"]

    def deleted(self) -> list[str]:
        """The session ids the client ended (HTTP DELETE)."""
        return [s.session or "" for s in self.seen if s.http_method == "DELETE"]


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
        await wait_until_serving("the MCP server", server, task)
        yield orders
    finally:
        orders.release.set()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@contextlib.contextmanager
def orders_mcp_in_thread() -> Iterator[OrdersMcp]:
    """`orders_mcp` served from a thread of its own, for synchronous tests (the operator's)."""
    started: queue.Queue[OrdersMcp | BaseException] = queue.Queue()
    stop = threading.Event()

    async def main() -> None:
        try:
            async with orders_mcp() as orders:
                started.put(orders)
                while not stop.is_set():
                    await asyncio.sleep(0.05)
        except BaseException as exc:
            started.put(exc)
            raise

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="orders-mcp", daemon=True)
    thread.start()
    orders = started.get(timeout=30)
    if isinstance(orders, BaseException):
        raise RuntimeError("the MCP server did not start") from orders
    try:
        yield orders
    finally:
        stop.set()
        thread.join(timeout=15)
