"""MCP over streamable HTTP: the minimal client the runtime calls tools with, and the discovery of
an MCP tool's input schema.

One rule in one place: an MCP Tool without declared `parameters` offers the model the schema its
server lists for it (`tools/list`, the entry named by the Tool's `tool`, its `inputSchema`). The
operator discovers it when it reconciles the Tool (and writes it to the Tool's status, from where
the Agents' resolved configs take it); `agentplane up`, which has no operator, discovers it when it
loads the specs. Both call `discover_parameters`, which connects only where the tenant's egress
allowlist admits (port included), follows no redirect, reads a bounded answer and gives up after a
timeout: a server that cannot be listed is an `McpError` saying why, never an empty schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from agentplane_platform import egress
from agentplane_platform.api.v1alpha1 import McpTool, Tool, ToolDiscovery
from agentplane_platform.config import ResolvedAuth
from agentplane_platform.specs import dotted
from agentplane_platform.tool_schema import parameters_problems

PROTOCOL_VERSION = "2025-06-18"
CLIENT_INFO = {"name": "agentplane", "version": "0.1.0"}
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest JSON-RPC answer read from a server; a larger one is an error, not a memory problem."""
MAX_SCHEMA_BYTES = 64 * 1024
"""Largest discovered input schema (canonical JSON): it is kept in the Tool's status and in every
resolved config that uses it."""
MAX_LIST_PAGES = 20


class McpError(Exception):
    """An MCP exchange failed; the message says why, for a model (tool calls) or a person (discovery)."""


class McpSessionExpired(McpError):
    """The server answered 404 to a request naming a session: the session is gone (ended, or forgotten
    by the server). The MCP streamable-HTTP transport says to start a new one."""


class McpDenied(McpError):
    """The server's URL is outside the tenant's egress allowlist."""


class McpSession:
    """A minimal MCP client over streamable HTTP: initialize, then JSON-RPC requests; answers come
    as JSON or as a server-sent event stream. Redirects are never followed (the target could be
    outside the egress allowlist)."""

    CLOSE_TIMEOUT = 1.0

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        headers: Mapping[str, str],
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.http = http
        self.url = url
        self.auth_headers = dict(headers)
        """Credentials sent with every request; replaceable between requests (a rotated secret)."""
        self.max_message_bytes = max_message_bytes
        self.session_id: str | None = None
        # the version the server chose in `initialize`; every later request names it, with or
        # without a session (stateless servers issue none)
        self.protocol_version: str | None = None
        self._next_id = 0

    def _headers(self) -> dict[str, str]:
        headers = {
            **self.auth_headers,
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        if self.protocol_version:
            headers["MCP-Protocol-Version"] = self.protocol_version
        return headers

    async def initialize(self) -> None:
        """Start a session (forgetting any earlier one of this object)."""
        self.session_id = None
        self.protocol_version = None
        result = await self.request(
            "initialize",
            {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
        )
        negotiated = result.get("protocolVersion")
        self.protocol_version = negotiated if isinstance(negotiated, str) else PROTOCOL_VERSION
        await self.notify("notifications/initialized")

    async def notify(self, method: str) -> None:
        response = await self.http.post(
            self.url, json={"jsonrpc": "2.0", "method": method}, headers=self._headers()
        )
        await response.aclose()

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The result of one JSON-RPC request; raises `McpError` (`McpSessionExpired` on a 404 for
        a request that named a session)."""
        self._next_id += 1
        ident = self._next_id
        payload = {"jsonrpc": "2.0", "id": ident, "method": method, "params": params}
        async with self.http.stream("POST", self.url, json=payload, headers=self._headers()) as response:
            if not response.is_success:
                message = await http_error(response)
                if response.status_code == 404 and self.session_id:
                    raise McpSessionExpired(message)
                raise McpError(message)
            session = response.headers.get("mcp-session-id")
            if session:
                self.session_id = session
            ctype = response.headers.get("content-type", "")
            try:
                if ctype.startswith("text/event-stream"):
                    message_ = await self._from_events(response, ident)
                else:
                    raw = bytearray()
                    async for piece in response.aiter_bytes():
                        raw += piece
                        if len(raw) > self.max_message_bytes:
                            raise McpError(f"the MCP server's answer to {method} is too large")
                    candidate = json.loads(raw)
                    message_ = candidate if isinstance(candidate, dict) else None
            except ValueError:
                raise McpError(f"the MCP server's answer to {method} is not JSON-RPC") from None
        if message_ is None:
            raise McpError("the MCP server sent no answer")
        if "error" in message_:
            error = message_["error"] or {}
            detail = error.get("message", "unknown") if isinstance(error, dict) else error
            raise McpError(f"MCP error: {str(detail)[:500]}")
        result = message_.get("result")
        return result if isinstance(result, dict) else {}

    async def _from_events(self, response: httpx.Response, ident: int) -> dict[str, Any] | None:
        data_lines: list[str] = []
        size = 0
        async for line in response.aiter_lines():
            size += len(line) + 1
            if size > self.max_message_bytes:
                raise McpError("the MCP server's answer is too large")
            if line.startswith("data:"):
                data_lines.append(line[5:].strip())
            elif not line and data_lines:
                candidate = json.loads("\n".join(data_lines))
                data_lines = []
                if isinstance(candidate, dict) and candidate.get("id") == ident:
                    return candidate
        return None

    async def close(self) -> None:
        """End the session (HTTP DELETE with its id), which stops the server's work on it; bounded,
        as this also runs after a tool's timeout has passed."""
        if self.session_id:
            session, self.session_id = self.session_id, None
            try:
                headers = {**self._headers(), "Mcp-Session-Id": session}
                response = await self.http.delete(self.url, headers=headers, timeout=self.CLOSE_TIMEOUT)
                await response.aclose()
            except httpx.HTTPError:
                pass


async def http_error(response: httpx.Response) -> str:
    """What an answer other than 2xx from an MCP endpoint means, in a sentence."""
    status = f"MCP server answered HTTP {response.status_code}"
    if response.is_redirect:
        # not followed: the target could be outside the egress allowlist
        location = response.headers.get("location", "?")
        return f"{status}, a redirect to {location}; the tool's URL must name the endpoint itself"
    body = b""
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= 2000:
            break
    text = body[:2000].decode("utf-8", errors="replace").strip()
    with contextlib.suppress(ValueError, TypeError, KeyError):  # the MCP SDKs send a JSON-RPC error
        text = str(json.loads(text)["error"]["message"])
    return f"{status}: {text[:500]}" if text else status


async def list_tools(session: McpSession) -> list[dict[str, Any]]:
    """Every tool the server lists (following `nextCursor`, at most `MAX_LIST_PAGES` pages)."""
    tools: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        result = await session.request("tools/list", {"cursor": cursor} if cursor else {})
        page = result.get("tools")
        if not isinstance(page, list):
            raise McpError("the MCP server's tools/list answer has no list of tools")
        tools += [t for t in page if isinstance(t, dict)]
        next_cursor = result.get("nextCursor")
        if not isinstance(next_cursor, str) or not next_cursor:
            return tools
        cursor = next_cursor
    raise McpError(f"the MCP server's tool list goes on beyond {MAX_LIST_PAGES} pages")


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: the form a schema is hashed and kept in."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parameters_hash(parameters: Mapping[str, Any]) -> str:
    """`sha256:<hex>` of the schema's canonical JSON: what a Tool's status shows and `plan` could pin."""
    return "sha256:" + hashlib.sha256(canonical_json(parameters).encode()).hexdigest()


def input_schema(tools: Iterable[Mapping[str, Any]], name: str) -> dict[str, Any]:
    """The `inputSchema` of the listed tool `name`, checked to be a usable object schema."""
    listed = list(tools)
    entry = next((t for t in listed if t.get("name") == name), None)
    if entry is None:
        names = ", ".join(sorted(str(t.get("name")) for t in listed)[:20]) or "none"
        raise McpError(f"the MCP server lists no tool {name!r} (it lists: {names})")
    schema = entry.get("inputSchema")
    if not isinstance(schema, dict):
        raise McpError(f"the MCP server's tool {name!r} has no inputSchema object")
    if len(canonical_json(schema).encode()) > MAX_SCHEMA_BYTES:
        raise McpError(
            f"the inputSchema of tool {name!r} is larger than {MAX_SCHEMA_BYTES // 1024} KiB; "
            "declare spec.parameters instead"
        )
    problems = parameters_problems(schema)
    if problems:
        where = "; ".join(f"{dotted(('inputSchema', *p.path))}: {p.message}" for p in problems[:3])
        raise McpError(f"the inputSchema of tool {name!r} is not a usable JSON Schema ({where})")
    return schema


async def discover_parameters(
    http: httpx.AsyncClient,
    *,
    url: str,
    tool: str,
    rules: Iterable[egress.Rule],
    headers: Mapping[str, str],
    timeout: float,
) -> dict[str, Any]:
    """The input schema the MCP server at `url` lists for `tool`; raises `McpDenied` when the
    tenant's egress `rules` do not admit the URL (nothing is sent), `McpError` when the server
    cannot be listed (within `timeout` seconds) or does not list a usable schema for the tool."""
    if not egress.allows_url(rules, url):
        raise McpDenied(f"{url} is not in the tenant's egress allowlist (host and port)")
    session = McpSession(http, url, headers)
    try:
        async with asyncio.timeout(timeout):
            try:
                await session.initialize()
                listed = await list_tools(session)
            finally:
                await session.close()
    except TimeoutError:
        raise McpError(f"the MCP server did not answer within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise McpError(f"the MCP server could not be reached ({type(exc).__name__}: {exc})") from None
    return input_schema(listed, tool)


def needs_discovery(tool: Tool) -> McpTool | None:
    """The spec of an MCP Tool that declares no parameters (its schema is discovered), else None."""
    spec = tool.spec
    return spec if isinstance(spec, McpTool) and spec.parameters is None else None


async def discover_tool(
    http: httpx.AsyncClient,
    tool: Tool,
    rules: Iterable[egress.Rule],
    *,
    credential: str | None,
    previous: ToolDiscovery | None,
    timeout: float,
) -> ToolDiscovery:
    """What an MCP Tool without parameters shows in `status.discovered` (and configs resolve from):
    the schema its server lists now, with the time it was first listed — `previous` when the
    server lists the same schema again. `credential`: the value of the Tool's `auth` secret.
    Raises `McpError` (`McpDenied`) as `discover_parameters` does."""
    spec = needs_discovery(tool)
    if spec is None:
        raise ValueError(f"Tool {tool.name!r} declares its parameters")
    headers: dict[str, str] = {}
    if spec.auth is not None:
        if credential is None:
            raise McpError("the tool's credential is not available to list the MCP server's tools")
        headers = ResolvedAuth.of(spec.auth).headers(credential)
    schema = await discover_parameters(
        http, url=spec.url, tool=spec.tool, rules=rules, headers=headers, timeout=timeout
    )
    digest = parameters_hash(schema)
    if previous is not None and (previous.url, previous.tool, previous.parameters_hash) == (
        spec.url,
        spec.tool,
        digest,
    ):
        return previous
    return ToolDiscovery(
        tool=spec.tool,
        url=spec.url,
        parameters=canonical_json(schema),
        parameters_hash=digest,
        discovered_at=datetime.now(UTC).replace(microsecond=0),
    )


__all__ = [
    "MAX_SCHEMA_BYTES",
    "McpDenied",
    "McpError",
    "McpSession",
    "McpSessionExpired",
    "canonical_json",
    "discover_parameters",
    "discover_tool",
    "input_schema",
    "list_tools",
    "needs_discovery",
    "parameters_hash",
]
