"""One chat request, in order: retrieval, prompt, quota, the LLM (with the tool loop), metering.

Authentication happens before (a dependency of the route); everything after it is here. Errors
before the first byte of a response are `ApiError`s (JSON with the request id); an error in the
middle of a stream is sent as a final `{"error": ...}` event, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.exceptions import RedisError
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from agentplane_platform.config import AgentConfig, ResolvedKnowledge, ResolvedTool
from agentplane_runtime.agents import AgentContext
from agentplane_runtime.api.schemas import ChatCompletionRequest, ChatMessage
from agentplane_runtime.audit import Actor, AuditLog, quota_refusal_event, tool_call_event
from agentplane_runtime.auth import Principal
from agentplane_runtime.core.config import Settings
from agentplane_runtime.core.errors import ApiError
from agentplane_runtime.core.telemetry import (
    GEN_AI_OPERATION,
    GEN_AI_SERVER_PROVIDER,
    Telemetry,
    status_class,
)
from agentplane_runtime.documents import CHUNK_CHARS
from agentplane_runtime.embeddings import ModelEmbedder
from agentplane_runtime.llm import Attempt, Caller, LLMClient, count_text_tokens, price_unknown, timed
from agentplane_runtime.providers import ProviderError
from agentplane_runtime.quotas import QuotaExceeded, QuotaGate, Reservation
from agentplane_runtime.retrieval import Hit, KnowledgeService, RetrievalUnavailable, estimate_tokens
from agentplane_runtime.tool_arguments import InvalidArguments
from agentplane_runtime.tools import Conversation, ToolDenied, ToolError, ToolRunner, ToolTimeout
from agentplane_runtime.usage import UsageEvent, UsageRecorder, embedding_event, now_utc

log = logging.getLogger("agentplane.runtime.chat")

CONVERSATION_HEADER = "X-Conversation-Id"
"""Names the conversation a request belongs to (or `metadata.conversation_id` in the body): the MCP
tools' calls of one conversation share a session. Without it, every MCP call has a session of its own."""
_CONVERSATION_ID = re.compile(r"[\x21-\x7e]{1,128}")

BUDGET_HEADER = "X-Budget-Remaining-USD"
"""On a chat response of a tenant with a monthly budget: what is left of it, in USD (the month's spend
the quota store knew at admission, plus what this request had cost when the headers were sent)."""

CONTEXT_HEADER = "\n\nContext from the knowledge base (cite the sources by their number when you use them):\n"


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the first LLM call of a request is made of, once retrieval and admission are done."""

    messages: list[dict[str, Any]]
    """The system prompt (with the knowledge context) and the conversation."""
    params: dict[str, Any]
    """The OpenAI parameters (temperature, max_tokens, ...; None where unset)."""
    tools: list[dict[str, Any]]
    """The agent's tools as function definitions (none when it may make no tool call)."""


@dataclass
class RequestState:
    """Accounting of one request."""

    request_id: str
    agent: AgentContext
    principal: Principal
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    deadline: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    model: str | None = None
    ttft: float | None = None
    tool_calls: int = 0
    llm_calls: int = 0
    status: str = "ok"
    http_status: int = 200
    error_type: str | None = None
    reservation: Reservation | None = None
    retrieval: str = "none"
    sources: list[dict[str, Any]] = field(default_factory=list)
    max_tokens: int = 0
    fallback: bool = False
    """Whether `model`, the model that answered, is one of the agent's fallbacks."""
    caller: Caller = field(init=False)
    """The request as the LLM client sees it; adds up the time spent waiting on providers."""
    tool_seconds: float = 0.0
    """Wall time spent waiting on tool calls (calls made together count once)."""
    conversation: Conversation | None = None
    source: str | None = None
    """The client's address (for the audit trail)."""
    """The conversation the request names, if any, and its caller."""
    prompt_reserved: int = 0
    """Tokens the admission reserved for the first LLM call (its prompt before retrieval, and its output)."""
    embedding_reserved: int = 0
    """Tokens reserved for embeddings and not yet claimed by one (`ChatEmbeddingMeter`)."""
    embedding_tokens: int = 0
    """Tokens of the request's embedding calls (its query's, a knowledge tool's), as the provider counted."""
    embedding_cost: float = 0.0
    finish_reason: str = "stop"
    """The answer's finish reason (the last LLM call's, or `stop`)."""
    current: Attempt | None = None
    """The LLM call whose answer is being read (None between calls): `_finish` abandons it."""

    def __post_init__(self) -> None:
        config = self.agent.config
        self.caller = Caller(config.tenant, config.agent, prices=config.model_prices)

    def metadata(self) -> dict[str, Any]:
        return {
            "agent": self.agent.config.agent,
            "prompt": {"name": self.agent.config.prompt.name, "version": self.agent.config.prompt.version},
            "retrieval": {"status": self.retrieval, "sources": self.sources},
            "tool_calls": self.tool_calls,
        }

    def answered(self, attempt: Attempt) -> None:
        """An LLM call answered: the request's model is now the one that did."""
        self.model = attempt.model
        self.fallback = attempt.fallback

    def account(self, model: str, prompt_tokens: int, completion_tokens: int, cost: float) -> None:
        self.model = model
        self.llm_calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost += cost


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    data: dict[str, Any] = {
        "role": message.role,
        "content": message.text() if message.content is not None else None,
    }
    if message.name:
        data["name"] = message.name
    if message.tool_calls:
        data["tool_calls"] = [c.model_dump() for c in message.tool_calls]
    if message.tool_call_id:
        data["tool_call_id"] = message.tool_call_id
    return data


def conversation_id(header: str | None, body: ChatCompletionRequest) -> str | None:
    """The conversation the request names: `X-Conversation-Id`, else `metadata.conversation_id`."""
    in_body = (body.metadata or {}).get("conversation_id")
    if header is not None and in_body is not None and header != in_body:
        raise ApiError(
            400,
            f"the {CONVERSATION_HEADER} header and metadata.conversation_id name different conversations",
            param="metadata.conversation_id",
        )
    value = header if header is not None else in_body
    if value is not None and not _CONVERSATION_ID.fullmatch(value):
        raise ApiError(
            400,
            "a conversation id is 1 to 128 visible ASCII characters (no spaces)",
            param="metadata.conversation_id" if header is None else CONVERSATION_HEADER,
        )
    return value


class ChatEmbeddingMeter:
    """Meters the embeddings of one chat request: its tokens were reserved with the request's
    (`_prepare` reserves the query's), or are reserved on top of them (a knowledge tool's queries);
    each provider call writes its usage record, and its tokens and cost are settled with the request's."""

    def __init__(self, service: ChatService, state: RequestState) -> None:
        self.service = service
        self.state = state

    async def admit(self, model: str, texts: list[str]) -> None:
        state, service = self.state, self.service
        if service.llm.price(state.caller, model) is None:
            raise price_unknown(model)
        need = service.embedding_reserve(model, texts)
        if need <= state.embedding_reserved:
            state.embedding_reserved -= need
            return
        if state.reservation is not None and not await service.quota.reserve_more(
            state.reservation, state.agent.config.quota, state.principal.key_limits, need
        ):
            raise ApiError(
                429,
                "the tenant's tokens per minute limit is reached",
                type="rate_limit_error",
                code="tokens_per_minute",
                headers={"Retry-After": "60"},
            )

    async def done(self, model: str, texts: list[str], tokens: int | None, seconds: float) -> None:
        state, service = self.state, self.service
        used = tokens if tokens is not None else count_text_tokens(model, texts)
        cost = service.llm.cost(state.caller, model, used, 0)
        state.embedding_tokens += used
        state.embedding_cost += cost
        await service.metered(
            state.agent.config, state.principal, state.request_id, model, used, cost, seconds
        )

    async def failed(self, model: str, texts: list[str]) -> None:
        """Nothing to record: the request's settlement gives back what the call did not use."""


class EmbeddingMeter:
    """Meters the embeddings of a request that is no chat (a document upload, a direct query): each
    provider call is admitted against the tenant's (and key's) tokens per minute and budget as a
    request of its own, writes its usage record, and is settled to the tokens the provider counted."""

    def __init__(
        self,
        service: ChatService,
        agent: AgentContext,
        principal: Principal,
        request_id: str,
        source: str | None = None,
    ) -> None:
        self.service = service
        self.agent = agent
        self.principal = principal
        self.request_id = request_id
        self.source = source
        """The caller's address, for the audit trail."""
        config = agent.config
        self.caller = Caller(config.tenant, config.agent, prices=config.model_prices)
        self._reservation: Reservation | None = None

    async def admit(self, model: str, texts: list[str]) -> None:
        service, config = self.service, self.agent.config
        if service.llm.price(self.caller, model) is None:
            raise price_unknown(model)
        tokens = service.embedding_reserve(model, texts)
        try:
            self._reservation = await service.quota.admit(config.quota, self.principal.key_limits, tokens)
        except QuotaExceeded as exc:
            service.metrics.quota_rejections.labels(config.tenant, config.agent, exc.limit).inc()
            if service.audit is not None:
                who = Actor.of(self.principal, source=self.source, request_id=self.request_id)
                await service.audit.record(
                    quota_refusal_event(config.tenant, config.agent, who, exc.limit, exc.message)
                )
            raise quota_error(exc) from None
        except (RedisError, OSError, TimeoutError) as exc:  # fail open, as a chat does
            log.warning(
                "quota store error for %s/%s (%s: %s); embedding admitted",
                config.tenant, config.agent, type(exc).__name__, exc,
            )  # fmt: skip
            self._reservation = None

    async def done(self, model: str, texts: list[str], tokens: int | None, seconds: float) -> None:
        service, config = self.service, self.agent.config
        used = tokens if tokens is not None else count_text_tokens(model, texts)
        cost = service.llm.cost(self.caller, model, used, 0)
        await self._settle(used, cost)
        await service.metered(config, self.principal, self.request_id, model, used, cost, seconds)

    async def failed(self, model: str, texts: list[str]) -> None:
        await self._settle(0, 0.0)

    async def _settle(self, used: int, cost: float) -> None:
        reservation, self._reservation = self._reservation, None
        if reservation is not None:  # sent with the next round trip; a failure is logged there
            self.service.quota.settle(reservation, used, cost)


class ChatService:
    """Serves chat completions for any agent, sharing the runtime's clients."""

    def __init__(
        self,
        *,
        settings: Settings,
        llm: LLMClient,
        quota: QuotaGate,
        usage: UsageRecorder,
        knowledge: KnowledgeService,
        tools: ToolRunner,
        telemetry: Telemetry,
        audit: AuditLog | None = None,
    ) -> None:
        self.settings = settings
        self.llm = llm
        self.quota = quota
        self.usage = usage
        self.knowledge = knowledge
        self.tools = tools
        self.telemetry = telemetry
        self.audit = audit
        self.tracer = telemetry.tracer
        self.metrics = telemetry.metrics
        self._settling: set[asyncio.Future[bool]] = set()  # settlements not sent yet
        self._recording: set[asyncio.Task[None]] = set()  # usage records their settlement did not carry

    async def aclose(self) -> None:
        """Send the settlements still waiting, and record the usage they could not carry."""
        await self.quota.flush()
        if self._settling:  # done now; awaited so their callbacks have run
            await asyncio.gather(*self._settling)
        if self._recording:
            await asyncio.gather(*self._recording)

    # -- tokens ----------------------------------------------------------------------------

    def embedding_reserve(self, model: str, texts: list[str]) -> int:
        """The tokens reserved for embedding `texts` with `model`: litellm's count, plus the margin."""
        return math.ceil(count_text_tokens(model, texts) * (1 + self.settings.quota_prompt_margin))

    def metered_bases(self, config: AgentConfig) -> list[ResolvedKnowledge]:
        """The agent's knowledge bases whose embeddings are provider calls (metered and priced)."""
        embedder = self.knowledge.embedder
        if isinstance(embedder, ModelEmbedder):
            return [kb for kb in config.knowledge if embedder.metered(kb.embedding_model)]
        return [kb for kb in config.knowledge if not kb.embedding_model.startswith("local/")]

    async def metered(
        self,
        config: AgentConfig,
        principal: Principal,
        request_id: str,
        model: str,
        tokens: int,
        cost: float,
        seconds: float,
    ) -> None:
        """A provider embedding call is done: its tokens and cost in the metrics (by its model), and its
        usage record."""
        labels = (config.tenant, config.agent, model)
        self.metrics.tokens.labels(*labels, "input").inc(tokens)
        if cost:
            self.metrics.cost.labels(*labels).inc(cost)
        await self.usage.record(
            embedding_event(
                request_id=request_id,
                tenant=config.tenant,
                agent=config.agent,
                api_key_id=principal.key_id,
                subject=principal.subject,
                model=model,
                tokens=tokens,
                cost=cost,
                seconds=seconds,
            )
        )

    def embedding_meter(
        self, agent: AgentContext, principal: Principal, request_id: str, source: str | None = None
    ) -> EmbeddingMeter:
        """The meter of a request's embeddings outside a chat (an upload, a direct query); `source`:
        the caller's address."""
        return EmbeddingMeter(self, agent, principal, request_id, source)

    # -- the request -----------------------------------------------------------------------

    async def handle(
        self,
        agent: AgentContext,
        body: ChatCompletionRequest,
        principal: Principal,
        request_id: str,
        *,
        conversation: str | None = None,
        source: str | None = None,
    ) -> Response:
        """Serve one request; `conversation`: the `X-Conversation-Id` header, if sent; `source`: the
        client's address."""
        state = RequestState(request_id, agent, principal, body.stream, source=source)
        config = agent.config
        state.deadline = time.monotonic() + config.limits.timeout_seconds
        labels = (config.tenant, config.agent)
        self.metrics.active.labels(*labels).inc()
        handed_over = False
        # once a response is handed over, it finishes the request: a plain answer after its body is
        # sent (`_Answer`), a stream at its end (`_events`); else the request is finished here
        try:
            named = conversation_id(conversation, body)
            if named is not None:
                state.conversation = Conversation(named, caller=f"{principal.method}:{principal.subject}")
            prepared = await self._prepare(state, body)
            if body.stream:
                response = await self._stream(state, body, prepared)
            else:
                response = await self._answer(state, prepared)
            handed_over = True
            return response
        except QuotaExceeded as exc:
            raise await self._refused(state, exc) from None
        except ApiError as exc:
            state.status, state.http_status, state.error_type = "error", exc.status, exc.code or exc.type
            raise
        except asyncio.CancelledError:
            state.status, state.http_status, state.error_type = "cancelled", 499, "client_closed"
            raise
        except Exception as exc:
            log.exception("chat request failed")
            state.status, state.http_status, state.error_type = "error", 500, type(exc).__name__
            raise ApiError(500, "internal error", type="api_error") from None
        finally:
            if not handed_over:
                with anyio.CancelScope(shield=True):
                    await self._finish(state)

    async def _prepare(self, state: RequestState, body: ChatCompletionRequest) -> Prepared:
        config = state.agent.config
        if len(body.messages) > self.settings.max_messages:
            raise ApiError(
                400,
                f"too many messages ({len(body.messages)}; at most {self.settings.max_messages})",
                param="messages",
            )
        if body.tools:
            raise ApiError(
                400,
                "this agent's tools come from its configuration; requests may not define tools",
                param="tools",
            )
        for i, message in enumerate(body.messages):
            if isinstance(message.content, list) and any(p.type != "text" for p in message.content):
                raise ApiError(400, "only text content is supported", param=f"messages.{i}.content")
        conversation = [_message_dict(m) for m in body.messages]
        system = base_system = state.agent.system_prompt()
        tools = state.agent.tools if config.limits.max_tool_calls > 0 else []
        tools_bytes = len(orjson.dumps(tools)) if tools else 0
        # no call to a model without a price: refused here, before the quota counts the request
        self.llm.priced(state.caller, state.agent.models)
        metered = self.metered_bases(config)
        for kb in metered:
            if self.llm.price(state.caller, kb.embedding_model) is None:
                raise price_unknown(kb.embedding_model)
        # the input budget (trim context, never the system prompt or the conversation)
        budget = config.limits.max_input_tokens
        used = estimate_tokens(system) + sum(
            estimate_tokens(m.get("content") or "") + 4 for m in conversation
        )
        used += math.ceil(tools_bytes / 3)
        if used > budget:
            raise ApiError(
                400,
                f"the conversation is too long for this agent (about {used} tokens; at most {budget})",
                code="context_length_exceeded",
                param="messages",
            )
        max_tokens = body.max_completion_tokens or body.max_tokens or config.model.parameters.max_tokens
        max_tokens = max_tokens or self.settings.quota_default_max_tokens
        if config.model.parameters.max_tokens:
            max_tokens = min(max_tokens, config.model.parameters.max_tokens)
        state.max_tokens = max_tokens
        context_bytes = sum(kb.top_k for kb in config.knowledge) * (CHUNK_CHARS * 4 + 256)
        query = next((m.text() for m in reversed(body.messages) if m.role == "user"), "")[:4000]
        with self.tracer.start_span("quota", attributes={"agentplane.tenant": config.tenant}) as span:
            # the first call's prompt as it is before retrieval, its output bound, and the query's
            # embeddings; the context retrieval adds is reserved once it is known (`_top_up`)
            state.prompt_reserved = self.llm.reserve_tokens(
                state.agent.models, [{"role": "system", "content": system}, *conversation], tools, max_tokens
            )
            if query.strip():
                state.embedding_reserved = sum(
                    self.embedding_reserve(kb.embedding_model, [query]) for kb in metered
                )
            reserve = state.prompt_reserved + state.embedding_reserved
            span.set_attribute("agentplane.quota.reserved_tokens", reserve)
            key_limits = state.principal.key_limits
            try:
                state.reservation = await self.quota.admit(config.quota, key_limits, reserve)
            except QuotaExceeded as exc:
                span.set_attribute("agentplane.quota.rejected", exc.limit)
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                # fail open: a quota store outage must not take every agent down
                log.warning(
                    "quota store error for %s/%s (%s: %s); request admitted",
                    config.tenant, config.agent, type(exc).__name__, exc,
                )  # fmt: skip
                self.metrics.errors.labels(config.tenant, config.agent, "quota_unavailable").inc()
                state.reservation = None
        hits: list[Hit] = []
        if config.knowledge:
            with self.tracer.start_as_current_span("retrieval") as span:
                started = time.perf_counter()
                try:
                    hits = await self.knowledge.search(
                        config.tenant,
                        list(config.knowledge),
                        state.principal,
                        query,
                        meter=ChatEmbeddingMeter(self, state),
                    )
                    state.retrieval = "ok"
                    self.metrics.retrieval.labels(config.tenant, config.agent, "ok").inc()
                except RetrievalUnavailable as exc:
                    state.retrieval = "unavailable"
                    span.set_status(Status(StatusCode.ERROR, "retrieval unavailable"))
                    log.warning("retrieval unavailable (%s); answering without context", exc)
                    self.metrics.retrieval.labels(config.tenant, config.agent, "unavailable").inc()
                finally:
                    self.metrics.retrieval_duration.labels(config.tenant, config.agent).observe(
                        time.perf_counter() - started
                    )
                span.set_attribute("agentplane.retrieval.hits", len(hits))
        context = ""
        room = budget - used
        room_bytes = context_bytes
        for hit in hits:
            n = len(state.sources) + 1
            piece = f"[{n}] ({hit.source})\n{hit.text}\n\n"
            cost = estimate_tokens(piece)
            if cost > room or len(piece.encode()) > room_bytes:
                continue
            room -= cost
            room_bytes -= len(piece.encode())
            context += piece
            state.sources.append(
                {
                    "n": n,
                    "doc_id": hit.doc_id,
                    "source": hit.source,
                    "chunk": hit.chunk,
                    "score": round(hit.score, 4),
                }
            )
        if state.retrieval == "unavailable":
            system += "\n\n(The knowledge base is unavailable right now: answer without it and say so.)"
        elif context:
            system += CONTEXT_HEADER + context.rstrip()
        params: dict[str, Any] = {
            "temperature": body.temperature
            if body.temperature is not None
            else config.model.parameters.temperature,
            "top_p": body.top_p if body.top_p is not None else config.model.parameters.top_p,
            "seed": body.seed if body.seed is not None else config.model.parameters.seed,
            "stop": body.stop,
            "max_tokens": max_tokens,
            "user": body.user,
        }
        messages = [{"role": "system", "content": system}, *conversation]
        if system is not base_system:  # retrieval added to the prompt: reserve that too
            await self._top_up(state, messages, tools)
        return Prepared(messages, params, tools)

    def _tools_now(self, state: RequestState, tools: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        if tools and state.tool_calls < state.agent.config.limits.max_tool_calls:
            return tools
        return None

    async def _top_up(
        self, state: RequestState, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> None:
        """Reserve the tokens retrieval added to the first call's prompt (the context), or raise
        `QuotaExceeded`; nothing is sent before every token it can use is reserved."""
        if state.reservation is None:
            return
        more = self.llm.reserve_tokens(state.agent.models, messages, tools, state.max_tokens)
        more -= state.prompt_reserved
        if more > 0 and not await self.quota.reserve_more(
            state.reservation, state.agent.config.quota, state.principal.key_limits, more
        ):
            raise QuotaExceeded(
                "tokens_per_minute", "the tenant's tokens per minute limit is reached", {"Retry-After": "60"}
            )

    async def _reserve_followup(self, state: RequestState, messages: list[dict[str, Any]]) -> None:
        if state.reservation is None:
            return
        tokens = self.llm.reserve_tokens(state.agent.models, messages, state.agent.tools, state.max_tokens)
        if not await self.quota.reserve_more(
            state.reservation, state.agent.config.quota, state.principal.key_limits, tokens
        ):
            raise QuotaExceeded(
                "tokens_per_minute", "the tenant's tokens per minute limit is reached", {"Retry-After": "60"}
            )

    async def _answer(self, state: RequestState, prepared: Prepared) -> Response:
        """A plain (not streamed) answer: the last round's text, as one `chat.completion`."""
        attempt = await self._first_call(state, prepared)
        parts: list[str] = []
        async with contextlib.aclosing(self._rounds(state, prepared, attempt)) as rounds:
            async for text in rounds:
                if text is None:  # a round that called tools ended: its text was not the answer
                    parts.clear()
                else:
                    parts.append(text)
        body = {
            "id": f"chatcmpl-{state.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": state.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts)},
                    "finish_reason": state.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": state.prompt_tokens,
                "completion_tokens": state.completion_tokens,
                "total_tokens": state.prompt_tokens + state.completion_tokens,
            },
            "agentplane": state.metadata(),
        }
        return _Answer(orjson.dumps(body), headers=self._headers(state), finish=lambda: self._finish(state))

    async def _first_call(self, state: RequestState, prepared: Prepared) -> Attempt:
        """The request's first LLM call, made before any byte of the response (so its failure is the
        response's status)."""
        attempt = await self.llm.complete(
            state.agent.models,
            caller=state.caller,
            messages=prepared.messages,
            params=prepared.params,
            tools=self._tools_now(state, prepared.tools),
            stream=state.stream,
            deadline=state.deadline,
        )
        state.answered(attempt)
        return attempt

    async def _rounds(
        self, state: RequestState, prepared: Prepared, attempt: Attempt
    ) -> AsyncGenerator[str | None, None]:
        """The LLM/tool loop, for plain and streamed answers alike: the answer's text as it comes, and
        None after each round that called tools (its calls made, their results sent with the next
        call). Each call is accounted and its span ended as it finishes; `state.finish_reason` is the
        answer's. An attempt being read when this stops is `state.current` (`_finish` abandons it)."""
        messages = prepared.messages
        offered = self._tools_now(state, prepared.tools)
        state.current = attempt
        while True:
            current = state.current
            calls: dict[int, dict[str, Any]] = {}
            text: list[str] = []
            prompt_tokens = completion_tokens = 0
            upstream_finish: str | None = None
            response_id: str | None = None
            response_model: str | None = None
            async for delta in timed(current.answer, state.caller):
                if delta.prompt_tokens is not None:
                    prompt_tokens = delta.prompt_tokens
                    completion_tokens = delta.completion_tokens or 0
                response_id = response_id or delta.id
                response_model = response_model or delta.model
                if delta.content:
                    if state.stream and state.ttft is None:
                        state.ttft = time.perf_counter() - state.started
                    text.append(delta.content)
                    yield delta.content
                for tc in delta.tool_calls:
                    slot = calls.setdefault(
                        tc.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                    )
                    if tc.id:
                        slot["id"] = tc.id
                    if tc.name:
                        slot["function"]["name"] = tc.name
                    if tc.arguments:
                        slot["function"]["arguments"] += tc.arguments
                if delta.finish_reason:
                    upstream_finish = delta.finish_reason
                if time.monotonic() > state.deadline:
                    raise ApiError(
                        504, "the agent's time limit was reached", type="timeout_error", code="timeout"
                    )
            cost = self.llm.cost(state.caller, current.model, prompt_tokens, completion_tokens)
            state.account(current.model, prompt_tokens, completion_tokens, cost)
            state.current = None
            self.llm.finish(
                current,
                response_model=response_model or current.model,
                response_id=response_id,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                finish_reasons=[upstream_finish or ""],
            )
            if not (calls and offered):
                state.finish_reason = upstream_finish if upstream_finish and not calls else "stop"
                return
            ordered = [calls[i] for i in sorted(calls)]
            said = "".join(text) or None
            messages = [*messages, {"role": "assistant", "content": said, "tool_calls": ordered}]
            messages += await self._run_tools(state, ordered)
            await self._reserve_followup(state, messages)
            yield None
            offered = self._tools_now(state, prepared.tools)
            state.current = await self.llm.complete(
                state.agent.models,
                caller=state.caller,
                messages=messages,
                params=prepared.params,
                tools=offered,
                stream=state.stream,
                deadline=state.deadline,
            )
            state.answered(state.current)

    def _headers(self, state: RequestState) -> dict[str, str]:
        headers = dict(state.reservation.headers) if state.reservation is not None else {}
        if state.model:
            headers["x-agentplane-model"] = state.model
        if state.retrieval != "none":
            headers["x-agentplane-retrieval"] = state.retrieval
        if state.reservation is not None and state.reservation.budget_usd is not None:
            spent = state.reservation.spent_usd + state.cost + state.embedding_cost
            headers[BUDGET_HEADER] = f"{max(0.0, state.reservation.budget_usd - spent):.6f}"
        return headers

    def _actor(self, state: RequestState) -> Actor:
        return Actor.of(state.principal, source=state.source, request_id=state.request_id)

    async def _audit_tool(
        self, state: RequestState, tool: str, outcome: str, seconds: float, arguments: str | None
    ) -> None:
        if self.audit is not None:
            config = state.agent.config
            event = tool_call_event(
                config.tenant, config.agent, self._actor(state), tool, outcome, seconds, arguments
            )
            await self.audit.record(event)

    async def _refused(self, state: RequestState, exc: QuotaExceeded) -> ApiError:
        """A quota's refusal of the request: recorded as rate limited, counted, audited; the 429."""
        config = state.agent.config
        state.status, state.http_status, state.error_type = "rate_limited", 429, exc.limit
        self.metrics.quota_rejections.labels(config.tenant, config.agent, exc.limit).inc()
        await self._audit_refusal(state, exc)
        return quota_error(exc)

    async def _audit_refusal(self, state: RequestState, exc: QuotaExceeded) -> None:
        if self.audit is not None:
            config = state.agent.config
            event = quota_refusal_event(
                config.tenant, config.agent, self._actor(state), exc.limit, exc.message
            )
            await self.audit.record(event)

    async def _run_tools(self, state: RequestState, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        limit = state.agent.config.limits.max_tool_calls
        jobs = []
        for call in calls:
            if state.tool_calls >= limit:
                jobs.append(self._tool_result(call, None, "the tool call limit of this request is reached"))
                continue
            state.tool_calls += 1
            tool = state.agent.tools_by_function.get(call["function"]["name"])
            jobs.append(self._call_tool(state, call, tool))
        started = time.perf_counter()
        try:
            return list(await asyncio.gather(*jobs))
        finally:
            state.tool_seconds += time.perf_counter() - started

    async def _tool_result(
        self, call: dict[str, Any], result: str | None, error: str | None
    ) -> dict[str, Any]:
        content = result if error is None else json.dumps({"error": error})
        return {"role": "tool", "tool_call_id": call["id"], "content": content or ""}

    async def _call_tool(
        self, state: RequestState, call: dict[str, Any], tool: ResolvedTool | None
    ) -> dict[str, Any]:
        config = state.agent.config
        name = call["function"]["name"]
        with self.tracer.start_as_current_span(f"execute_tool {name}", kind=SpanKind.INTERNAL) as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": name,
                    "gen_ai.tool.call.id": call["id"],
                    "gen_ai.tool.type": "function",
                }
            )
            if tool is None:
                span.set_attribute("error.type", "unknown_tool")
                self.metrics.tool_calls.labels(config.tenant, config.agent, name[:64], "unknown").inc()
                await self._audit_tool(state, name, "unknown", 0.0, None)
                return await self._tool_result(call, None, f"there is no tool named {name!r}")
            remaining = state.deadline - time.monotonic()
            timeout = max(0.01, min(float(tool.timeout_seconds), remaining))

            async def retrieve(query: str) -> str:
                try:
                    hits = await self.knowledge.search(
                        config.tenant,
                        list(config.knowledge),
                        state.principal,
                        query,
                        meter=ChatEmbeddingMeter(self, state),
                    )
                except ApiError as exc:  # the query's embedding was refused (no tokens left): not sent
                    raise ToolError(exc.message) from None
                return json.dumps(
                    [{"source": h.source, "score": round(h.score, 4), "text": h.text} for h in hits[:8]]
                )

            started = time.perf_counter()
            outcome, error = "ok", None
            try:
                result = await self.tools.run(
                    config,
                    tool,
                    call["function"]["arguments"],
                    timeout=timeout,
                    retrieve=retrieve,
                    conversation=state.conversation,
                )
            except InvalidArguments as exc:  # the model's mistake, which it can correct: nothing was called
                outcome, error = "invalid_arguments", str(exc)
                span.set_attribute("error.type", "invalid_arguments")
                span.set_status(Status(StatusCode.ERROR, error[:200]))
            except (ToolError, RetrievalUnavailable) as exc:
                error = str(exc) if isinstance(exc, ToolError) else "the knowledge base is unavailable"
                outcome = (
                    "timeout"
                    if isinstance(exc, ToolTimeout)
                    else "denied"
                    if isinstance(exc, ToolDenied)
                    else "error"
                )
                span.set_attribute("error.type", "tool_error")
                span.set_status(Status(StatusCode.ERROR, error[:200]))
            except Exception as exc:  # a tool's bug fails the call, not the conversation
                log.warning(
                    "tool %s of %s/%s crashed (%s: %s)", tool.name, config.tenant, config.agent,
                    type(exc).__name__, exc, exc_info=exc,
                )  # fmt: skip
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                outcome, error = "error", "the tool failed"
            finally:
                if outcome != "invalid_arguments":  # the tool's latency, not the check's
                    self.metrics.tool_duration.labels(config.tenant, config.agent, tool.name).observe(
                        time.perf_counter() - started
                    )
            self.metrics.tool_calls.labels(config.tenant, config.agent, tool.name, outcome).inc()
            arguments = call["function"]["arguments"] if tool.record_arguments else None
            await self._audit_tool(state, tool.name, outcome, time.perf_counter() - started, arguments)
            return await self._tool_result(call, None if error else result, error)

    # -- streaming -------------------------------------------------------------------------

    async def _stream(self, state: RequestState, body: ChatCompletionRequest, prepared: Prepared) -> Response:
        attempt = await self._first_call(state, prepared)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        headers = self._headers(state)
        headers["x-agentplane-model"] = attempt.model
        headers["cache-control"] = "no-cache"
        return StreamingResponse(
            self._events(state, prepared, attempt, include_usage),
            media_type="text/event-stream",
            headers=headers,
        )

    async def _events(
        self, state: RequestState, prepared: Prepared, attempt: Attempt, include_usage: bool
    ) -> AsyncIterator[bytes]:
        ident = f"chatcmpl-{state.request_id}"
        created = int(time.time())

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            payload = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": state.model or attempt.model,
                "choices": choices,
                **extra,
            }
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        try:
            yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            async with contextlib.aclosing(self._rounds(state, prepared, attempt)) as rounds:
                async for text in rounds:
                    if text:
                        yield event([{"index": 0, "delta": {"content": text}, "finish_reason": None}])
            yield event([{"index": 0, "delta": {}, "finish_reason": state.finish_reason}])
            if include_usage:
                yield event(
                    [],
                    usage={
                        "prompt_tokens": state.prompt_tokens,
                        "completion_tokens": state.completion_tokens,
                        "total_tokens": state.prompt_tokens + state.completion_tokens,
                    },
                    agentplane=state.metadata(),
                )
            yield b"data: [DONE]\n\n"
        except (ApiError, QuotaExceeded) as exc:
            if isinstance(exc, QuotaExceeded):  # a later round's reservation, after the headers left
                error = await self._refused(state, exc)
            else:
                error = exc
                state.status, state.http_status, state.error_type = (
                    "error",
                    error.status,
                    error.code or error.type,
                )
            yield b"data: " + orjson.dumps(error.body()) + b"\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            state.status, state.http_status, state.error_type = "cancelled", 499, "client_closed"
            raise
        except Exception as exc:
            if isinstance(exc, ProviderError):  # the provider's stream failed: its kind says how
                log.warning("the stream of %s failed: %s", state.model, exc)
                kind = exc.kind
            else:
                log.exception("stream failed")
                kind = type(exc).__name__
            state.status, state.http_status, state.error_type = "error", 502, kind
            yield (
                b"data: "
                + orjson.dumps(
                    ApiError(502, "the stream from the model failed", type="upstream_error").body()
                )
                + b"\n\n"
            )
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(state)

    # -- the end of every request -------------------------------------------------------------

    def refused(self, agent: AgentContext, code: int) -> None:
        """Count a chat request refused before `handle` (authentication, an invalid body)."""
        config = agent.config
        self.metrics.requests.labels(
            config.tenant, config.agent, config.model.name, status_class(code), str(code)
        ).inc()

    async def _finish(self, state: RequestState) -> None:
        config = state.agent.config
        if state.current is not None:  # an answer not read to its end (an error, a client gone)
            current, state.current = state.current, None
            await self.llm.abandon(current, state.error_type or "stream_interrupted")
        elapsed = time.perf_counter() - state.started
        used = state.prompt_tokens + state.completion_tokens
        code = state.http_status
        status = status_class(code)
        labels = (config.tenant, config.agent, state.model or config.model.name)
        m = self.metrics
        m.active.labels(config.tenant, config.agent).dec()
        m.requests.labels(*labels, status, str(code)).inc()
        m.latency.labels(*labels).observe(elapsed)
        waited = state.caller.waited + state.tool_seconds
        m.overhead.labels(config.tenant, config.agent).observe(max(0.0, elapsed - waited))
        if state.fallback and state.model:
            m.fallbacks.labels(*labels).inc()
        server = (
            config.tenant,
            config.agent,
            GEN_AI_OPERATION,
            GEN_AI_SERVER_PROVIDER,
            config.agent,
            state.model or "",
        )
        m.gen_ai_server_duration.labels(*server, "" if status == "ok" else str(code)).observe(elapsed)
        if state.ttft is not None:
            m.ttft.labels(*labels).observe(state.ttft)
            if status == "ok":
                m.gen_ai_server_ttft.labels(*server).observe(state.ttft)
        if used:
            m.tokens.labels(*labels, "input").inc(state.prompt_tokens)
            m.tokens.labels(*labels, "output").inc(state.completion_tokens)
        if state.cost:
            m.cost.labels(*labels).inc(state.cost)
        if state.error_type:
            m.errors.labels(config.tenant, config.agent, state.error_type[:64]).inc()
        event = UsageEvent(
            id=uuid.uuid4().hex,
            request_id=state.request_id,
            tenant=config.tenant,
            agent=config.agent,
            api_key_id=state.principal.key_id,
            subject=state.principal.subject[:256],
            model=state.model,
            prompt_tokens=state.prompt_tokens,
            completion_tokens=state.completion_tokens,
            cost_usd=state.cost,
            latency_ms=elapsed * 1000,
            ttft_ms=state.ttft * 1000 if state.ttft is not None else None,
            status=state.status,
            http_status=state.http_status,
            error_type=state.error_type[:64] if state.error_type else None,
            stream=state.stream,
            tool_calls=state.tool_calls,
            llm_calls=state.llm_calls,
            created_at=now_utc(),
        )
        # the settlement carries the usage record when both live in one Redis, and goes with the
        # next request's quota check: this request does not wait for it
        appended = self._settle(state, used, event)
        if appended is None or (appended.done() and not appended.result()):
            await self.usage.record(event)
        elif not appended.done():
            self._settling.add(appended)
            appended.add_done_callback(functools.partial(self._settled, event))

    def _settle(self, state: RequestState, used: int, event: UsageEvent) -> asyncio.Future[bool] | None:
        """Settle the request's reservation to what it used, with the usage `event` appended to its
        stream along if it can: the future says whether it was (None: no settlement). Never raises
        (the answer is given): a failure is logged, and the caller records the usage itself (a
        record appended twice is written once: its id is the row's key)."""
        if state.reservation is None:
            return None
        try:
            return self.quota.settle(
                state.reservation,
                used + state.embedding_tokens,
                state.cost + state.embedding_cost,
                append=self.usage.stream_entry(event),
            )
        except Exception as exc:  # a bug here must not turn the answer into an error
            config = state.agent.config
            log.error("quota settle for %s/%s failed", config.tenant, config.agent, exc_info=exc)
        return None

    def _settled(self, event: UsageEvent, appended: asyncio.Future[bool]) -> None:
        """A settlement was sent: record its usage on its own if it did not carry it."""
        self._settling.discard(appended)
        if not appended.result():
            task = asyncio.ensure_future(self.usage.record(event))
            self._recording.add(task)
            task.add_done_callback(self._recording.discard)


class _Answer(Response):
    """A plain answer that finishes its request (metrics, the quota's settlement, the usage record)
    once its body is sent, or failed to be, so the caller does not wait for that bookkeeping."""

    media_type = "application/json"

    def __init__(
        self, content: bytes, *, headers: dict[str, str], finish: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(content, headers=headers)
        self._finish = finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish()


def quota_error(exc: QuotaExceeded) -> ApiError:
    """The 429 of a quota's refusal: `insufficient_quota` for the monthly budget (retrying will not
    help this month), `rate_limit_error` for a per-minute limit, with Retry-After and x-ratelimit-*."""
    budget = exc.limit == "monthly_budget_usd"
    return ApiError(
        429,
        exc.message,
        type="insufficient_quota" if budget else "rate_limit_error",
        code=exc.limit,
        headers=exc.headers,
    )


def new_request_id() -> str:
    return uuid.uuid4().hex
