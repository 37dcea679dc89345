"""Helpers for the runtime tests: agent configs, a runtime served over real HTTP, API keys."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypedDict, Unpack

import httpx
import uvicorn
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from agentplane_platform.config import AgentConfig
from agentplane_platform.keys import create_api_key
from agentplane_platform.quotas import QuotaLimits
from agentplane_runtime import AgentRegistry, Runtime, Settings, create_app
from agentplane_runtime.quotas import WINDOW_SECONDS, LimitsSource
from support.ports import free_port
from support.services import Server
from support.waiting import wait_until_serving

__all__ = [
    "CALCULATOR",
    "DIMS",
    "Samples",
    "Served",
    "free_port",
    "make_config",
    "parse_metrics",
    "scrape",
    "serve",
    "tenant_name",
    "total",
]

DIMS = 64
CALCULATOR: dict[str, object] = {
    "type": "builtin",
    "name": "calculator",
    "function_name": "calculator",
    "description": "arithmetic",
    "timeout_seconds": 5,
    "parameters": None,
    "builtin": "calculator",
}
"""The builtin calculator as a resolved tool of `make_config(tools=[...])`."""


def tenant_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def make_config(
    tenant: str,
    agent: str = "helper",
    *,
    model: str = "openai/gpt-4o-mini",
    fallbacks: list[str] | None = None,
    tools: list[dict[str, object]] | None = None,
    knowledge: list[str] | None = None,
    max_tool_calls: int = 4,
    timeout_seconds: int = 30,
    max_input_tokens: int = 16000,
    max_tokens: int | None = None,
    egress: list[str] | None = None,
    template: str = "You are {{ agent }} of {{ tenant }}. Be {{ tone }}.",
) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "tenant": tenant,
            "namespace": f"tenant-{tenant}",
            "agent": agent,
            "description": "a test agent",
            "model": {
                "name": model,
                "fallbacks": fallbacks or [],
                "parameters": {"temperature": 0.2, **({"max_tokens": max_tokens} if max_tokens else {})},
            },
            "prompt": {
                "name": "p",
                "version": 1,
                "template": template,
                "values": {"tone": "brief"},
                "hash": "h",
            },
            "tools": tools or [],
            "knowledge": [
                {
                    "name": kb,
                    "collection": f"{tenant}--{kb}",
                    "embedding_model": "openai/text-embedding-3-small",
                    "dimensions": DIMS,
                    "distance": "Cosine",
                    "top_k": 4,
                    "min_score": 0.0,
                }
                for kb in knowledge or []
            ],
            "limits": {
                "max_tool_calls": max_tool_calls,
                "timeout_seconds": timeout_seconds,
                "max_input_tokens": max_input_tokens,
            },
            "quota": {
                "tenant": tenant,
                "key_prefix": f"agentplane:quota:{tenant}",
                "limits_key": f"agentplane:quota:{tenant}:limits",
            },
            "egress": [_egress_rule(e) for e in egress or ["127.0.0.1"]],
        }
    )


def _egress_rule(destination: str) -> dict[str, object]:
    """A host rule, or a /32 CIDR rule for an IP; the runtime checks destinations, not ports."""
    try:
        ipaddress.ip_address(destination)
    except ValueError:
        return {"host": destination, "ports": [443]}
    return {"cidr": f"{destination}/32", "ports": [443]}


class KeyOptions(TypedDict, total=False):
    """What `create_api_key` takes beyond the tenant and the name."""

    subject: str | None
    agents: list[str] | None
    roles: list[str] | None
    expires_at: datetime | None
    tokens_per_minute: int | None
    requests_per_minute: int | None


@dataclass
class Served:
    """A runtime app served over real HTTP on loopback."""

    runtime: Runtime
    port: int
    spans: InMemorySpanExporter

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    async def key(self, tenant: str | None = None, **kwargs: Unpack[KeyOptions]) -> str:
        agent = self.runtime.agents.get()
        return await create_api_key(
            self.runtime.engine, tenant=tenant or agent.config.tenant, name="test", **kwargs
        )


@contextlib.asynccontextmanager
async def serve(
    settings: Settings,
    *configs: AgentConfig,
    limits: LimitsSource | None = None,
) -> AsyncIterator[Served]:
    """Serve `configs` (the first is the default agent at /v1) with `settings` on a free port."""
    registry = AgentRegistry()
    for i, config in enumerate(configs):
        registry.put(config, default=i == 0)
    spans = InMemorySpanExporter()
    app = create_app(settings, agents=registry, limits=limits)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        await wait_until_serving("the runtime server", server, task, timeout=12)
        runtime: Runtime = app.state.runtime
        runtime.telemetry.provider.add_span_processor(SimpleSpanProcessor(spans))
        yield Served(runtime, port, spans)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""A Prometheus exposition's samples: (name, labels) -> value."""


def parse_metrics(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def scrape(url: str) -> str:
    """The `/metrics` text of the runtime at `url`."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    return response.text


MINUTE = 1_900_000_020.0
"""A fixed moment for the quota gate's clock: every counter of a test is in one window."""


async def limit(redis_server: Server, tenant: str, *, tokens: int = 100_000, budget: float = 10.0) -> None:
    """The tenant's limits where the operator writes them."""
    limits = QuotaLimits(
        tenant, tokens_per_minute=tokens, requests_per_minute=1000, monthly_budget_usd=budget
    )
    redis = Redis.from_url(redis_server.url)
    await redis.hset(f"agentplane:quota:{tenant}:limits", mapping=dict(limits.redis_fields()))  # type: ignore[arg-type]
    await redis.aclose()


async def counters(redis_server: Server, tenant: str) -> tuple[int, float]:
    """The tenant's tokens this (fixed) minute, and its spend this month."""
    window = int(MINUTE // WINDOW_SECONDS)
    month = datetime.fromtimestamp(MINUTE, UTC).strftime("%Y-%m")
    redis = Redis.from_url(redis_server.url)
    tokens = await redis.get(f"agentplane:quota:{tenant}:tpm:{window}")
    spend = await redis.get(f"agentplane:quota:{tenant}:spend:{month}")
    await redis.aclose()
    return int(tokens or 0), float(spend or 0)
