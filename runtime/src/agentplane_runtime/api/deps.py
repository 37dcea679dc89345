"""FastAPI dependencies: the runtime's shared clients, the agent a route serves, the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from opentelemetry import trace

from agentplane_platform.audit import AuditAction, AuditOutcome
from agentplane_runtime.agents import AgentContext, AgentNotFound
from agentplane_runtime.audit import Actor, audit_event
from agentplane_runtime.auth import AuthError, AuthUnavailable, Principal
from agentplane_runtime.core.errors import ApiError
from agentplane_runtime.services import Runtime

# Every dependency is `async def`: FastAPI runs a plain `def` one in a worker thread, a thread hop per
# dependency per request.


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_agent(request: Request, runtime: RuntimeDep) -> AgentContext:
    """The agent of this route: from the `{tenant}`/`{agent}` path parameters when the agent router
    is mounted under them (several agents in one app), else the runtime's default agent."""
    params = request.path_params
    try:
        return runtime.agents.get(params.get("tenant"), params.get("agent"))
    except AgentNotFound:
        raise ApiError(404, "no such agent", type="not_found_error", code="agent_not_found") from None


CurrentAgent = Annotated[AgentContext, Depends(get_agent)]


def client_address(request: Request) -> str | None:
    """The caller's address (the proxy's, unless the server is told to trust forwarded headers)."""
    return request.client.host if request.client else None


def actor(request: Request, principal: Principal | None) -> Actor:
    """Who is calling and from where, for the audit trail."""
    return Actor.of(principal, source=client_address(request), request_id=_request_id(request))


async def denied(
    request: Request,
    runtime: Runtime,
    agent: AgentContext,
    principal: Principal,
    target: str,
    error: ApiError,
) -> ApiError:
    """`error` (a 403), once the audit trail has it: `access.denied` of `target`, with its reason."""
    details = {"reason": error.message, "path": request.url.path, "method": request.method}
    await _audit_refusal(request, runtime, agent, AuditAction.ACCESS_DENIED, principal, target, details)
    return error


async def _audit_refusal(
    request: Request,
    runtime: Runtime,
    agent: AgentContext,
    action: AuditAction,
    principal: Principal | None,
    target: str,
    details: dict[str, str],
) -> None:
    """The audit record of a caller refused (`auth.failed` with no principal, else `access.denied`)."""
    config = agent.config
    await runtime.audit.record(
        audit_event(
            action,
            tenant=config.tenant,
            actor=actor(request, principal),
            outcome=AuditOutcome.DENIED if principal is not None else AuditOutcome.FAILURE,
            agent=config.agent,
            target=target,
            details=details,
        )
    )


async def get_principal(request: Request, runtime: RuntimeDep, agent: CurrentAgent) -> Principal:
    """The authenticated caller, allowed to use this agent (401/403 otherwise, with no detail).
    Both refusals are audited (`auth.failed`, `access.denied`)."""
    config = agent.config
    try:
        principal = await runtime.authenticator.authenticate(request.headers.get("authorization"))
    except AuthError as exc:
        details = {"reason": str(exc), "path": request.url.path}
        await _audit_refusal(
            request, runtime, agent, AuditAction.AUTH_FAILED, None, f"agent:{config.agent}", details
        )
        raise ApiError(
            401,
            str(exc),
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        ) from None
    except AuthUnavailable:
        raise ApiError(
            503,
            "authentication is unavailable, retry shortly",
            type="api_error",
            headers={"Retry-After": "5"},
        ) from None
    # on the request's span: authentication has a span of its own only where it waited (`auth`)
    trace.get_current_span().set_attribute("agentplane.auth.method", principal.method)
    if not principal.may_use(config.tenant, config.agent):
        raise await denied(
            request,
            runtime,
            agent,
            principal,
            f"agent:{config.agent}",
            ApiError(403, "not allowed to use this agent", type="permission_error", code="forbidden"),
        )
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def _request_id(request: Request) -> str:
    value: str = request.scope.get("state", {}).get("request_id") or ""
    return value


async def request_id(request: Request) -> str:
    """The request's id (`RequestContextMiddleware` gave it one)."""
    return _request_id(request)


RequestId = Annotated[str, Depends(request_id)]


@dataclass(frozen=True, slots=True)
class ChatCaller:
    """What the chat route needs before its body: the runtime, the agent, the authenticated caller and
    the request's id. One dependency instead of four: FastAPI's own work for each (its cache keys,
    scope and signature checks) was about 6 % of the runtime's CPU for a streamed chat."""

    runtime: Runtime
    agent: AgentContext
    principal: Principal
    request_id: str


async def chat_caller(request: Request) -> ChatCaller:
    """The route's runtime, agent and caller, as `get_runtime`, `get_agent` and `get_principal` give
    them (in that order: a caller is refused before its body is read)."""
    runtime = await get_runtime(request)
    agent = await get_agent(request, runtime)
    principal = await get_principal(request, runtime, agent)
    return ChatCaller(runtime, agent, principal, _request_id(request))


CurrentChatCaller = Annotated[ChatCaller, Depends(chat_caller)]
