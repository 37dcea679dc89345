"""The runtime's shared clients and services, built from settings and closed together.

One `Runtime` serves one agent in a pod, or every agent of `agentplane up`: the clients (database
engine, Redis, Qdrant, HTTP) are shared; per-agent state lives in `AgentRegistry`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import httpx
from opentelemetry.sdk.trace.export import SpanExporter
from qdrant_client.http.exceptions import ApiException
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentplane_platform.api.v1alpha1 import KnowledgeBase
from agentplane_platform.audit import AuditEvent
from agentplane_platform.config import AgentConfig
from agentplane_platform.db import create_engine, migrate
from agentplane_platform.knowledge import CollectionSpec, VectorStore, ensure_collection
from agentplane_runtime.agents import AgentRegistry
from agentplane_runtime.audit import AUDIT_GROUP, AuditLog, decode_event, encode_event
from agentplane_runtime.auth import ApiKeyVerifier, Authenticator, OidcVerifier
from agentplane_runtime.buffer import Buffer, MemoryBuffer, RedisStreamBuffer
from agentplane_runtime.chat import ChatService
from agentplane_runtime.core.config import Settings
from agentplane_runtime.core.telemetry import Telemetry, create_telemetry
from agentplane_runtime.embeddings import LocalEmbedder, ModelEmbedder
from agentplane_runtime.llm import LLMClient, has_credentials
from agentplane_runtime.mcp_sessions import McpSessions
from agentplane_runtime.quotas import (
    LimitsSource,
    MemoryQuotaBackend,
    QuotaBackend,
    QuotaGate,
    RedisLimits,
    RedisQuotaBackend,
    StaticLimits,
)
from agentplane_runtime.retrieval import Embedder, KnowledgeService, LiteLLMEmbedder
from agentplane_runtime.startup import check_configured, check_credentials, wait_for_stores
from agentplane_runtime.tools import SecretReader, ToolRunner
from agentplane_runtime.usage import (
    UsageBuffer,
    UsageRecorder,
    UsageStore,
    redis_usage_buffer,
)

log = logging.getLogger("agentplane.runtime")


class _NoAnswer(Exception):
    """A store answered its readiness check with something other than yes."""


@dataclass
class Runtime:
    """Everything a request needs, shared by every agent served by this process."""

    settings: Settings
    agents: AgentRegistry
    engine: AsyncEngine
    redis: Redis | None
    vectors: VectorStore
    http: httpx.AsyncClient
    telemetry: Telemetry
    quota_backend: QuotaBackend
    limits: LimitsSource
    usage: UsageRecorder
    usage_store: UsageStore
    audit: AuditLog
    knowledge: KnowledgeService
    authenticator: Authenticator
    llm: LLMClient
    chat: ChatService

    _problems: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    """Store -> the type of error its last readiness check failed with (none while it answers)."""

    async def check_database(self) -> bool:
        async def probe() -> None:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        return await self._check("database", probe, (SQLAlchemyError, OSError, TimeoutError))

    async def check_quota_store(self) -> bool:
        async def probe() -> None:
            if not await self.quota_backend.ping():
                raise _NoAnswer("PING was not answered")

        return await self._check("quota_store", probe, (RedisError, OSError, TimeoutError, _NoAnswer))

    async def check_vector_store(self) -> bool:
        async def probe() -> None:
            await self.vectors.client.get_collections()

        # any answer but a list of collections (a refused API key, a 5xx) means it cannot serve
        return await self._check(
            "vector_store", probe, (ApiException, httpx.HTTPError, OSError, TimeoutError)
        )

    async def _check(
        self, store: str, probe: Callable[[], Awaitable[None]], down: tuple[type[Exception], ...]
    ) -> bool:
        """Whether `store` answers. A failure is logged when it starts or changes (the probe runs every
        few seconds), and the recovery once; `down` are the errors of a store that does not answer, any
        other is a bug of ours and is logged with its traceback."""
        try:
            await probe()
        except down as exc:
            self._note(store, exc, unexpected=False)
            return False
        except Exception as exc:  # the readiness probe must answer (not ready), whatever the check does
            self._note(store, exc, unexpected=True)
            return False
        if self._problems.pop(store, None) is not None:
            log.info("readiness: %s answers again", store)
        return True

    def _note(self, store: str, exc: Exception, *, unexpected: bool) -> None:
        kind = type(exc).__name__
        if self._problems.get(store) == kind:
            return
        self._problems[store] = kind
        if unexpected:
            log.error(
                "readiness: the check of %s failed unexpectedly (%s: %s)", store, kind, exc, exc_info=exc
            )
        else:
            log.warning("readiness: %s unreachable (%s: %s)", store, kind, exc)

    async def ensure_collections(self) -> None:
        """Create the knowledge collections of every served agent that are missing."""
        await self.ensure_collections_of([agent.config for agent in self.agents.all()])

    async def ensure_collections_of(self, configs: list[AgentConfig]) -> None:
        """Create the knowledge collections of these agents that are missing (never reshapes one)."""
        for config in configs:
            for kb in config.knowledge:
                base = KnowledgeBase(
                    name=kb.name,
                    embedding_model=kb.embedding_model,
                    dimensions=kb.dimensions,
                    distance=kb.distance,  # type: ignore[arg-type]
                )
                state = await ensure_collection(self.vectors, CollectionSpec.of(config.tenant, base))
                if not state.ready:
                    log.warning(state.message)


def default_embedder(settings: Settings, llm: LLMClient) -> ModelEmbedder:
    """Each knowledge base's declared model: local models when installed, provider models through
    litellm — with the offline model on, only those whose credentials are set (keyword vectors else)."""
    live: Callable[[str], bool] = partial(has_credentials, settings) if settings.offline_model else _always
    return ModelEmbedder(
        LiteLLMEmbedder(llm.credentials), LocalEmbedder(enabled=settings.local_embeddings), live
    )


def _always(model: str) -> bool:
    return True


@contextlib.asynccontextmanager
async def build_runtime(
    settings: Settings,
    agents: AgentRegistry,
    *,
    span_exporter: SpanExporter | None = None,
    limits: LimitsSource | None = None,
    embedder: Embedder | None = None,
) -> AsyncIterator[Runtime]:
    """Open every client the settings name (embedded defaults for the ones they do not, when the
    settings allow it), close them after. With `required` stores, raises `StartupError` unless every
    store answers and the agents' models have credentials (see `agentplane_runtime.startup`)."""
    required = settings.stores == "required"
    if required:
        check_configured(settings)
        check_credentials(settings, [agent.config for agent in agents.all()])
    async with contextlib.AsyncExitStack() as stack:
        telemetry = create_telemetry(settings, span_exporter)
        stack.callback(telemetry.shutdown)
        if not settings.database_url:
            settings.state_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(settings.database(), pool_pre_ping=True)
        stack.push_async_callback(engine.dispose)
        redis: Redis | None = None
        quota_backend: QuotaBackend
        buffer: UsageBuffer
        audit_buffer: Buffer[AuditEvent]
        if settings.redis_url:
            redis = Redis.from_url(
                settings.redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
            )
            stack.push_async_callback(redis.aclose, close_connection_pool=True)
            redis_quota = quota_backend = RedisQuotaBackend(redis)
            stack.push_async_callback(redis_quota.aclose)  # after the chat's flush, before the client's
            buffer = redis_usage_buffer(redis, settings.usage_stream)
            audit_buffer = RedisStreamBuffer(
                redis, settings.audit_stream, group=AUDIT_GROUP, encode=encode_event, decode=decode_event
            )
            limits = limits or RedisLimits(redis, settings.quota_limits_cache_seconds)
        else:
            quota_backend = MemoryQuotaBackend()
            buffer = MemoryBuffer()
            audit_buffer = MemoryBuffer()
            limits = limits or StaticLimits()
        vectors = VectorStore.connect(
            url=settings.qdrant_url,
            path=settings.qdrant_path,
            api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
        )
        stack.push_async_callback(vectors.close)
        if required:
            await wait_for_stores(settings, engine=engine, quota=quota_backend, vectors=vectors)
        if settings.migrate_on_start:
            await migrate(engine)
        http = httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=httpx.Limits(max_connections=200))
        stack.push_async_callback(http.aclose)
        store = UsageStore(engine)
        usage = UsageRecorder(
            store,
            buffer,
            telemetry.metrics,
            batch_size=settings.usage_batch_size,
            flush_seconds=settings.usage_flush_seconds,
        )
        usage.start()
        stack.push_async_callback(usage.stop)
        audit = AuditLog(
            engine,
            audit_buffer,
            batch_size=settings.usage_batch_size,
            flush_seconds=settings.usage_flush_seconds,
            enabled=settings.audit,
        )
        audit.start()
        stack.push_async_callback(audit.stop)
        llm = LLMClient(settings, telemetry.metrics, telemetry.tracer)
        stack.push_async_callback(llm.close)
        knowledge = KnowledgeService(vectors, embedder or default_embedder(settings, llm))
        oidc = OidcVerifier(settings, http, telemetry.tracer) if settings.oidc_issuer else None
        authenticator = Authenticator(
            ApiKeyVerifier(
                engine,
                telemetry.tracer,
                cache_seconds=settings.api_key_cache_seconds,
                stale_seconds=settings.api_key_stale_seconds,
            ),
            oidc,
        )
        quota = QuotaGate(quota_backend, limits, store.spend_since)
        sessions = McpSessions(
            http, max_sessions=settings.mcp_max_sessions, idle_seconds=settings.mcp_session_idle_seconds
        )
        tools = ToolRunner(http, SecretReader(settings.secrets_dir, settings.keyvault_dir), sessions)
        stack.push_async_callback(tools.aclose)  # before the HTTP client closes: it ends the sessions
        chat = ChatService(
            settings=settings,
            llm=llm,
            quota=quota,
            usage=usage,
            knowledge=knowledge,
            tools=tools,
            telemetry=telemetry,
            audit=audit,
        )
        stack.push_async_callback(chat.aclose)  # first: the settlements' records go before `usage.stop`
        runtime = Runtime(
            settings=settings,
            agents=agents,
            engine=engine,
            redis=redis,
            vectors=vectors,
            http=http,
            telemetry=telemetry,
            quota_backend=quota_backend,
            limits=limits,
            usage=usage,
            usage_store=store,
            audit=audit,
            knowledge=knowledge,
            authenticator=authenticator,
            llm=llm,
            chat=chat,
        )
        if settings.ensure_collections:
            await runtime.ensure_collections()
        yield runtime
