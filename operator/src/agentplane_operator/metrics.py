"""Prometheus metrics of the operator, and the small HTTP server for `/metrics` and `/healthz`."""

from __future__ import annotations

import bisect
import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from agentplane_platform.quotas import QuotaLimits

READY_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
"""Seconds from a new Agent generation to its Ready: from a config change to a cold image pull."""


class GcPauses(Collector):
    """Python's cyclic garbage collections, each one's pause by generation, as a histogram
    (`agentplane_operator_gc_pause_seconds`): while one runs the operator's event loop stands still,
    no watch event, reconcile or request moving. Counted by a `gc.callbacks` entry (`Metrics.watch_gc`)
    into plain lists, no lock taken: a collection can start inside any code, a scrape's included."""

    BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

    def __init__(self) -> None:
        self._counts = [[0] * (len(self.BUCKETS) + 1) for _ in range(3)]  # the last: over every bound
        self._sums = [0.0] * 3
        self._started = 0.0

    def __call__(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = info["generation"]
        self._sums[generation] += pause
        self._counts[generation][bisect.bisect_left(self.BUCKETS, pause)] += 1

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "agentplane_operator_gc_pause_seconds",
            "Pauses of the operator's event loop for Python's cyclic garbage collections, by generation.",
            labels=["generation"],
        )
        for generation in range(3):
            cumulative, buckets = 0, []
            for bound, count in zip((*self.BUCKETS, math.inf), self._counts[generation], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), float(cumulative)))
            family.add_metric([str(generation)], buckets, self._sums[generation])
        yield family


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
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
        self.reads = Counter(
            "agentplane_operator_api_reads", "Read requests (GET) sent to the Kubernetes API by the reconcilers.",
            ["kind"], registry=r,
        )  # fmt: skip
        self.agent_ready = Histogram(
            "agentplane_operator_agent_ready_seconds",
            "From this operator first seeing a new Agent generation to its writing Ready=True for it.",
            ["namespace"], buckets=READY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tenant_budget = Gauge(
            "agentplane_tenant_monthly_budget_usd", "A Tenant's monthly LLM budget in USD (0: none).",
            ["tenant"], registry=r,
        )  # fmt: skip
        self.tenant_tokens_per_minute = Gauge(
            "agentplane_tenant_tokens_per_minute", "A Tenant's LLM tokens per minute limit.",
            ["tenant"], registry=r,
        )  # fmt: skip
        self.tenant_requests_per_minute = Gauge(
            "agentplane_tenant_requests_per_minute", "A Tenant's LLM requests per minute limit.",
            ["tenant"], registry=r,
        )  # fmt: skip

        self.budget_warnings = Counter(
            "agentplane_operator_budget_threshold",
            "Budget warnings sent: a Tenant's spend this month reached this share (80, 100 %) of its budget.",
            ["tenant", "threshold"], registry=r,
        )  # fmt: skip
        self.budget_used = Gauge(
            "agentplane_tenant_budget_used_ratio",
            "Share of its monthly budget a Tenant has spent this UTC month (1: all of it); none without a budget.",
            ["tenant"], registry=r,
        )  # fmt: skip
        self.gc_pauses = GcPauses()
        r.register(self.gc_pauses)

    def watch_gc(self) -> Callable[[], None]:
        """Time every garbage collection from now on (`gc_pauses`); returns what stops it."""
        gc.callbacks.append(self.gc_pauses)
        return lambda: gc.callbacks.remove(self.gc_pauses)

    def count_write(self, kind: str, verb: str) -> None:
        self.writes.labels(kind, verb).inc()

    def count_read(self, kind: str) -> None:
        self.reads.labels(kind).inc()

    def _tenant_gauges(self) -> tuple[Gauge, Gauge, Gauge]:
        return self.tenant_budget, self.tenant_tokens_per_minute, self.tenant_requests_per_minute

    def set_tenant_limits(self, limits: QuotaLimits) -> None:
        """The Tenant's limits from its spec, so dashboards can show use against them."""
        values = (limits.monthly_budget_usd, limits.tokens_per_minute, limits.requests_per_minute)
        for gauge, value in zip(self._tenant_gauges(), values, strict=True):
            gauge.labels(limits.tenant).set(value)

    def set_budget_used(self, tenant: str, share: float | None) -> None:
        """The share of its budget the Tenant spent this month (None: it has no budget)."""
        if share is None:
            with contextlib.suppress(KeyError):
                self.budget_used.remove(tenant)
        else:
            self.budget_used.labels(tenant).set(share)

    def forget_tenant(self, tenant: str) -> None:
        for gauge in (*self._tenant_gauges(), self.budget_used):
            with contextlib.suppress(KeyError):
                gauge.remove(tenant)


class ReadyClock:
    """Times each new Agent generation, from when this process first sees it to when it writes
    `Ready=True` with that `observedGeneration`, into `agentplane_operator_agent_ready_seconds`.

    It lives in memory: a generation still pending when the process stops is never observed, and
    neither is the generation an Agent already has when this process first sees it (it is new to
    nobody), unless the Agent was created after the process started. A generation replaced by a
    newer one before it got Ready, or that never gets Ready, is never observed either.
    """

    def __init__(
        self,
        histogram: Histogram,
        *,
        started: datetime | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.histogram = histogram
        # creationTimestamps have whole seconds: an Agent created in the second this process
        # started counts as created after it
        self.started = (started or datetime.now(UTC)).replace(microsecond=0)
        self.clock = clock
        self._known: dict[tuple[str, str], int] = {}
        self._pending: dict[tuple[str, str], tuple[int, float]] = {}

    def seen(self, namespace: str, name: str, generation: int, created: datetime | None) -> None:
        """A reconcile of this Agent generation began."""
        key = (namespace, name)
        known = self._known.get(key)
        if known is not None and generation <= known:
            return
        self._known[key] = generation
        if known is None and (created is None or created < self.started):
            return
        self._pending[key] = (generation, self.clock())

    def written(self, namespace: str, name: str, generation: int, *, was_ready: bool, is_ready: bool) -> None:
        """This reconcile's status is written: `was_ready`/`is_ready` say whether the status said
        `Ready=True` with `observedGeneration == generation` before and after the write."""
        key = (namespace, name)
        pending = self._pending.get(key)
        if pending is None or pending[0] != generation:
            return
        if was_ready:  # someone else's write (or a body older than the status): not ours to time
            del self._pending[key]
        elif is_ready:
            del self._pending[key]
            self.histogram.labels(namespace).observe(self.clock() - pending[1])

    def forget(self, namespace: str, name: str) -> None:
        """The Agent is gone."""
        self._known.pop((namespace, name), None)
        self._pending.pop((namespace, name), None)

    def pending(self) -> int:
        return len(self._pending)


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
