"""Traces (OpenTelemetry, GenAI semantic conventions) and Prometheus metrics, owned by one app."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Tracer
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from agentplane_runtime.core.config import Settings

# Buckets for LLM latencies: from a cached answer to a long tool-using generation. They hold the
# latency SLOs' thresholds (0.5, 1, 2, 4, 8, 16, 32 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)
# The platform's own time in a request (everything but providers and tools): milliseconds, mostly.
OVERHEAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
RETRIEVAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# From a request's end to the commit of its usage record: the flusher's period up to an outage.
USAGE_DELAY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
# OpenTelemetry GenAI semantic conventions' advised boundaries.
GEN_AI_TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
GEN_AI_DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
GEN_AI_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

GEN_AI_OPERATION = "chat"
GEN_AI_SERVER_PROVIDER = "agentplane"
"""`gen_ai.provider.name` of the runtime's own (server) metrics: the runtime is the provider its
callers see (a custom value, as the conventions allow)."""


def status_class(code: int) -> str:
    """The `status` label of a request from the HTTP status it got."""
    if code == 429:
        return "rate_limited"
    if code >= 500:
        return "server_error"
    if code >= 400:
        return "client_error"
    return "ok"


class Metrics:
    """The runtime's Prometheus metrics, in a registry of its own (served at /metrics).

    Prometheus names and base units (`_total` counters, `_seconds`); the GenAI ones are the
    OpenTelemetry GenAI semantic conventions' metrics under their Prometheus names (dots to
    underscores, the unit appended), with `tenant` and `agent` added. A label that is absent in the
    conventions' sense (`error_type` of a success) is the empty string, which Prometheus treats as
    no label at all.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        labels = ("tenant", "agent", "model")
        self.requests = Counter(
            "agentplane_requests",
            "Chat requests, once each: status is ok, client_error (4xx but 429), rate_limited (429) or "
            "server_error (5xx); code is the HTTP status sent (a stream failing mid-way: its error event's)",
            (*labels, "status", "code"),
            registry=r,
        )
        self.latency = Histogram(
            "agentplane_request_duration_seconds",
            "Chat request latency, to the last byte",
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
        self.overhead = Histogram(
            "agentplane_overhead_seconds",
            "A chat request's wall time minus its waits on LLM providers (every attempt and retry "
            "back-off) and on tool calls: the platform's own time",
            ("tenant", "agent"),
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "agentplane_fallbacks",
            "Chat requests answered by a fallback model (model: the fallback that answered)",
            labels,
            registry=r,
        )
        self.tokens = Counter("agentplane_tokens", "Tokens by direction", (*labels, "direction"), registry=r)
        self.cost = Counter(
            "agentplane_cost_usd",
            "Cost in USD of model and embedding calls, at the price that applies (the tenant's, the platform's, else litellm's cost map)",
            labels,
            registry=r,
        )
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
            "Tool calls by tool and outcome: ok, error, timeout, denied (egress), unknown (no such tool) "
            "or invalid_arguments (not matching the tool's parameters; the tool was not called)",
            ("tenant", "agent", "tool", "outcome"),
            registry=r,
        )
        self.tool_duration = Histogram(
            "agentplane_tool_call_duration_seconds",
            "Time a tool call took, whatever its outcome",
            ("tenant", "agent", "tool"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retrieval = Counter(
            "agentplane_retrievals", "Retrievals by outcome", ("tenant", "agent", "outcome"), registry=r
        )
        self.retrieval_duration = Histogram(
            "agentplane_retrieval_duration_seconds",
            "Time a request's retrieval took (retry included), whatever its outcome",
            ("tenant", "agent"),
            buckets=RETRIEVAL_BUCKETS,
            registry=r,
        )
        self.usage_buffered = Gauge(
            "agentplane_usage_buffered", "Usage records waiting for the database", registry=r
        )
        self.usage_written = Counter("agentplane_usage_written", "Usage records written", registry=r)
        self.usage_lost = Counter(
            "agentplane_usage_lost", "Usage records that could be neither buffered nor written", registry=r
        )
        self.usage_delay = Histogram(
            "agentplane_usage_write_delay_seconds",
            "From a usage record's creation (its request's end) to the commit that wrote it",
            buckets=USAGE_DELAY_BUCKETS,
            registry=r,
        )
        # OpenTelemetry GenAI semantic conventions: the runtime as a client of providers ...
        client = ("tenant", "agent", "gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                  "gen_ai_response_model")  # fmt: skip
        self.gen_ai_tokens = Histogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used (per LLM call)",
            (*client, "gen_ai_token_type"),
            buckets=GEN_AI_TOKEN_BUCKETS,
            registry=r,
        )
        self.gen_ai_operation = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (per LLM call; streamed calls to their last chunk)",
            (*client, "error_type"),
            buckets=GEN_AI_DURATION_BUCKETS,
            registry=r,
        )
        # ... and as a GenAI server to its callers (gen_ai_request_model: the agent)
        self.gen_ai_server_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Generative AI server request duration (per chat request, to the last byte)",
            (*client, "error_type"),
            buckets=GEN_AI_DURATION_BUCKETS,
            registry=r,
        )
        self.gen_ai_server_ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to generate the first token, for successful streamed chat requests",
            client,
            buckets=GEN_AI_TTFT_BUCKETS,
            registry=r,
        )


@dataclass
class Telemetry:
    """A tracer provider of the app's own (not the global one) and its metrics."""

    provider: TracerProvider
    tracer: Tracer
    metrics: Metrics

    def shutdown(self) -> None:
        self.provider.shutdown()


class _HashedOnce(Resource):
    """A resource whose hash is worked out once: it never changes, and the OTLP encoder hashes the
    resource of every span it exports (a JSON dump of its attributes each time)."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def create_telemetry(settings: Settings, exporter: SpanExporter | None = None) -> Telemetry:
    """Telemetry honouring the OTEL_* variables (service name, resource attributes, OTLP endpoint)."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "agentplane-runtime"}))
    provider = TracerProvider(resource=_HashedOnce(resource))
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
