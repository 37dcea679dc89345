"""Fail closed: a runtime whose stores are `required` does not start without them.

In a pod the runtime's stores come from the Secret the operator keeps in the tenant namespace. A
runtime that started without them would serve on embedded defaults — no quota enforced across
pods, usage lost on restart — and look healthy. So with `stores = "required"` (the default) the
runtime checks, before it serves anything, that the database, Redis and Qdrant are configured and
answer, and that the agent's models have provider credentials; it waits up to
`startup_timeout_seconds` for a store that is still coming up, then gives up with one clear reason
per problem: logged, written to the container's termination message, and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

import httpx
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentplane_platform.config import AgentConfig
from agentplane_platform.contract import LLM_SECRET, RUNTIME_SECRET
from agentplane_platform.knowledge import VectorStore
from agentplane_runtime.core.config import Settings
from agentplane_runtime.llm import has_credentials
from agentplane_runtime.providers import provider_of
from agentplane_runtime.quotas import QuotaBackend

log = logging.getLogger("agentplane.runtime.startup")

UNREACHABLE = (
    OSError,
    TimeoutError,
    SQLAlchemyError,
    RedisError,
    ResponseHandlingException,
    UnexpectedResponse,
    httpx.HTTPError,
)
"""What a store that is down, refusing or unresolvable raises."""

KNOWN_PROVIDERS = ("openai", "azure")
"""Providers whose credentials the runtime's settings hold (others are read by litellm itself)."""


class StartupError(RuntimeError):
    """The runtime cannot serve; the message says why and what to set."""


def redact(url: str) -> str:
    """A URL with its password replaced by `***`, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def check_configured(settings: Settings) -> None:
    """Refuse settings that name no store where a store is required."""
    missing = settings.missing_stores()
    if missing:
        raise StartupError(
            f"the runtime's stores are not configured: {', '.join(missing)} unset. In a cluster they "
            f"come from the Secret {RUNTIME_SECRET!r} that the operator keeps in the tenant namespace; "
            "set AGENTPLANE_STORES=embedded to run on embedded defaults instead (local use only)"
        )


def check_credentials(settings: Settings, configs: Iterable[AgentConfig]) -> None:
    """Refuse agents none of whose models (primary and fallbacks) has its provider's credentials."""
    if settings.offline_model:
        return
    problems = []
    for config in configs:
        models = [config.model.name, *config.model.fallbacks]
        if not all(provider_of(model) in KNOWN_PROVIDERS for model in models):
            continue  # a provider whose credentials litellm reads from the environment itself
        if not any(has_credentials(settings, model) for model in models):
            problems.append(
                f"agent {config.tenant}/{config.agent}: no provider credentials for {', '.join(models)} "
                f"(OPENAI_API_KEY, or AZURE_API_KEY and AZURE_API_BASE, from the Secret {LLM_SECRET!r})"
            )
    if problems:
        raise StartupError("; ".join(problems))


Check = Callable[[], Awaitable[object]]


async def wait_for_stores(
    settings: Settings,
    *,
    engine: AsyncEngine,
    quota: QuotaBackend,
    vectors: VectorStore,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Wait until every configured store answers, or raise `StartupError` naming each one that did not."""

    async def database() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def redis() -> None:
        if not await quota.ping():
            raise ConnectionError("PING was not answered")

    async def qdrant() -> None:
        await vectors.client.get_collections()

    checks: dict[str, tuple[str, Check]] = {"database": (redact(settings.database()), database)}
    if settings.redis_url:
        checks["redis"] = (redact(settings.redis_url), redis)
    if settings.qdrant_url:
        checks["qdrant"] = (settings.qdrant_url, qdrant)
    deadline = clock() + settings.startup_timeout_seconds
    errors: dict[str, str] = {}
    while True:
        for name, (where, check) in list(checks.items()):
            try:
                await asyncio.wait_for(check(), timeout=5.0)
            except UNREACHABLE as exc:
                error = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
                if name not in errors:
                    log.warning("waiting for the %s at %s: %s", name, where, error)
                errors[name] = error
            else:
                del checks[name]
                errors.pop(name, None)
        if not checks:
            return
        if clock() >= deadline:
            raise StartupError(
                "; ".join(
                    f"{name} at {where} unreachable for {settings.startup_timeout_seconds:g}s ({errors[name]})"
                    for name, (where, _) in checks.items()
                )
            )
        await asyncio.sleep(1.0)


def report(settings: Settings, error: StartupError) -> None:
    """Say why the runtime does not start: a log line, and the container's termination message."""
    message = f"agentplane runtime cannot start: {error}"
    log.error(message)
    path = settings.termination_log
    if path.exists():
        try:
            path.write_text(message + "\n")
        except OSError as exc:
            log.warning("could not write the termination message to %s: %s", path, exc)
