"""Per-request context shared with logs: the request id."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("agentplane_request_id", default=None)
