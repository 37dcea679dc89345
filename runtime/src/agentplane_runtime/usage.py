"""Usage metering: one record per chat request, and one per provider embedding call (a chat's
query, an upload's chunks), written to the database without ever being lost.

Every record is first appended to a durable `UsageBuffer` (a Redis stream in production, memory
for `agentplane up`); a background flusher moves batches into the database (`UsageStore`,
SQLAlchemy async on PostgreSQL or SQLite) and only then acknowledges them. When the database is
down the records wait in the buffer and are written when it returns; inserts are idempotent on the
record id, so a batch written twice (a crash between insert and acknowledge) is harmless.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, TypeAlias

import orjson
from redis.asyncio import Redis
from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from agentplane_platform.db import UsageRecord
from agentplane_platform.usage_report import EMBEDDING_STATUS
from agentplane_runtime.buffer import Buffer, BufferedWriter, RedisStreamBuffer
from agentplane_runtime.core.telemetry import Metrics

log = logging.getLogger("agentplane.runtime.usage")


@dataclass(slots=True)
class UsageEvent:
    """One request's usage (the columns of `usage_records`)."""

    id: str
    request_id: str
    tenant: str
    agent: str
    api_key_id: str | None
    subject: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None
    status: str
    http_status: int
    error_type: str | None
    stream: bool
    tool_calls: int
    llm_calls: int
    created_at: datetime

    def row(self) -> dict[str, Any]:
        """The record's columns (a shallow copy: `dataclasses.asdict` deep-copies every value)."""
        return {name: getattr(self, name) for name in _USAGE_FIELDS}

    def to_json(self) -> bytes:
        data = self.row()
        data["created_at"] = self.created_at.isoformat()
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> UsageEvent:
        data = orjson.loads(raw)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        return cls(**{k: v for k, v in data.items() if k in _USAGE_FIELDS})


_USAGE_FIELDS = frozenset(f.name for f in fields(UsageEvent))


def embedding_event(
    *,
    request_id: str,
    tenant: str,
    agent: str,
    api_key_id: str | None,
    subject: str | None,
    model: str,
    tokens: int,
    cost: float,
    seconds: float,
) -> UsageEvent:
    """The record of one provider embedding call: `model` names the embedding model, `status` is
    `embedding` (not an error), its tokens are prompt tokens, and it made no LLM call."""
    return UsageEvent(
        id=uuid.uuid4().hex,
        request_id=request_id,
        tenant=tenant,
        agent=agent,
        api_key_id=api_key_id,
        subject=subject[:256] if subject is not None else None,
        model=model,
        prompt_tokens=tokens,
        completion_tokens=0,
        cost_usd=cost,
        latency_ms=seconds * 1000,
        ttft_ms=None,
        status=EMBEDDING_STATUS,
        http_status=200,
        error_type=None,
        stream=False,
        tool_calls=0,
        llm_calls=0,
        created_at=now_utc(),
    )


class UsageStore:
    """Usage records in the database (PostgreSQL or SQLite)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def write(self, events: Sequence[UsageEvent]) -> None:
        """Insert; a record already present (same id) is skipped."""
        if not events:
            return
        rows = [e.row() for e in events]
        dialect = self.engine.dialect.name
        statement: Any
        if dialect == "postgresql":
            statement = pg_insert(UsageRecord).on_conflict_do_nothing(index_elements=["id"])
        elif dialect == "sqlite":
            statement = sqlite_insert(UsageRecord).on_conflict_do_nothing(index_elements=["id"])
        else:  # pragma: no cover - the two supported databases are above
            statement = insert(UsageRecord)
        async with self.engine.begin() as connection:
            await connection.execute(statement, rows)

    async def spend_since(self, tenant: str, since: datetime) -> float:
        """The tenant's cost in USD since `since`."""
        async with self.engine.connect() as connection:
            total = await connection.scalar(
                select(func.coalesce(func.sum(UsageRecord.cost_usd), 0.0)).where(
                    UsageRecord.tenant == tenant, UsageRecord.created_at >= since
                )
            )
        return float(total or 0.0)


UsageBuffer: TypeAlias = Buffer[UsageEvent]
"""Where usage records wait for the database (`agentplane_runtime.buffer`)."""

USAGE_GROUP = "usage-writers"
"""The Redis consumer group of the usage writers."""


def redis_usage_buffer(redis: Redis, stream: str) -> RedisStreamBuffer[UsageEvent]:
    """The usage records' Redis stream, shared by every replica of every agent."""
    return RedisStreamBuffer(
        redis, stream, group=USAGE_GROUP, encode=UsageEvent.to_json, decode=UsageEvent.from_json
    )


class UsageRecorder(BufferedWriter[UsageEvent]):
    """Appends usage records to the buffer; a background task moves them into the store
    (`agentplane_runtime.buffer.BufferedWriter`)."""

    what = "usage records"

    def __init__(
        self,
        store: UsageStore,
        buffer: UsageBuffer,
        metrics: Metrics,
        *,
        batch_size: int = 500,
        flush_seconds: float = 0.5,
    ) -> None:
        super().__init__(buffer, batch_size=batch_size, flush_seconds=flush_seconds)
        self.store = store
        self.metrics = metrics

    async def write(self, items: Sequence[UsageEvent]) -> None:
        await self.store.write(items)

    def written(self, items: Sequence[UsageEvent]) -> None:
        """Count the batch, and observe each record's delay from its creation to the commit."""
        committed = now_utc()
        self.metrics.usage_written.inc(len(items))
        for event in items:
            created = event.created_at if event.created_at.tzinfo else event.created_at.replace(tzinfo=UTC)
            self.metrics.usage_delay.observe(max(0.0, (committed - created).total_seconds()))

    def lost(self, item: UsageEvent, problem: BaseException) -> None:
        self.metrics.usage_lost.inc()
        log.error("usage record lost: buffers unavailable", extra={"usage_request_id": item.request_id})

    async def outage(self) -> None:
        self.metrics.usage_buffered.set(await self.buffer.pending() + await self.fallback.pending())


def now_utc() -> datetime:
    return datetime.now(UTC)
