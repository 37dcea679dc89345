"""Prometheus metrics of the operator, and the small HTTP server for `/metrics` and `/healthz`."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.reconciles = Counter(
            "agentplane_operator_reconcile", "Reconciles run, by kind, cause and result.",
            ["kind", "cause", "result"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "agentplane_operator_reconcile_duration_seconds", "Time one reconcile took.", ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "agentplane_operator_reconcile_errors", "Reconciles that ended in a failing condition or an error.",
            ["kind", "reason"], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "agentplane_operator_queue_depth", "Reconciles waiting for or holding their object's lock.",
            ["kind"], registry=r,
        )  # fmt: skip
        self.writes = Counter(
            "agentplane_operator_api_writes", "Write requests sent to the Kubernetes API by the reconcilers.",
            ["kind", "verb"], registry=r,
        )  # fmt: skip

    def count_write(self, kind: str, verb: str) -> None:
        self.writes.labels(kind, verb).inc()


async def serve(metrics: Metrics, host: str, port: int) -> web.AppRunner:
    """Start `/metrics` and `/healthz`; the caller cleans up the returned runner."""

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
