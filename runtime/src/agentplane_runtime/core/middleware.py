"""Pure ASGI middleware: request id, the request's root span, and body size limits."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from agentplane_runtime.core.context import request_id_var
from agentplane_runtime.core.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    """Gives every HTTP request an id (the caller's `X-Request-ID` when sane), echoes it, opens the
    request's server span (continuing the caller's trace), and refuses bodies over the limit with 413."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer: Tracer,
        max_body_bytes: int,
        max_upload_bytes: int,
        upload_marker: str = "/knowledge/",
    ) -> None:
        self.app = app
        self.tracer = tracer
        self.max_body = max_body_bytes
        self.max_upload = max_upload_bytes
        self.upload_marker = upload_marker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers[key.decode("latin-1").lower()] = value.decode("latin-1")
        supplied = headers.get("x-request-id", "")
        request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        path: str = scope["path"]
        limit = self.max_upload if self.upload_marker in path else self.max_body
        raw_id = request_id.encode()

        too_large = False
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal responded
            if too_large:
                # the app saw a disconnect while reading the body: answer 413 in its place
                if not responded:
                    responded = True
                    await _reject(send_with_id_raw, 413, f"the request body is larger than {limit} bytes")
                return
            if message["type"] == "http.response.start":
                responded = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", raw_id)]
                span.set_attribute("http.response.status_code", message["status"])
                if message["status"] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        async def send_with_id_raw(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
                span.set_attribute("http.response.status_code", message["status"])
            await send(message)

        parent = extract(headers)
        span = self.tracer.start_span(
            f"{scope['method']} {path}" if len(path) < 200 else scope["method"],
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": scope["method"],
                "url.path": path[:512],
                "agentplane.request_id": request_id,
            },
        )
        ctx_token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                await _reject(send_with_id, 413, f"the request body is larger than {limit} bytes")
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received, too_large
                if too_large:
                    return {"type": "http.disconnect"}
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        too_large = True
                        return {"type": "http.disconnect"}
                return message

            try:
                await self.app(scope, limited_receive, send_with_id)
            except Exception:
                if not too_large:
                    raise
            if too_large and not responded:
                responded = True
                await _reject(send_with_id_raw, 413, f"the request body is larger than {limit} bytes")
        finally:
            otel_context.detach(ctx_token)
            span.end()
            request_id_var.reset(token)


async def _reject(send: Send, status: int, message: str) -> None:
    body = orjson.dumps(error_body(message, "invalid_request_error"))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
