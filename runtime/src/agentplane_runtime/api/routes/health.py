"""Probes and metrics: /healthz/{startup,live,ready}, /metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from agentplane_platform.contract import LIVE_PATH, METRICS_PATH, READY_PATH, STARTUP_PATH
from agentplane_runtime.api.deps import RuntimeDep

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])
"""`/metrics` beside the API; a pod serves it on a port of its own instead (`Settings.metrics_port`)."""


@router.get(STARTUP_PATH, summary="200 once the config is loaded and the clients are built")
async def startup(runtime: RuntimeDep) -> dict[str, str]:
    return {"status": "started"}


@router.get(LIVE_PATH, summary="200 while the process serves requests")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    READY_PATH,
    summary="200 when the required dependencies answer; 503 otherwise (every check is listed)",
    responses={503: {"description": "A dependency is unreachable"}},
)
async def ready(runtime: RuntimeDep) -> Response:
    checks = await asyncio.gather(
        runtime.check_database(), runtime.check_quota_store(), runtime.check_vector_store()
    )
    names = ("database", "quota_store", "vector_store")
    result = {name: "ok" if ok else "unreachable" for name, ok in zip(names, checks, strict=True)}
    optional = set(runtime.settings.ready_optional)
    healthy = all(ok or name in optional for name, ok in zip(names, checks, strict=True))
    return JSONResponse(
        {"status": "ready" if healthy else "not_ready", "checks": result}, status_code=200 if healthy else 503
    )


@metrics_router.get(METRICS_PATH, summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.telemetry.metrics.registry), media_type=CONTENT_TYPE_LATEST)
