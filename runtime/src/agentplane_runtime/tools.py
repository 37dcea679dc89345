"""Tools the model may call: `http` endpoints, `mcp` server tools (streamable HTTP), and the
builtins `retrieval` and `calculator`. A failing tool becomes an error result for the model."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import math
import operator
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agentplane_platform import egress
from agentplane_platform.api.v1alpha1 import SecretRef
from agentplane_platform.config import (
    AgentConfig,
    ResolvedAuth,
    ResolvedBuiltinTool,
    ResolvedHttpTool,
    ResolvedMcpTool,
    ResolvedTool,
)
from agentplane_platform.mcp import McpError
from agentplane_runtime.mcp_sessions import McpSessions, SessionKey
from agentplane_runtime.tool_arguments import UnusableParameters, checked_arguments, parameters_of

MAX_TOOL_RESULT_CHARS = 32_000


class ToolError(Exception):
    """A tool call failed; the message is what the model is told."""


class ToolTimeout(ToolError):
    """The tool did not answer within its timeout (or the request's time left)."""


class ToolDenied(ToolError):
    """The tool's destination is not in the tenant's egress allowlist."""


def tool_definitions(config: AgentConfig) -> list[dict[str, Any]]:
    """The agent's tools as OpenAI function tools."""
    definitions = []
    for tool in config.tools:
        definitions.append(
            {
                "type": "function",
                "function": {
                    "name": tool.function_name,
                    "description": tool.description,
                    "parameters": parameters_of(tool),
                },
            }
        )
    return definitions


# -- calculator ---------------------------------------------------------------------------------

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
    "exp": math.exp,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def calculate(expression: str) -> float | int:
    """Evaluate arithmetic safely: numbers, + - * / // % **, parentheses, a few math functions."""
    if len(expression) > 1000:
        raise ToolError("expression too long")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {exc.msg}") from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            return node.value
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and (abs(right) > 1000 or abs(left) > 1e12):
                raise ToolError("exponent too large")
            if isinstance(node.op, ast.Mult | ast.Add | ast.Sub) and max(abs(left), abs(right)) > 1e300:
                raise ToolError("number too large")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
            and len(node.args) <= 8
        ):
            return _FUNCTIONS[node.func.id](*[ev(a) for a in node.args])
        raise ToolError(f"unsupported expression element: {type(node).__name__}")

    try:
        value = ev(tree)
    except ToolError:
        raise
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise ToolError(f"cannot compute: {exc}") from None
    if isinstance(value, int) and value.bit_length() > 4000:
        raise ToolError("result too large")
    if not isinstance(value, int | float):
        raise ToolError("the result is not a number")
    return value


# -- secrets and egress ------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretReader:
    """Reads tool credentials from mounted files (Kubernetes Secret volumes, Key Vault CSI mount)."""

    secrets_dir: Path
    keyvault_dir: Path

    def read(self, tool_name: str, ref: SecretRef) -> str:
        if ref.kubernetes is not None:
            path = self.secrets_dir / tool_name / ref.kubernetes.key
        elif ref.key_vault is not None:
            path = self.keyvault_dir / ref.key_vault.name
        else:  # pragma: no cover - the model refuses it
            raise ToolError("the tool's credential is not configured")
        try:
            return path.read_text().strip()
        except OSError:
            raise ToolError("the tool's credential is not available") from None


def auth_headers(auth: ResolvedAuth | None, tool: str, secrets: SecretReader) -> dict[str, str]:
    """The header carrying the tool's credential (none without `auth`); raises `ToolError`."""
    return auth.headers(secrets.read(tool, auth.secret)) if auth is not None else {}


# -- execution ---------------------------------------------------------------------------------

Retrieve = Callable[[str], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Conversation:
    """The conversation a request belongs to, and who asks: MCP sessions are kept per both."""

    id: str
    caller: str


class ToolRunner:
    """Executes the agents' tool calls; MCP sessions are kept per conversation in `sessions`."""

    def __init__(self, http: httpx.AsyncClient, secrets: SecretReader, sessions: McpSessions) -> None:
        self.http = http
        self.secrets = secrets
        self.sessions = sessions

    async def aclose(self) -> None:
        """End the kept MCP sessions."""
        await self.sessions.aclose()

    async def run(
        self,
        config: AgentConfig,
        tool: ResolvedTool,
        arguments: str,
        *,
        timeout: float,
        retrieve: Retrieve,
        conversation: Conversation | None = None,
    ) -> str:
        """The tool's result as text for the model; raises `ToolError`, or `InvalidArguments` before
        any call when the arguments do not match the tool's parameters."""
        try:
            args = checked_arguments(config, tool, arguments)
        except UnusableParameters as exc:
            raise ToolError(str(exc)) from None
        try:
            async with asyncio.timeout(timeout):
                if isinstance(tool, ResolvedBuiltinTool):
                    if tool.builtin == "calculator":
                        return json.dumps({"result": calculate(str(args.get("expression", "")))})
                    return await retrieve(str(args.get("query", "")))
                if isinstance(tool, ResolvedHttpTool):
                    return await self._http(config, tool, args)
                return await self._mcp(config, tool, args, conversation)
        except (TimeoutError, httpx.TimeoutException):
            raise ToolTimeout(f"the tool did not answer within {timeout:.0f} s") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"the tool could not be reached ({type(exc).__name__})") from None

    async def _http(self, config: AgentConfig, tool: ResolvedHttpTool, args: dict[str, Any]) -> str:
        if not egress.allows_url(config.egress, tool.url, check_port=False):
            raise ToolDenied("the tool's host is not in the tenant's egress allowlist")
        headers = {**tool.headers, **auth_headers(tool.auth, tool.name, self.secrets)}
        request = self.http.build_request(
            tool.method,
            tool.url,
            params={k: str(v) for k, v in args.items()} if tool.method == "GET" else None,
            json=args if tool.method != "GET" else None,
            headers=headers,
        )
        response = await self.http.send(request, stream=True, follow_redirects=False)
        try:
            body = bytearray()
            truncated = False
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) > tool.max_response_bytes:
                    del body[tool.max_response_bytes :]
                    truncated = True
                    break
        finally:
            await response.aclose()
        text = body.decode("utf-8", errors="replace")
        if response.status_code >= 400:
            raise ToolError(f"HTTP {response.status_code}: {text[:500]}")
        return text[:MAX_TOOL_RESULT_CHARS] + ("\n[response truncated]" if truncated else "")

    async def _mcp(
        self,
        config: AgentConfig,
        tool: ResolvedMcpTool,
        args: dict[str, Any],
        conversation: Conversation | None,
    ) -> str:
        if not egress.allows_url(config.egress, tool.url, check_port=False):
            raise ToolDenied("the MCP server's host is not in the tenant's egress allowlist")
        headers = auth_headers(tool.auth, tool.name, self.secrets)
        key = None
        if conversation is not None and not tool.stateless:
            key = SessionKey(
                tenant=config.tenant,
                agent=config.agent,
                caller=conversation.caller,
                url=tool.url,
                # a digest of the credential sent, never the value: another credential, another session
                credential=hashlib.sha256(json.dumps(headers, sort_keys=True).encode()).hexdigest()
                if headers
                else "",
                conversation=conversation.id,
            )
        try:
            result = await self.sessions.call(
                key, tool.url, headers, "tools/call", {"name": tool.tool, "arguments": args}
            )
        except McpError as exc:
            raise ToolError(str(exc)) from None
        parts = []
        for item in result.get("content") or []:
            if isinstance(item, dict) and item.get("type") == "text":
                parts.append(str(item.get("text", "")))
            elif isinstance(item, dict):
                parts.append(json.dumps(item)[:2000])
        text = "\n".join(parts) if parts else json.dumps(result.get("structuredContent") or {})
        if result.get("isError"):
            raise ToolError(text[:2000] or "the MCP tool reported an error")
        return text[:MAX_TOOL_RESULT_CHARS]
