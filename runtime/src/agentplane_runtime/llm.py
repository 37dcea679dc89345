"""LLM calls: the agent's model, then its fallbacks, with a per-attempt timeout, jittered retries for
retryable errors only, and a circuit breaker per deployment. How a call reaches its provider (directly
for OpenAI and Azure OpenAI, else through litellm) is `agentplane_runtime.providers`."""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import litellm
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from agentplane_platform.api.v1alpha1.tenant import ModelPrice
from agentplane_runtime import offline
from agentplane_runtime.core.config import Settings
from agentplane_runtime.core.errors import ApiError
from agentplane_runtime.core.telemetry import GEN_AI_OPERATION, Metrics
from agentplane_runtime.providers import (
    Answer,
    Call,
    Delta,
    DirectClient,
    ProviderError,
    is_direct,
    open_litellm,
    provider_of,
)

log = logging.getLogger("agentplane.runtime.llm")


class CircuitState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Opens after `failures` retryable failures within `window` seconds; after `open_seconds`
    one probe call is let through (half-open): success closes it, failure opens it again."""

    def __init__(
        self, failures: int, window: float, open_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = failures
        self.window = window
        self.open_seconds = open_seconds
        self.clock = clock
        self.state = CircuitState.CLOSED
        self._failures: deque[float] = deque()
        self._opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """Whether a call may go to this deployment now (claims the probe when half-open)."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if self.clock() - self._opened_at < self.open_seconds:
                return False
            self.state = CircuitState.HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def retry_after(self) -> float:
        return max(0.0, self.open_seconds - (self.clock() - self._opened_at))

    def success(self) -> None:
        self.state = CircuitState.CLOSED
        self._failures.clear()
        self._probing = False

    def failure(self) -> None:
        now = self.clock()
        if self.state is CircuitState.HALF_OPEN:
            self._open(now)
            return
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.window:
            self._failures.popleft()
        if len(self._failures) >= self.threshold:
            self._open(now)

    def release(self) -> None:
        """A probe that ended neither in success nor in a retryable failure."""
        self._probing = False

    def _open(self, now: float) -> None:
        self.state = CircuitState.OPEN
        self._opened_at = now
        self._failures.clear()
        self._probing = False


_RETRYABLE = (
    litellm.exceptions.RateLimitError,
    litellm.exceptions.Timeout,
    litellm.exceptions.APIConnectionError,
    litellm.exceptions.InternalServerError,
    litellm.exceptions.ServiceUnavailableError,
)
_CLIENT_ERRORS = (litellm.exceptions.BadRequestError, litellm.exceptions.UnprocessableEntityError)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, ProviderError):
        return exc.retryable
    if isinstance(exc, (*_RETRYABLE, asyncio.TimeoutError)):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status in (408, 429) or status >= 500)


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, ProviderError):
        return exc.kind
    if isinstance(exc, litellm.exceptions.Timeout | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, litellm.exceptions.RateLimitError):
        return "rate_limited"
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return f"http_{status}"
    return type(exc).__name__


def has_credentials(settings: Settings, model: str) -> bool:
    """Whether the settings hold the credentials of `model`'s provider (OpenAI and Azure OpenAI)."""
    provider = provider_of(model)
    if provider == "azure":
        return settings.azure_api_key is not None and bool(settings.azure_api_base)
    if provider == "openai":
        return settings.openai_api_key is not None
    return False


_SYSTEMS = {
    "azure": "azure.ai.openai",
    "openai": "openai",
    "anthropic": "anthropic",
    "bedrock": "aws.bedrock",
}


def system_of(model: str) -> str:
    """`gen_ai.provider.name` of a litellm model name (`azure/...` is `azure.ai.openai`)."""
    provider = provider_of(model)
    return _SYSTEMS.get(provider, provider)


@dataclass(frozen=True, slots=True)
class Price:
    """The price that applies to a model, and where it comes from (`declared` is None for litellm's
    cost map, which prices a call itself)."""

    source: Literal["tenant", "platform", "runtime", "litellm"]
    declared: ModelPrice | None = None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD of a call of `model` that used these tokens."""
        if self.declared is not None:
            d = self.declared
            return (
                prompt_tokens * d.input_per_million_tokens + completion_tokens * d.output_per_million_tokens
            ) / 1_000_000
        rates = _linear_rates(model)
        if rates is not None:
            return prompt_tokens * rates[0] + completion_tokens * rates[1]
        try:
            prompt_cost, completion_cost = litellm.cost_per_token(
                model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except Exception as exc:  # an answer is never failed over its price (litellm priced it before)
            log.warning("no cost for %s (%s: %s)", model, type(exc).__name__, exc, exc_info=exc)
            return 0.0
        return float(prompt_cost) + float(completion_cost)


@functools.cache
def _linear_rates(model: str) -> tuple[float, float] | None:
    """USD per prompt token and per completion token of `model` in litellm's cost map, when its price
    is linear (no tier above a number of tokens): a call's cost is then a product, not a lookup in the
    map per call. None when it is tiered, or unknown (litellm then prices each call itself)."""
    try:
        info = litellm.get_model_info(model)
        if any("above" in name and value for name, value in info.items()):
            return None
        prompt, _ = litellm.cost_per_token(model=model, prompt_tokens=1, completion_tokens=0)
        _, completion = litellm.cost_per_token(model=model, prompt_tokens=0, completion_tokens=1)
    except Exception:  # not in the map: `Price.cost` says so, per call
        return None
    return float(prompt), float(completion)


@functools.cache
def _litellm_prices(model: str) -> bool:
    """Whether litellm's cost map prices `model` (the map is read once, when litellm is imported)."""
    try:
        litellm.cost_per_token(model=model, prompt_tokens=1, completion_tokens=1)
    except (litellm.exceptions.ModelNotMappedError, litellm.exceptions.BadRequestError):
        return False  # a model (or provider) litellm's cost map does not know
    return True


def price_of(
    model: str, tenant: Mapping[str, ModelPrice], platform: Mapping[str, ModelPrice]
) -> Price | None:
    """Which price applies to `model` (a litellm name): the tenant's declaration (`spec.modelPrices`),
    else the platform's (`AGENTPLANE_MODEL_PRICES`), else the runtime's own (the offline model's 0),
    else litellm's cost map; None when none prices it, and then no call to it may be made."""
    if model in tenant:
        return Price("tenant", tenant[model])
    if model in platform:
        return Price("platform", platform[model])
    if provider_of(model) == offline.PROVIDER:
        return Price("runtime", offline.PRICE)
    if _litellm_prices(model):
        return Price("litellm")
    return None


def price_unknown(model: str) -> ApiError:
    """The refusal of a call to a model no price applies to (see `price_of`)."""
    return ApiError(
        422,
        f"model {model!r} has no price, so its calls are refused (a budget could not stop them): "
        "declare one in the Tenant's spec.modelPrices, or the platform's AGENTPLANE_MODEL_PRICES, "
        "as inputPerMillionTokens and outputPerMillionTokens in USD",
        code="model_price_unknown",
    )


def count_tokens(model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """litellm's count of the prompt tokens of a call to `model`: its messages (with the per-message
    overhead) and its tool definitions. litellm counts offline with the tokenizer it bundles; the
    models whose own tokenizer it would download from the Hugging Face hub (Llama, Command R) are
    counted with that bundled one too (`LLMClient` turns the download off). Should litellm fail to
    count them, one token per byte of their JSON: more than any tokenizer counts, never fewer."""
    try:
        return int(
            litellm.token_counter(
                model=model, custom_tokenizer=_tokenizer(model), messages=messages, tools=tools or None
            )
        )
    except (
        Exception
    ) as exc:  # a shape litellm's counter does not handle: over-reserve, never fail the request
        log.warning(
            "litellm could not count the tokens of a call to %s (%s: %s)", model, type(exc).__name__, exc
        )
        return len(json.dumps([messages, tools], default=str).encode())


def count_text_tokens(model: str, texts: list[str]) -> int:
    """litellm's count of the tokens of `texts` (an embedding's input)."""
    tokenizer = _tokenizer(model)
    return sum(
        int(litellm.token_counter(model=model, custom_tokenizer=tokenizer, text=text)) for text in texts
    )


@functools.lru_cache(maxsize=1024)
def _tokenizer(model: str) -> Any:
    """The tokenizer litellm counts `model`'s tokens with, chosen once per model: `token_counter`
    chooses it again on every call otherwise (`select_tokenizer`), about 170 of its 200 µs for a
    short chat. What it is given is what it would choose, so the count is the same."""
    from litellm.utils import select_tokenizer

    return select_tokenizer(model)


@dataclass
class Caller:
    """Whom LLM calls are made for (their metrics' `tenant` and `agent`, the tenant's declared
    prices), and how long they waited on providers: every attempt, failed or not, the back-off
    between retries, and a stream's chunks."""

    tenant: str
    agent: str
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    """The tenant's declared model prices (`spec.modelPrices`)."""
    waited: float = 0.0


async def timed(answer: Answer, caller: Caller) -> AsyncIterator[Delta]:
    """A call's answer, with the time spent waiting for each piece added to `caller.waited`."""
    iterator = aiter(answer)
    while True:
        started = time.perf_counter()
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        finally:
            caller.waited += time.perf_counter() - started
        yield chunk


@dataclass
class Attempt:
    """A successful LLM call: the model that answered and its answer (`Delta`s: one, or a stream's).
    `span` is the attempt's span, still open: the caller ends it with `LLMClient.finish` (or
    `LLMClient.abandon` when the answer is not read to its end)."""

    model: str
    answer: Answer
    span: Span
    attempts: int
    caller: Caller
    fallback: bool = False
    """Whether `model` is one of the agent's fallbacks (not its primary model)."""
    stream: bool = False
    response_seconds: float = 0.0
    """How long the call took to answer (a stream: to its first bytes)."""
    started: float = field(default_factory=time.perf_counter)
    """When the call was made."""


class LLMClient:
    """Calls the agent's model and fallbacks (`close()` when done: it owns the direct path's pool)."""

    def __init__(self, settings: Settings, metrics: Metrics, tracer: Tracer) -> None:
        self.settings = settings
        self.direct = DirectClient()
        self._targets: dict[str, str] = {}
        self._credentials: dict[str, dict[str, Any]] = {}
        self.metrics = metrics
        self.tracer = tracer
        self.breakers: dict[str, CircuitBreaker] = {}
        self._unpriced: set[tuple[str, str]] = set()
        litellm.suppress_debug_info = True
        litellm.drop_params = True
        # token counts for quota reservations never download a tokenizer: the models litellm would
        # count with one from the Hugging Face hub are counted with the tokenizer it bundles
        litellm.disable_hf_tokenizer_download = True
        if settings.offline_model:
            offline.register()

    async def close(self) -> None:
        await self.direct.aclose()

    def target(self, model: str) -> str:
        """The model litellm is asked for: the offline model when `offline_model` is on and the
        provider has no credentials."""
        target = self._targets.get(model)
        if target is None:  # decided once per model: the settings do not change
            offline_target = self.settings.offline_model and not has_credentials(self.settings, model)
            target = offline.offline_model(model) if offline_target else model
            self._targets[model] = target
        return target

    def price(self, caller: Caller, model: str) -> Price | None:
        """The price of a call of `model` (a target) for `caller`'s tenant (see `price_of`)."""
        return price_of(model, caller.prices, self.settings.model_prices)

    def priced(self, caller: Caller, models: list[str]) -> list[str]:
        """The targets of `models` (in order) that have a price; raises the `model_price_unknown`
        error, naming the first, when none has. The unpriced ones are skipped, and logged."""
        targets = [self.target(m) for m in models]
        priced = [t for t in targets if self.price(caller, t) is not None]
        for target in targets:
            unpriced = (caller.tenant, target)
            if target not in priced and unpriced not in self._unpriced:
                self._unpriced.add(unpriced)  # said once per tenant and model, not on every request
                log.warning(
                    "model %s of tenant %s has no price: its calls are refused", target, caller.tenant
                )
        if not priced:
            raise price_unknown(targets[0])
        return priced

    def cost(self, caller: Caller, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD of a call of `model` (0 for a model without a price, which is never called)."""
        price = self.price(caller, model)
        return price.cost(model, prompt_tokens, completion_tokens) if price is not None else 0.0

    def reserve_tokens(
        self,
        models: list[str],
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        max_tokens: int,
    ) -> int:
        """An upper bound of the tokens a call can use: its prompt as litellm counts it for the first
        of `models`, plus `quota_prompt_margin` of that, plus the output bound `max_tokens`."""
        prompt = count_tokens(self.target(models[0]), messages, tools)
        return math.ceil(prompt * (1 + self.settings.quota_prompt_margin)) + max_tokens

    def breaker(self, model: str) -> CircuitBreaker:
        breaker = self.breakers.get(model)
        if breaker is None:
            s = self.settings
            breaker = CircuitBreaker(s.breaker_failures, s.breaker_window_seconds, s.breaker_open_seconds)
            self.breakers[model] = breaker
        return breaker

    def credentials(self, model: str) -> dict[str, Any]:
        """Provider credentials for a model, from settings (never from the agent config); worked out
        once per model."""
        found = self._credentials.get(model)
        if found is None:
            found = self._credentials[model] = self._credentials_of(model)
        return found

    def _credentials_of(self, model: str) -> dict[str, Any]:
        s = self.settings
        provider = provider_of(model)
        if provider == "azure":
            return {
                "api_key": s.azure_api_key.get_secret_value() if s.azure_api_key else None,
                "api_base": s.azure_api_base,
                "api_version": s.azure_api_version,
            }
        if provider == "openai":
            return {
                "api_key": s.openai_api_key.get_secret_value() if s.openai_api_key else None,
                "api_base": s.openai_api_base,
            }
        return {}

    def _state(self, model: str, breaker: CircuitBreaker) -> None:
        self.metrics.circuit_state.labels(model).set(int(breaker.state))

    async def complete(
        self,
        models: list[str],
        *,
        caller: Caller,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        tools: list[dict[str, Any]] | None,
        stream: bool,
        deadline: float,
    ) -> Attempt:
        """The first model (in order) that answers; raises `ApiError` when none does. The time
        spent waiting on providers is added to `caller.waited`."""
        last: BaseException | None = None
        open_circuits: list[CircuitBreaker] = []
        attempts = 0
        s = self.settings
        primary = self.target(models[0])
        for model in self.priced(caller, models):
            breaker = self.breaker(model)
            for retry in range(s.llm_retries + 1):
                if not breaker.allow():
                    open_circuits.append(breaker)
                    self.metrics.llm_attempts.labels(model, "circuit_open").inc()
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0.05:
                    breaker.release()
                    raise ApiError(
                        504, "the agent's time limit was reached", type="timeout_error", code="timeout"
                    )
                attempts += 1
                span = self.tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT)
                span.set_attributes(
                    {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.system": system_of(model),
                        "gen_ai.request.model": model,
                        "agentplane.attempt": attempts,
                    }
                )
                for name in ("max_tokens", "temperature", "top_p", "seed"):
                    if params.get(name) is not None:
                        span.set_attribute(f"gen_ai.request.{name}", params[name])
                timeout = min(s.llm_timeout_seconds, remaining)
                call = Call(
                    model=model,
                    messages=messages,
                    params={k: v for k, v in params.items() if v is not None},
                    tools=tools or None,
                    stream=stream,
                    timeout=timeout,
                    credentials=self.credentials(model),
                )
                opened = self.direct.open(call) if is_direct(model) else open_litellm(call)
                started = time.perf_counter()
                try:
                    answer = await asyncio.wait_for(opened, timeout + 1)
                except asyncio.CancelledError:
                    caller.waited += time.perf_counter() - started
                    breaker.release()
                    span.set_status(Status(StatusCode.ERROR, "cancelled"))
                    span.end()
                    raise
                except Exception as exc:
                    elapsed = time.perf_counter() - started
                    caller.waited += elapsed
                    kind = error_kind(exc)
                    span.set_attribute("error.type", kind)
                    span.set_status(Status(StatusCode.ERROR, kind))
                    span.end()
                    self.metrics.llm_attempts.labels(model, kind).inc()
                    self._operation(caller, model, "", kind).observe(elapsed)
                    last = exc
                    if (isinstance(exc, _CLIENT_ERRORS) and not is_retryable(exc)) or (
                        isinstance(exc, ProviderError) and exc.invalid_request
                    ):
                        breaker.release()
                        self._state(model, breaker)
                        raise ApiError(
                            400, "the model refused the request as invalid", code="upstream_bad_request"
                        ) from exc
                    if not is_retryable(exc):
                        breaker.release()
                        log.warning("model %s failed (%s), trying the next one", model, kind)
                        break
                    breaker.failure()
                    self._state(model, breaker)
                    log.warning("model %s attempt failed (%s)", model, kind)
                    log.debug("model %s error: %s", model, str(exc)[:500])
                    if retry < s.llm_retries and breaker.state is CircuitState.CLOSED:
                        delay = s.llm_backoff_seconds * (2**retry) * random.uniform(0.5, 1.5)
                        if time.monotonic() + delay < deadline - 0.1:
                            slept = time.perf_counter()
                            try:
                                await asyncio.sleep(delay)
                            finally:
                                caller.waited += time.perf_counter() - slept
                    continue
                elapsed = time.perf_counter() - started
                caller.waited += elapsed
                breaker.success()
                self._state(model, breaker)
                self.metrics.llm_attempts.labels(model, "ok").inc()
                return Attempt(
                    model=model,
                    answer=answer,
                    span=span,
                    attempts=attempts,
                    caller=caller,
                    fallback=model != primary,
                    stream=stream,
                    response_seconds=elapsed,
                    started=started,
                )
        if last is None and open_circuits:
            wait = min(b.retry_after() for b in open_circuits)
            raise ApiError(
                503,
                "every model of this agent is unavailable (circuit open)",
                type="upstream_unavailable",
                code="circuit_open",
                headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            )
        if last is not None and error_kind(last) == "timeout":
            raise ApiError(504, "the model did not answer in time", type="upstream_timeout", code="timeout")
        raise ApiError(
            502, "the model provider failed to answer", type="upstream_error", code="upstream_error"
        )

    def _operation(self, caller: Caller, model: str, response_model: str, error_type: str) -> Any:
        return self.metrics.gen_ai_operation.labels(
            caller.tenant, caller.agent, GEN_AI_OPERATION, system_of(model), model, response_model, error_type
        )

    def finish(
        self,
        attempt: Attempt,
        *,
        response_model: str | None,
        response_id: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reasons: list[str],
    ) -> None:
        """A call is done (a stream: its last chunk is read): its GenAI metrics, and its span ended."""
        caller, model, answered = attempt.caller, attempt.model, response_model or ""
        duration = time.perf_counter() - attempt.started if attempt.stream else attempt.response_seconds
        self._operation(caller, model, answered, "").observe(duration)
        if prompt_tokens or completion_tokens:  # a provider that reports no usage: no token metric
            labels = (caller.tenant, caller.agent, GEN_AI_OPERATION, system_of(model), model, answered)
            self.metrics.gen_ai_tokens.labels(*labels, "input").observe(prompt_tokens)
            self.metrics.gen_ai_tokens.labels(*labels, "output").observe(completion_tokens)
        finish_span(
            attempt.span,
            response_model=response_model,
            response_id=response_id,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reasons=finish_reasons,
        )

    async def abandon(self, attempt: Attempt, error_type: str) -> None:
        """An answer not read to its end (a stream that broke off): its connection given back, its
        duration with the error, and its span ended."""
        try:
            await attempt.answer.aclose()
        except Exception as exc:  # the answer had failed already: its error is being reported
            log.debug("closing an abandoned answer of %s: %s", attempt.model, exc)
        duration = time.perf_counter() - attempt.started
        self._operation(attempt.caller, attempt.model, "", error_type).observe(duration)
        attempt.span.set_attribute("error.type", error_type)
        attempt.span.set_status(Status(StatusCode.ERROR, error_type))
        attempt.span.end()


def finish_span(
    span: Span,
    *,
    response_model: str | None,
    response_id: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    finish_reasons: list[str],
) -> None:
    if response_model:
        span.set_attribute("gen_ai.response.model", response_model)
    if response_id:
        span.set_attribute("gen_ai.response.id", response_id)
    span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", completion_tokens)
    if finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", finish_reasons)
    span.end()
