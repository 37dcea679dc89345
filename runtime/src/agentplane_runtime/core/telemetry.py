"""Traces (OpenTelemetry, GenAI semantic conventions) and Prometheus metrics, owned by one app."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agentplane_runtime.core.config import Settings

# Buckets for LLM latencies: from a cached answer to a long tool-using generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)


class Metrics:
    """The runtime's Prometheus metrics, in a registry of its own (served at /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("tenant", "agent", "model")
        r = self.registry
        self.requests = Counter(
            "agentplane_requests",
            "Chat requests by outcome",
            ("tenant", "agent", "model", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "agentplane_request_duration_seconds",
            "Chat request latency",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "agentplane_time_to_first_token_seconds",
            "Time to the first streamed token",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("agentplane_tokens", "Tokens by direction", (*labels, "direction"), registry=r)
        self.cost = Counter("agentplane_cost_usd", "Cost in USD from litellm's cost map", labels, registry=r)
        self.errors = Counter("agentplane_errors", "Errors by type", ("tenant", "agent", "type"), registry=r)
        self.active = Gauge(
            "agentplane_active_requests", "Chat requests in progress", ("tenant", "agent"), registry=r
        )
        self.quota_rejections = Counter(
            "agentplane_quota_rejections",
            "Requests refused by a quota",
            ("tenant", "agent", "limit"),
            registry=r,
        )
        self.circuit_state = Gauge(
            "agentplane_circuit_state",
            "Circuit of a model: 0 closed, 1 half-open, 2 open",
            ("model",),
            registry=r,
        )
        self.llm_attempts = Counter(
            "agentplane_llm_attempts", "LLM calls by model and outcome", ("model", "outcome"), registry=r
        )
        self.tool_calls = Counter(
            "agentplane_tool_calls",
            "Tool calls by tool and outcome",
            ("tenant", "agent", "tool", "outcome"),
            registry=r,
        )
        self.retrieval = Counter(
            "agentplane_retrievals", "Retrievals by outcome", ("tenant", "agent", "outcome"), registry=r
        )
        self.usage_buffered = Gauge(
            "agentplane_usage_buffered", "Usage records waiting for the database", registry=r
        )
        self.usage_written = Counter("agentplane_usage_written", "Usage records written", registry=r)
        self.usage_lost = Counter(
            "agentplane_usage_lost", "Usage records that could be neither buffered nor written", registry=r
        )


@dataclass
class Telemetry:
    """A tracer provider of the app's own (not the global one) and its metrics."""

    provider: TracerProvider
    tracer: Tracer
    metrics: Metrics

    def shutdown(self) -> None:
        self.provider.shutdown()


def create_telemetry(settings: Settings, exporter: SpanExporter | None = None) -> Telemetry:
    """Telemetry honouring the OTEL_* variables (service name, resource attributes, OTLP endpoint)."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "agentplane-runtime"}))
    provider = TracerProvider(resource=resource)
    if exporter is None:
        if settings.otel_traces_exporter == "console":
            exporter = ConsoleSpanExporter()
        elif settings.otel_traces_exporter == "otlp" and settings.otel_exporter_otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/")
            if not endpoint.endswith("/v1/traces"):
                endpoint += "/v1/traces"
            exporter = OTLPSpanExporter(endpoint=endpoint)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return Telemetry(provider, provider.get_tracer("agentplane.runtime"), Metrics())
