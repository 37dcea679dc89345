"""The operator's metrics: the time a new Agent generation takes to Ready, the Tenants' limits as
gauges, its garbage collections' pauses, and an exposition (served by its own `/metrics`) that `promtool check metrics` accepts."""

from __future__ import annotations

import asyncio
import gc
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentplane_operator.metrics import Metrics, ReadyClock, serve
from agentplane_operator.reconcile import StatusWrite
from agentplane_platform.quotas import QuotaLimits
from support.ports import free_port
from support.prometheus import check_metrics, promtool

STARTED = datetime(2025, 1, 1, 12, 0, 0, 500000, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def observed(metrics: Metrics, namespace: str) -> tuple[float, float]:
    """(count, sum) of the agent-ready histogram of `namespace`."""
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(_exposition(metrics))
        for sample in family.samples
        if sample.labels.get("namespace") == namespace
    }
    return (
        values.get("agentplane_operator_agent_ready_seconds_count", 0.0),
        values.get("agentplane_operator_agent_ready_seconds_sum", 0.0),
    )


def test_a_new_generation_is_timed_from_its_first_sighting_to_its_ready() -> None:
    metrics, clock = Metrics(), FakeClock()
    ready = ReadyClock(metrics.agent_ready, started=STARTED, clock=clock)
    created = STARTED + timedelta(seconds=30)
    ready.seen("tenant-a", "bot", 1, created)
    clock.now += 4
    ready.seen("tenant-a", "bot", 1, created)  # another reconcile of the same generation
    ready.written("tenant-a", "bot", 1, was_ready=False, is_ready=False)  # rolling out
    clock.now += 3
    ready.written("tenant-a", "bot", 1, was_ready=False, is_ready=True)
    assert observed(metrics, "tenant-a") == (1, 7.0)
    # Ready flapping within the same generation is not a new generation
    ready.seen("tenant-a", "bot", 1, created)
    ready.written("tenant-a", "bot", 1, was_ready=False, is_ready=True)
    assert observed(metrics, "tenant-a") == (1, 7.0)
    # a spec change: timed from when it is seen
    clock.now += 100
    ready.seen("tenant-a", "bot", 2, created)
    clock.now += 2
    ready.written("tenant-a", "bot", 2, was_ready=False, is_ready=True)
    assert observed(metrics, "tenant-a") == (2, 9.0)
    assert ready.pending() == 0


def test_what_the_clock_does_not_observe() -> None:
    metrics, clock = Metrics(), FakeClock()
    ready = ReadyClock(metrics.agent_ready, started=STARTED, clock=clock)
    # an Agent that was there before this process: its current generation is new to nobody
    before = STARTED - timedelta(minutes=5)
    ready.seen("tenant-a", "old", 3, before)
    ready.written("tenant-a", "old", 3, was_ready=False, is_ready=True)
    # ... but its next generation is
    ready.seen("tenant-a", "old", 4, before)
    clock.now += 1
    ready.written("tenant-a", "old", 4, was_ready=False, is_ready=True)
    assert observed(metrics, "tenant-a") == (1, 1.0)
    # created in the second this process started (creationTimestamps have whole seconds): timed
    ready.seen("tenant-b", "same-second", 1, STARTED.replace(microsecond=0))
    assert ready.pending() == 1
    # a generation replaced before it got Ready is dropped; the new one is timed from its sighting
    ready.seen("tenant-b", "same-second", 2, STARTED)
    clock.now += 5
    ready.written("tenant-b", "same-second", 1, was_ready=False, is_ready=True)  # an older body
    ready.written("tenant-b", "same-second", 2, was_ready=False, is_ready=True)
    assert observed(metrics, "tenant-b") == (1, 5.0)
    # a status already Ready for the generation before our write: not ours to time
    ready.seen("tenant-c", "bot", 1, STARTED + timedelta(seconds=1))
    ready.written("tenant-c", "bot", 1, was_ready=True, is_ready=True)
    assert observed(metrics, "tenant-c") == (0, 0.0)
    # a deleted Agent is forgotten; a new one of the same name is timed afresh
    ready.seen("tenant-c", "never", 1, STARTED + timedelta(seconds=1))
    ready.forget("tenant-c", "never")
    assert ready.pending() == 0


def test_status_write_reads_ready_for_a_generation() -> None:
    ready = {"type": "Ready", "status": "True"}
    write = StatusWrite(
        before={"observedGeneration": 1, "conditions": [ready]},
        after={"observedGeneration": 2, "conditions": [ready]},
    )
    assert write.ready(2) == (False, True)
    assert write.ready(1) == (True, False)
    assert StatusWrite({}, {"observedGeneration": 2, "conditions": [{**ready, "status": "False"}]}).ready(
        2
    ) == (
        False,
        False,
    )


def test_tenant_limits_are_gauges_until_the_tenant_goes() -> None:
    metrics = Metrics()
    metrics.set_tenant_limits(
        QuotaLimits("acme", tokens_per_minute=5000, requests_per_minute=60, monthly_budget_usd=25)
    )
    text = _exposition(metrics)
    assert 'agentplane_tenant_monthly_budget_usd{tenant="acme"} 25.0' in text
    assert 'agentplane_tenant_tokens_per_minute{tenant="acme"} 5000.0' in text
    assert 'agentplane_tenant_requests_per_minute{tenant="acme"} 60.0' in text
    metrics.forget_tenant("acme")
    metrics.forget_tenant("acme")  # twice: a retried deletion
    assert 'tenant="acme"' not in _exposition(metrics)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


@pytest.mark.asyncio
async def test_promtool_accepts_the_operator_exposition() -> None:
    promtool()
    metrics = Metrics()
    metrics.reconciles.labels("Agent", "event", "ok").inc()
    metrics.duration.labels("Agent").observe(0.2)
    metrics.errors.labels("Agent", "PromptNotFound").inc()
    metrics.queue_depth.labels("Agent").set(0)
    metrics.count_write("Deployment", "apply")
    metrics.agent_ready.labels("tenant-acme").observe(12)
    metrics.set_tenant_limits(
        QuotaLimits("acme", tokens_per_minute=5000, requests_per_minute=60, monthly_budget_usd=25)
    )
    unwatch = metrics.watch_gc()
    gc.collect()
    unwatch()
    port = free_port()
    runner = await serve(metrics, "127.0.0.1", port)
    try:
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    finally:
        await runner.cleanup()
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "agentplane_operator_reconcile", "agentplane_operator_reconcile_duration_seconds",
        "agentplane_operator_reconcile_errors", "agentplane_operator_queue_depth", "agentplane_operator_api_writes",
        "agentplane_operator_agent_ready_seconds", "agentplane_tenant_monthly_budget_usd",
        "agentplane_tenant_tokens_per_minute", "agentplane_tenant_requests_per_minute",
        "agentplane_operator_gc_pause_seconds",
        "process_cpu_seconds", "process_resident_memory_bytes", "python_gc_objects_collected", "python_info",
    } <= families  # fmt: skip
    check_metrics(text)


def _pauses(metrics: Metrics, generation: str) -> dict[str, float]:
    """The pause histogram's samples of one generation: `count`, `sum`, and each bucket by its bound."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        if family.name == "agentplane_operator_gc_pause_seconds":
            for sample in family.samples:
                if sample.labels["generation"] == generation:
                    key = sample.labels.get("le") or sample.name.rsplit("_", 1)[-1]
                    found[key] = sample.value
    return found


def test_each_garbage_collection_is_timed_while_watched() -> None:
    """A full collection stops the event loop: each one is a sample of its generation's pause
    histogram, from `watch_gc` until the function it returned is called."""
    metrics = Metrics()
    assert _pauses(metrics, "2")["count"] == 0
    automatic = gc.isenabled()
    gc.disable()  # only the collections made here
    try:
        unwatch = metrics.watch_gc()
        try:
            gc.collect()
            gc.collect()
        finally:
            unwatch()
        gc.collect()  # no longer watched
    finally:
        if automatic:
            gc.enable()
    full = _pauses(metrics, "2")
    assert full["count"] == 2
    assert full["+Inf"] == 2
    assert 0 < full["sum"] < 60
    bounds = [float(k) for k in full if k not in ("count", "sum", "+Inf")]
    assert bounds == sorted(bounds)
    assert [full[repr(b)] for b in bounds] == sorted(full[repr(b)] for b in bounds)  # cumulative
    assert metrics.gc_pauses not in gc.callbacks
