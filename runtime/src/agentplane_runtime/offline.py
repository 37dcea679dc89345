"""The offline model: a litellm custom provider that answers without any LLM.

`agentplane up` routes an agent's model here when its provider's credentials are not set. It is
deterministic: it calls the calculator tool when the question holds arithmetic and the agent has
one, then answers with the tool results and the knowledge-base context the runtime put in the
system prompt — and every answer says plainly that it comes from the offline model.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import litellm
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse

from agentplane_platform.api.v1alpha1.tenant import ModelPrice

PROVIDER = "agentplane-offline"
"""The litellm provider name: models are called as `agentplane-offline/<configured model>`."""
PRICE = ModelPrice(input_per_million_tokens=0, output_per_million_tokens=0)
"""What the offline model costs: nothing, declared (a model without a price is refused)."""

CONTEXT_MARKER = "Context from the knowledge base"
_ARITHMETIC = re.compile(r"[\d.(][\d\s.+\-*/%()]*[+\-*/%][\d\s.+\-*/%()]*[\d)]")
_EXCERPT_CHARS = 400


def offline_model(model: str) -> str:
    """The litellm model name that sends `model`'s calls to the offline model."""
    return f"{PROVIDER}/{model}"


def register() -> None:
    """Make litellm route `agentplane-offline/...` here (idempotent)."""
    providers = [p for p in litellm.custom_provider_map if p.get("provider") != PROVIDER]
    litellm.custom_provider_map = [*providers, {"provider": PROVIDER, "custom_handler": OfflineModel()}]
    # litellm reads the map when a call names an unknown provider; register it eagerly too
    from litellm.utils import custom_llm_setup

    custom_llm_setup()  # type: ignore[no-untyped-call]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _tokens(text: str) -> int:
    return max(1, (len(text.encode()) + 3) // 4)


def _context(system: str) -> list[str]:
    """The numbered sources the runtime appended to the system prompt, as `[n] (source) text`."""
    _, marker, rest = system.partition(CONTEXT_MARKER)
    if not marker:
        return []
    rest = rest.split("\n", 1)[1] if "\n" in rest else ""
    pieces = re.split(r"\n(?=\[\d+\] \()", "\n" + rest.strip())
    out = []
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        head, _, body = piece.partition("\n")
        body = " ".join(body.split())
        if len(body) > _EXCERPT_CHARS:
            body = body[:_EXCERPT_CHARS].rsplit(" ", 1)[0] + " …"
        out.append(f"{head} {body}")
    return out


def answer(model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The offline model's reply: `{"content": str}` or `{"tool_call": {"name", "arguments"}}`."""
    system = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    question = _text(messages[last_user].get("content")) if last_user >= 0 else ""
    results = [_text(m.get("content")) for m in messages[last_user + 1 :] if m.get("role") == "tool"]
    calculator = next(
        (
            t["function"]["name"]
            for t in tools or []
            if "calculator" in str(t.get("function", {}).get("name", ""))
        ),
        None,
    )
    expression = _ARITHMETIC.search(question)
    if calculator and expression and not results:
        return {
            "tool_call": {"name": calculator, "arguments": json.dumps({"expression": expression[0].strip()})}
        }
    lines = [
        f"[offline model] No API key for {model!r} is set, so this is agentplane's offline model: "
        "it does not generate text, it shows what the agent found."
    ]
    for result in results:
        lines.append(f"Tool result: {result}")
    sources = _context(system)
    if sources:
        lines.append("From the knowledge base:")
        lines.extend(sources)
    elif not results:
        lines.append(f"Nothing in the knowledge base matches {question.strip()[:200]!r}.")
    return {"content": "\n".join(lines)}


class OfflineModel(CustomLLM):
    """litellm's custom-provider interface over `answer`."""

    def _reply(self, model: str, messages: list[Any], optional_params: dict[str, Any]) -> dict[str, Any]:
        return answer(model, [dict(m) for m in messages], optional_params.get("tools"))

    async def acompletion(  # type: ignore[override]
        self,
        model: str,
        messages: list[Any],
        model_response: ModelResponse,
        optional_params: dict[str, Any],
        **_: Any,
    ) -> ModelResponse:
        reply = self._reply(model, messages, optional_params)
        prompt_tokens = sum(_tokens(_text(m.get("content"))) for m in messages)
        message: dict[str, Any]
        if "tool_call" in reply:
            call = reply["tool_call"]
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function", "function": call}],
            }
            finish, completion = "tool_calls", _tokens(call["arguments"])
        else:
            message = {"role": "assistant", "content": reply["content"]}
            finish, completion = "stop", _tokens(reply["content"])
        return ModelResponse(
            id=f"offline-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=offline_model(model),
            choices=[{"index": 0, "message": message, "finish_reason": finish}],
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            },
        )

    async def astreaming(  # type: ignore[override]
        self, model: str, messages: list[Any], optional_params: dict[str, Any], **_: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        reply = self._reply(model, messages, optional_params)
        prompt_tokens = sum(_tokens(_text(m.get("content"))) for m in messages)
        if "tool_call" in reply:
            call = reply["tool_call"]
            completion = _tokens(call["arguments"])
            yield {
                "text": "",
                "tool_use": {
                    "id": f"call_{uuid.uuid4().hex[:12]}",
                    "type": "function",
                    "function": call,
                    "index": 0,
                },
                "is_finished": True,
                "finish_reason": "tool_calls",
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion,
                },
                "index": 0,
            }
            return
        text: str = reply["content"]
        lines = text.splitlines(keepends=True)
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            completion = _tokens(text)
            yield {
                "text": line,
                "tool_use": None,
                "is_finished": last,
                "finish_reason": "stop" if last else "",
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion,
                }
                if last
                else None,
                "index": 0,
            }
