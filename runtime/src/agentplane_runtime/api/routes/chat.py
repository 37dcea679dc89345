"""The OpenAI-compatible chat API: `POST /chat/completions`, `GET /models`."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from agentplane_runtime.api.deps import CurrentAgent, CurrentPrincipal, RequestId, RuntimeDep
from agentplane_runtime.api.schemas import ChatCompletionRequest, ModelCard, ModelList

router = APIRouter(tags=["chat"])


@router.post(
    "/chat/completions",
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
async def chat_completions(
    body: ChatCompletionRequest,
    agent: CurrentAgent,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    request_id: RequestId,
) -> Response:
    return await runtime.chat.handle(agent, body, principal, request_id)


@router.get("/models", summary="The agent, as the one model this endpoint serves")
async def list_models(agent: CurrentAgent, principal: CurrentPrincipal) -> ModelList:
    config = agent.config
    return ModelList(
        data=[ModelCard(id=config.agent, created=0, owned_by=config.tenant, description=config.description)]
    )
