"""One error shape for every client-facing error: OpenAI's `{"error": {...}}` plus the request id."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from agentplane_runtime.core.context import request_id_var

log = logging.getLogger("agentplane.runtime")


class ApiError(Exception):
    """An error a client sees: HTTP status, OpenAI error type and code, a safe message, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self, request_id: str | None = None) -> dict[str, object]:
        return error_body(self.message, self.type, self.code, self.param, request_id=request_id)


def error_body(
    message: str,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    *,
    request_id: str | None = None,
) -> dict[str, object]:
    """`request_id`: the request's, when known better than from inside the request context."""
    return {
        "error": {
            "message": message,
            "type": type_,
            "code": code,
            "param": param,
            "request_id": request_id or request_id_var.get(),
        }
    }


def unavailable(what: str) -> ApiError:
    """The 503 of a store that does not answer: `what` names it; the client retries in 5 s."""
    return ApiError(
        503, f"{what} is unavailable, retry shortly", type="api_error", headers={"Retry-After": "5"}
    )


def error_response(error: ApiError, request_id: str | None = None) -> Response:
    headers = dict(error.headers)
    if request_id is not None:
        headers.setdefault("X-Request-Id", request_id)
    return Response(
        orjson.dumps(error.body(request_id)),
        status_code=error.status,
        media_type="application/json",
        headers=headers,
    )


_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    location = [str(p) for p in first.get("loc", ()) if p != "body"]
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return "the request body is not valid JSON", None
    where = ".".join(location)
    message = str(first.get("msg", "invalid value"))
    extra = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return (f"{where}: {message}{extra}" if where else f"{message}{extra}"), (where or None)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as JSON with the request id; never a stack trace."""

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        return error_response(ApiError(400, message, param=param, code="invalid_request"))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(
            ApiError(
                exc.status_code,
                message,
                type=_STATUS_TYPES.get(exc.status_code, "api_error"),
                headers=dict(exc.headers or {}),
            )
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette answers an unhandled error from its outermost middleware, outside the request
        # context (so the context variable is already reset, and the response bypasses the
        # middleware that adds the id header): take the id the context middleware left in the scope.
        state = request.scope.get("state") or {}
        request_id = state.get("request_id") if isinstance(state, dict) else None
        log.error("unhandled error (request %s)", request_id, exc_info=exc)
        return error_response(ApiError(500, "internal error", type="api_error"), request_id=request_id)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
