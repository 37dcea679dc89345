"""The OpenAI-compatible chat API: `POST /chat/completions`, `GET /models`."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response

from agentplane_runtime.agents import AgentNotFound
from agentplane_runtime.api.deps import CurrentAgent, CurrentChatCaller, CurrentPrincipal, client_address
from agentplane_runtime.api.schemas import ChatCompletionRequest, ModelCard, ModelList
from agentplane_runtime.chat import CONVERSATION_HEADER
from agentplane_runtime.core.errors import ApiError
from agentplane_runtime.services import Runtime

_HANDLED = "agentplane_chat_handled"
"""Set on the request's state once `ChatService.handle` has it: from then on it counts the request."""


class _CountedRoute(APIRoute):
    """A route whose requests refused before its endpoint runs (authentication, an invalid body)
    are counted in `agentplane_requests_total` too, so every chat request is counted once."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def counted(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                if not getattr(request.state, _HANDLED, False):
                    _count_refusal(request, exc)
                raise

        return counted


def _count_refusal(request: Request, exc: Exception) -> None:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return
    try:  # a request for no agent is nobody's (and its path must not become a label)
        agent = runtime.agents.get(request.path_params.get("tenant"), request.path_params.get("agent"))
    except AgentNotFound:
        return
    if isinstance(exc, ApiError):
        code = exc.status
    elif isinstance(exc, RequestValidationError):
        code = 400
    elif isinstance(exc, HTTPException):
        code = exc.status_code
    else:
        code = 500
    runtime.chat.refused(agent, code)


router = APIRouter(tags=["chat"])


async def chat_completions(
    request: Request, caller: CurrentChatCaller, body: ChatCompletionRequest
) -> Response:
    setattr(request.state, _HANDLED, True)
    return await caller.runtime.chat.handle(
        caller.agent,
        body,
        caller.principal,
        caller.request_id,
        conversation=request.headers.get(CONVERSATION_HEADER),
        source=client_address(request),
    )


router.add_api_route(
    "/chat/completions",
    chat_completions,
    methods=["POST"],
    route_class_override=_CountedRoute,
    summary="Create a chat completion (OpenAI-compatible; `stream: true` for server-sent events)",
    responses={
        200: {"description": "A `chat.completion`, or a `text/event-stream` of `chat.completion.chunk`s"},
        400: {"description": "Invalid request"},
        401: {"description": "Missing or invalid credentials"},
        403: {"description": "The credentials do not allow this agent"},
        413: {"description": "Body too large"},
        429: {"description": "Over a quota (see Retry-After and x-ratelimit-*)"},
        502: {"description": "No model answered"},
        503: {"description": "Every model's circuit is open"},
        504: {"description": "The agent's time limit was reached"},
    },
)


@router.get("/models", summary="The agent, as the one model this endpoint serves")
async def list_models(agent: CurrentAgent, principal: CurrentPrincipal) -> ModelList:
    config = agent.config
    return ModelList(
        data=[ModelCard(id=config.agent, created=0, owned_by=config.tenant, description=config.description)]
    )
