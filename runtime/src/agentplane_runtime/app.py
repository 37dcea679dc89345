"""The FastAPI app: `create_app(settings)` serves the agent of `settings.config` at /v1.

`agent_router()` is the per-agent API (chat, models, knowledge, keys, usage, budget, audit); it can
be included several times in one app (`/t/{tenant}/a/{agent}/v1`) sharing one `Runtime` — the agent
then comes from the path (see `api.deps.get_agent`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from fastapi.telemetry import TelemetryConfig
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import start_http_server

from agentplane_runtime.agents import AgentRegistry, load_config
from agentplane_runtime.api.routes import chat, health, keys, knowledge, reports
from agentplane_runtime.core.config import Settings
from agentplane_runtime.core.errors import install_error_handlers
from agentplane_runtime.core.middleware import RequestContextMiddleware
from agentplane_runtime.quotas import LimitsSource
from agentplane_runtime.retrieval import Embedder
from agentplane_runtime.services import Runtime, build_runtime
from agentplane_runtime.startup import StartupError, report


def agent_router() -> APIRouter:
    """The API of one agent: chat completions, models, knowledge."""
    router = APIRouter()
    router.include_router(chat.router)
    router.include_router(knowledge.router)
    router.include_router(keys.router)
    router.include_router(reports.router)
    return router


NO_FASTAPI_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}
"""FastAPI's native telemetry, every signal of it off (`create_app`)."""


def create_app(
    settings: Settings,
    *,
    agents: AgentRegistry | None = None,
    span_exporter: SpanExporter | None = None,
    limits: LimitsSource | None = None,
    embedder: Embedder | None = None,
) -> FastAPI:
    """The runtime app. Without `agents`, the agent config at `settings.config` is loaded at startup
    and served at /v1."""
    registry = agents or AgentRegistry()
    runtime_box: list[Runtime] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if agents is None:
            if settings.config is None:
                raise RuntimeError("no agent config: set AGENTPLANE_CONFIG or pass --config")
            registry.put(load_config(settings.config), default=True)
        async with contextlib.AsyncExitStack() as stack:
            try:
                runtime = await stack.enter_async_context(
                    build_runtime(
                        settings, registry, span_exporter=span_exporter, limits=limits, embedder=embedder
                    )
                )
            except StartupError as error:
                report(settings, error)
                raise
            if settings.metrics_port is not None:
                server, _ = start_http_server(
                    settings.metrics_port, settings.host, registry=runtime.telemetry.metrics.registry
                )
                stack.callback(server.server_close)
                stack.callback(server.shutdown)
            app.state.runtime = runtime
            runtime_box.append(runtime)
            yield

    app = FastAPI(
        title="agentplane runtime",
        summary="An OpenAI-compatible agent server with retrieval, tools, quotas, metering and telemetry",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry turns on by itself when the process has global providers (and
        # FASTAPI_OTEL_AUTO_CONFIGURE makes them from the OTLP endpoint pods are given): a second
        # server span, and logs of refused requests with their input. What the runtime exports is
        # its own tracer's spans (`core.telemetry`, `core.middleware`), chosen here, not by absence.
        telemetry=NO_FASTAPI_TELEMETRY,
    )
    install_error_handlers(app)
    app.include_router(agent_router(), prefix="/v1")
    app.include_router(health.router)
    if settings.metrics_port is None:
        app.include_router(health.metrics_router)
    # the tracer is the runtime's, created in the lifespan; the middleware looks it up lazily
    app.add_middleware(_LazyContextMiddleware, settings=settings, runtime_box=runtime_box)
    return app


class _LazyContextMiddleware:
    """`RequestContextMiddleware` built on the first request (the tracer exists once the lifespan ran)."""

    def __init__(self, app: object, *, settings: Settings, runtime_box: list[Runtime]) -> None:
        self.app = app
        self.settings = settings
        self.runtime_box = runtime_box
        self.inner: RequestContextMiddleware | None = None

    async def __call__(self, scope: dict[str, object], receive: object, send: object) -> None:
        if self.inner is None:
            if scope["type"] != "http" or not self.runtime_box:
                await self.app(scope, receive, send)  # type: ignore[operator]
                return
            self.inner = RequestContextMiddleware(
                self.app,  # type: ignore[arg-type]
                tracer=self.runtime_box[0].telemetry.tracer,
                max_body_bytes=self.settings.max_body_bytes,
                max_upload_bytes=self.settings.max_upload_bytes,
            )
        await self.inner(scope, receive, send)  # type: ignore[arg-type]
