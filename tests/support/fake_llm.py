"""A fake OpenAI-compatible LLM provider: a real HTTP server, so litellm's real HTTP path runs.

It answers `POST /v1/chat/completions` (plain and `stream: true` SSE, with the final usage chunk
when `stream_options.include_usage` is set), `POST /v1/embeddings`, the same two under Azure's
`/openai/deployments/<deployment>/...`, `GET /v1/models`, and serves a JWKS at
`/.well-known/jwks.json` (for OIDC tests).

By default a chat answer is deterministic: `"Fake answer to: <last user message>"`, with
`prompt_tokens` = ceil(characters of all message contents / 4) + 3 per message, so never more
than the number of UTF-8 bytes of the request's contents plus 3 per message. Embeddings are a
normalised hashed bag of words, so texts that share words are close.

Tests script it per upstream model name (`script(model, steps)`): each request for that model
takes the next step — a reply, tool calls, an HTTP error, a delay, a hang, a stream that fails —
and falls back to the default answer when the script is empty. Scripts can also be set over HTTP
(`POST /_control/script {"model": ..., "steps": [...]}`, `POST /_control/reset`), which is how
load tests and other processes drive it.

Run it on its own: `PYTHONPATH=tests uv run python -m support.fake_llm --port 9999 [--delay-ms 0]`
(as a module: run as a file, tests/support/ would shadow stdlib modules such as `operator`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Step:
    """What the fake does for one request.

    kind: `reply` (text), `tool_calls` (list of {"name", "arguments"}), `error` (HTTP status),
    `sleep` (wait `seconds`, then the default answer or `text`), `hang` (wait `seconds`, default
    one hour, answer nothing), `stream_error` (stream `text`, then an error event instead of the end).
    """

    kind: Literal["reply", "tool_calls", "error", "sleep", "hang", "stream_error"]
    text: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    status: int = 500
    seconds: float = 3600.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Step:
        return cls(**data)


def reply(text: str, **usage: int) -> Step:
    return Step("reply", text=text, **usage)  # type: ignore[arg-type]


def tool_calls(*calls: tuple[str, dict[str, Any]]) -> Step:
    return Step("tool_calls", tool_calls=[{"name": n, "arguments": json.dumps(a)} for n, a in calls])


def error(status: int) -> Step:
    return Step("error", status=status)


def sleep(seconds: float, text: str | None = None) -> Step:
    return Step("sleep", seconds=seconds, text=text)


def stream_error(text: str) -> Step:
    """A stream that sends `text`, then an error event in place of its end (a plain call: a 500)."""
    return Step("stream_error", text=text)


def hang(seconds: float = 3600.0) -> Step:
    return Step("hang", seconds=seconds)


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The fake's token count of a request's messages."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    return math.ceil(chars / 4) + 3 * len(messages)


def embed(text: str, dimensions: int) -> list[float]:
    """A deterministic hashed bag-of-words embedding, L2-normalised."""
    vector = [0.0] * dimensions
    for word in WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dimensions
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    if norm == 1.0 and not any(vector):
        vector[0] = 1.0
    return [v / norm for v in vector]


@dataclass
class Recorded:
    """One request the fake received."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]


class FakeLLM:
    """The fake provider's state and ASGI app; `start()` serves it on a loopback port in a thread."""

    def __init__(self, *, delay_ms: float = 0.0, chunk_delay_ms: float = 0.0, record: bool = True) -> None:
        self.delay_ms = delay_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.record = record
        self.jwks: dict[str, Any] = {"keys": []}
        self.requests: list[Recorded] = []
        self.traces_received = 0
        self._scripts: dict[str, deque[Step]] = {}
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.host = "127.0.0.1"

    # -- control ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (`http://<host>:<port>/v1`)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def script(self, model: str, steps: list[Step]) -> None:
        """Queue steps for requests whose upstream model is `model` (appended to what is queued)."""
        with self._lock:
            self._scripts.setdefault(model, deque()).extend(steps)

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self.requests.clear()
            self.delay_ms = 0.0
            self.chunk_delay_ms = 0.0

    def chat_requests(self, model: str | None = None) -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path.endswith("/chat/completions") and (model is None or r.body.get("model") == model)
            ]

    def _next_step(self, model: str) -> Step | None:
        with self._lock:
            queue = self._scripts.get(model)
            if queue:
                return queue.popleft()
            return None

    def start(self, port: int = 0, host: str = "127.0.0.1") -> FakeLLM:
        """Serve on `host` (a free port when 0) in a daemon thread; returns when it listens."""
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.host = host
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self, log_level="warning", lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake LLM server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # do not wait for scripted hangs to end
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if method == "POST" and path == "/v1/traces":
            # an OTLP/HTTP trace sink (protobuf, not read), so benchmarks export their spans for real
            self.traces_received += 1
            await _json(send, 200, {})
            return
        data: dict[str, Any] = {}
        if body:
            try:
                data = json.loads(body)
            except ValueError:
                await _json(
                    send, 400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}}
                )
                return
        if self.record and method == "POST" and not path.startswith("/_control"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            with self._lock:
                self.requests.append(Recorded(path, data, headers))
        if method == "GET" and path == "/.well-known/jwks.json":
            await _json(send, 200, self.jwks)
        elif method == "GET" and path in ("/v1/models", "/models"):
            await _json(send, 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        elif method == "POST" and path.endswith("/chat/completions"):
            model = _deployment(path) or str(data.get("model", ""))
            await self._chat(model, data, send)
        elif method == "POST" and path.endswith("/embeddings"):
            model = _deployment(path) or str(data.get("model", ""))
            await self._embeddings(model, data, send)
        elif method == "POST" and path == "/_control/script":
            self.script(str(data["model"]), [Step.from_json(s) for s in data["steps"]])
            await _json(send, 200, {"ok": True})
        elif method == "POST" and path == "/_control/reset":
            self.reset()
            await _json(send, 200, {"ok": True})
        else:
            await _json(send, 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})

    async def _chat(self, model: str, data: dict[str, Any], send: Send) -> None:
        step = self._next_step(model)
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        if step is not None and step.kind == "error":
            await _json(
                send,
                step.status,
                {"error": {"message": f"fake upstream error {step.status}", "type": "server_error"}},
            )
            return
        if step is not None and step.kind == "stream_error" and not data.get("stream"):
            await _json(send, 500, {"error": {"message": "fake upstream error", "type": "server_error"}})
            return
        if step is not None and step.kind == "hang":
            await asyncio.sleep(step.seconds)
            await _json(send, 504, {"error": {"message": "fake hang ended", "type": "server_error"}})
            return
        if step is not None and step.kind == "sleep":
            await asyncio.sleep(step.seconds)
        messages = data.get("messages") or []
        prompt_tokens = count_prompt_tokens(messages)
        calls: list[dict[str, Any]] = []
        if step is not None and step.kind == "tool_calls":
            calls = [
                {
                    "id": f"call_{uuid.uuid4().hex[:12]}",
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in step.tool_calls
            ]
            text = ""
        elif step is not None and step.text is not None:
            text = step.text
        else:
            text = "Fake answer to: " + _last_user_text(messages)
        max_tokens = data.get("max_tokens") or data.get("max_completion_tokens")
        words = text.split(" ") if text else []
        if isinstance(max_tokens, int) and len(words) > max_tokens:
            words = words[:max_tokens]
            text = " ".join(words)
        completion_tokens = len(words) + len(calls)
        if step is not None and step.prompt_tokens is not None:
            prompt_tokens = step.prompt_tokens
        if step is not None and step.completion_tokens is not None:
            completion_tokens = step.completion_tokens
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        finish = "tool_calls" if calls else "stop"
        ident = f"chatcmpl-fake{uuid.uuid4().hex[:16]}"
        created = int(time.time())
        if not data.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text if not calls else None}
            if calls:
                message["tool_calls"] = calls
            await _json(
                send,
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                },
            )
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )

        async def event(payload: dict[str, Any]) -> None:
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + json.dumps(payload).encode() + b"\n\n",
                    "more_body": True,
                }
            )

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        await event(chunk({"role": "assistant", "content": ""}))
        for i, word in enumerate(words):
            if self.chunk_delay_ms:
                await asyncio.sleep(self.chunk_delay_ms / 1000)
            await event(chunk({"content": word if i == 0 else " " + word}))
        if step is not None and step.kind == "stream_error":
            error = {"error": {"message": "fake upstream failure mid-stream", "type": "server_error"}}
            await send(
                {"type": "http.response.body", "body": b"data: " + json.dumps(error).encode() + b"\n\n"}
            )
            return
        for i, call in enumerate(calls):
            await event(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            await event(
                chunk(
                    {"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]}
                )
            )
        await event(chunk({}, finish))
        options = data.get("stream_options") or {}
        if options.get("include_usage"):
            await event(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _embeddings(self, model: str, data: dict[str, Any], send: Send) -> None:
        step = self._next_step(model)
        if step is not None and step.kind == "error":
            await _json(
                send, step.status, {"error": {"message": "fake embeddings error", "type": "server_error"}}
            )
            return
        inputs = data.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        dimensions = int(data.get("dimensions") or 64)
        tokens = sum(math.ceil(len(str(t)) / 4) for t in texts)
        await _json(
            send,
            200,
            {
                "object": "list",
                "model": model,
                "data": [
                    {"object": "embedding", "index": i, "embedding": embed(str(t), dimensions)}
                    for i, t in enumerate(texts)
                ],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


def _deployment(path: str) -> str | None:
    match = re.match(r"^/openai/deployments/([^/]+)/", path)
    return match.group(1) if match else None


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content[:200]
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))[:200]
    return ""


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added before every chat answer")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="added before every streamed word")
    parser.add_argument("--no-record", action="store_true", help="do not keep the requests (load tests)")
    args = parser.parse_args(argv)
    fake = FakeLLM(delay_ms=args.delay_ms, chunk_delay_ms=args.chunk_delay_ms, record=not args.no_record)
    uvicorn.run(fake, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
