"""Telemetry: spans for a key's lookup, quota, retrieval, each LLM attempt and each tool call with the GenAI
attribute names; Prometheus metrics labelled by tenant/agent/model; JSON logs with the request id."""

from __future__ import annotations

import io
import json
import logging

import httpx
import openai
import pytest
from runtime_support import CALCULATOR, make_config, parse_metrics, serve, tenant_name

from agentplane_runtime import Settings
from agentplane_runtime.core.logging import JsonFormatter
from support.fake_llm import FakeLLM, error, reply, tool_calls
from support.waiting import wait_for_async

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]


async def test_spans_metrics_and_logs(settings: Settings, fake_llm: FakeLLM) -> None:
    tenant = tenant_name()
    config = make_config(
        tenant,
        model="openai/flaky-model",
        fallbacks=["openai/gpt-4o-mini"],
        tools=[CALCULATOR],
        knowledge=["docs"],
    )
    tuned = settings.model_copy(update={"llm_retries": 0, "ensure_collections": True})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("agentplane").addHandler(handler)
    try:
        async with serve(tuned, config) as served:
            client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
            fake_llm.script("flaky-model", [error(500), error(500)])
            fake_llm.script(
                "gpt-4o-mini",
                [
                    tool_calls(("calculator", {"expression": "6*7"})),
                    reply("42", prompt_tokens=30, completion_tokens=1),
                ],
            )
            raw = await client.chat.completions.with_raw_response.create(
                model="helper",
                messages=[{"role": "user", "content": "secret prompt text 6*7?"}],
                extra_headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            )
            request_id = raw.headers["x-request-id"]

            async def request_ended() -> bool:
                # the answer is sent before its bookkeeping (metrics, settlement), and the server span
                # ends after that: once it has, every metric of the request is in
                finished = served.spans.get_finished_spans()
                return any(s.name == "POST /v1/chat/completions" for s in finished)

            await wait_for_async("the chat request's server span to end", request_ended, 30, interval=0.02)
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"{served.url}/metrics")).text
            spans = served.spans.get_finished_spans()
            await client.close()
    finally:
        logging.getLogger("agentplane").removeHandler(handler)
    names = [s.name for s in spans]
    for expected in (
        "auth lookup",  # the key was new to the runtime
        "quota",
        "retrieval",
        "chat openai/flaky-model",
        "chat openai/gpt-4o-mini",
        "execute_tool calculator",
    ):
        assert expected in names, names
    server = next(s for s in spans if s.name == "POST /v1/chat/completions")
    # the caller's trace continues, every span of the request is in it
    assert format(server.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert {s.context.trace_id for s in spans if s.name != "GET /metrics"} == {server.context.trace_id}
    failed = next(s for s in spans if s.name == "chat openai/flaky-model")
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "http_500"
    answered = [s for s in spans if s.name == "chat openai/gpt-4o-mini"]
    assert len(answered) == 2
    attrs = answered[-1].attributes
    assert attrs is not None
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.request.model"] == "openai/gpt-4o-mini"
    assert attrs["gen_ai.usage.input_tokens"] == 30
    assert attrs["gen_ai.usage.output_tokens"] == 1
    tool = next(s for s in spans if s.name == "execute_tool calculator")
    assert tool.attributes is not None
    assert tool.attributes["gen_ai.tool.name"] == "calculator"
    samples = parse_metrics(metrics)
    ours = {"tenant": tenant, "agent": "helper", "model": "openai/gpt-4o-mini"}
    assert (
        samples[("agentplane_requests_total", frozenset({**ours, "status": "ok", "code": "200"}.items()))]
        == 1.0
    )
    assert samples[("agentplane_request_duration_seconds_count", frozenset(ours.items()))] == 1.0
    assert samples[("agentplane_tokens_total", frozenset({**ours, "direction": "output"}.items()))] == 2.0
    assert samples[("agentplane_cost_usd_total", frozenset(ours.items()))] > 0
    assert (
        samples[
            (
                "agentplane_llm_attempts_total",
                frozenset({"model": "openai/flaky-model", "outcome": "http_500"}.items()),
            )
        ]
        == 2.0
    )
    assert samples[("agentplane_circuit_state", frozenset({"model": "openai/gpt-4o-mini"}.items()))] == 0.0
    assert (
        samples[
            (
                "agentplane_tool_calls_total",
                frozenset(
                    {"tenant": tenant, "agent": "helper", "tool": "calculator", "outcome": "ok"}.items()
                ),
            )
        ]
        == 1.0
    )
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert logged
    assert any(entry.get("request_id") == request_id for entry in logged)
    assert "secret prompt text" not in stream.getvalue()


async def test_trace_sampling_is_set_by_the_standard_variables(
    local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`OTEL_TRACES_SAMPLER=parentbased_traceidratio` with a ratio of 0: the runtime's own traces are
    not exported (nor encoded), a caller's sampled trace still is; unset, every trace is."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from agentplane_runtime.core.telemetry import create_telemetry

    def exported(sampled_parent: bool) -> int:
        exporter = InMemorySpanExporter()
        telemetry = create_telemetry(local_settings, exporter)
        parent = None
        if sampled_parent:
            caller = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
            parent = trace.set_span_in_context(NonRecordingSpan(caller))
        telemetry.tracer.start_span("POST /v1/chat/completions", context=parent).end()
        telemetry.provider.force_flush()
        telemetry.shutdown()
        return len(exporter.get_finished_spans())

    assert exported(sampled_parent=False) == 1
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    assert exported(sampled_parent=False) == 0
    assert exported(sampled_parent=True) == 1


async def test_the_runtime_exports_only_its_own_telemetry(
    settings: Settings, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI (0.165 on) makes spans, metrics and logs of its own as soon as the process has global
    OpenTelemetry providers, as `opentelemetry-instrument` installs, or `FASTAPI_OTEL_AUTO_CONFIGURE`
    makes from the OTLP endpoint every agent pod is given: a second server span per request, and a
    log record of each invalid request with the input it refused, which may be a tenant's prompt. The
    runtime turns that off: what it exports is its own tracer's spans, with the attributes it chose."""
    from opentelemetry import _logs, metrics, trace
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans, readings = InMemorySpanExporter(), InMemoryMetricReader()
    logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    tracer_provider, logger_provider = TracerProvider(), LoggerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    meter_provider = MeterProvider(metric_readers=[readings])
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: tracer_provider)
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: meter_provider)
    monkeypatch.setattr(_logs, "get_logger_provider", lambda: logger_provider)
    async with serve(settings, make_config(tenant_name())) as served:
        key = await served.key()
        fake_llm.script("gpt-4o-mini", [reply("hello")])
        async with httpx.AsyncClient(
            base_url=served.base_url, headers={"Authorization": f"Bearer {key}"}
        ) as http:
            answered = await http.post(
                "/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "hi"}]}
            )
            refused = await http.post(
                "/chat/completions", json={"messages": [{"role": "wizard", "content": "secret prompt text"}]}
            )
        assert (answered.status_code, refused.status_code) == (200, 400)
    # the server is stopped: every span of both requests has ended
    assert any(s.name == "POST /v1/chat/completions" for s in served.spans.get_finished_spans())
    assert spans.get_finished_spans() == ()
    assert logs.get_finished_logs() == ()
    found = readings.get_metrics_data()
    assert [m.name for rm in (found.resource_metrics if found else []) for sm in rm.scope_metrics for m in sm.metrics
            if sm.scope.name == "fastapi"] == []  # fmt: skip


async def test_authentication_has_a_span_only_where_it_waited(settings: Settings, fake_llm: FakeLLM) -> None:
    """A key's first request reads it from the database, and its trace has an `auth lookup` span; the
    next, checked from the cache, has none. Both requests' spans say how the caller authenticated."""
    cached = settings.model_copy(update={"api_key_cache_seconds": 60.0})
    async with serve(cached, make_config(tenant_name())) as served:
        key = await served.key()
        fake_llm.script("gpt-4o-mini", [reply("one"), reply("two")])
        async with httpx.AsyncClient(
            base_url=served.base_url, headers={"Authorization": f"Bearer {key}"}
        ) as http:
            for _ in range(2):
                answered = await http.post(
                    "/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "hi"}]}
                )
                assert answered.status_code == 200, answered.text
    # the server is stopped: every span of both requests has ended
    spans = served.spans.get_finished_spans()
    servers = sorted(
        (s for s in spans if s.name == "POST /v1/chat/completions"), key=lambda s: s.start_time or 0
    )
    assert [(s.attributes or {}).get("agentplane.auth.method") for s in servers] == ["api_key", "api_key"]
    lookups = [s.parent.span_id if s.parent else None for s in spans if s.name == "auth lookup"]
    assert lookups == [servers[0].context.span_id]
