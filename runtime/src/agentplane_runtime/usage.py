"""Usage metering: one record per chat request, and one per provider embedding call (a chat's
query, an upload's chunks), written to the database without ever being lost.

Every record is first appended to a durable `UsageBuffer` (a Redis stream in production, memory
for `agentplane up`); a background flusher moves batches into the database (`UsageStore`,
SQLAlchemy async on PostgreSQL or SQLite) and only then acknowledges them. When the database is
down the records wait in the buffer and are written when it returns; inserts are idempotent on the
record id, so a batch written twice (a crash between insert and acknowledge) is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentplane_platform.db import UsageRecord
from agentplane_platform.usage_report import EMBEDDING_STATUS
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

    def to_json(self) -> bytes:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> UsageEvent:
        data = orjson.loads(raw)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


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
        rows = [asdict(e) for e in events]
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


class UsageBuffer(Protocol):
    """Where records wait until they are in the database."""

    async def append(self, event: UsageEvent) -> None: ...

    async def take(self, count: int, block_ms: int) -> list[tuple[str, UsageEvent]]:
        """Up to `count` records not yet acknowledged (this consumer's pending ones first)."""
        ...

    async def ack(self, ids: Sequence[str]) -> None: ...

    async def pending(self) -> int: ...


class MemoryUsageBuffer:
    """An in-process buffer (local mode): survives a database outage, not a process crash."""

    def __init__(self, limit: int = 100_000) -> None:
        self._queue: deque[tuple[str, UsageEvent]] = deque()
        self._taken: dict[str, UsageEvent] = {}
        self._ready = asyncio.Event()
        self._limit = limit
        self._seq = 0

    async def append(self, event: UsageEvent) -> None:
        if len(self._queue) >= self._limit:
            raise OverflowError("usage buffer is full")
        self._seq += 1
        self._queue.append((str(self._seq), event))
        self._ready.set()

    async def take(self, count: int, block_ms: int) -> list[tuple[str, UsageEvent]]:
        if self._taken:
            return list(self._taken.items())[:count]
        if not self._queue:
            if block_ms <= 0:
                return []
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), block_ms / 1000)
            except TimeoutError:
                return []
        batch: list[tuple[str, UsageEvent]] = []
        while self._queue and len(batch) < count:
            item = self._queue.popleft()
            self._taken[item[0]] = item[1]
            batch.append(item)
        return batch

    async def ack(self, ids: Sequence[str]) -> None:
        for ident in ids:
            self._taken.pop(ident, None)

    async def pending(self) -> int:
        return len(self._queue) + len(self._taken)


class RedisUsageBuffer:
    """A Redis stream with a consumer group: every replica appends and flushes; a record another
    replica took but never acknowledged (it died) is claimed after `claim_idle_ms`."""

    GROUP = "usage-writers"

    def __init__(
        self, redis: Redis, stream: str, consumer: str | None = None, claim_idle_ms: int = 60_000
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.consumer = consumer or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.claim_idle_ms = claim_idle_ms
        self._group_ready = False
        self._own_pending = True

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(self.stream, self.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def append(self, event: UsageEvent) -> None:
        await self.redis.xadd(self.stream, {"r": event.to_json()})

    async def take(self, count: int, block_ms: int) -> list[tuple[str, UsageEvent]]:
        await self._ensure_group()
        if self._own_pending:
            # Records this consumer took before but could not write (database down): retry them first.
            entries = await self.redis.xreadgroup(self.GROUP, self.consumer, {self.stream: "0"}, count=count)
            batch = self._decode(entries)
            if batch:
                return batch
            self._own_pending = False
            claimed = await self.redis.xautoclaim(
                self.stream, self.GROUP, self.consumer, self.claim_idle_ms, start_id="0-0", count=count
            )
            batch = self._decode([[self.stream, claimed[1]]])
            if batch:
                self._own_pending = True
                return batch
        entries = await self.redis.xreadgroup(
            self.GROUP, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        batch = self._decode(entries)
        if batch:
            self._own_pending = True
        return batch

    def _decode(self, entries: object) -> list[tuple[str, UsageEvent]]:
        batch: list[tuple[str, UsageEvent]] = []
        if not isinstance(entries, list):
            return batch
        for _stream, messages in entries:
            for ident, payload in messages or []:
                key = ident.decode() if isinstance(ident, bytes) else str(ident)
                if not payload:
                    continue
                raw = payload.get(b"r", payload.get("r"))
                try:
                    batch.append((key, UsageEvent.from_json(raw)))
                except (ValueError, TypeError, KeyError):
                    log.error("dropping an unreadable usage record", extra={"stream_id": key})
        return batch

    async def ack(self, ids: Sequence[str]) -> None:
        if ids:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, self.GROUP, *ids)
                pipe.xdel(self.stream, *ids)
                await pipe.execute()

    async def pending(self) -> int:
        return int(await self.redis.xlen(self.stream))


class UsageRecorder:
    """Appends records to the buffer; a background task moves them into the store."""

    def __init__(
        self,
        store: UsageStore,
        buffer: UsageBuffer,
        metrics: Metrics,
        *,
        batch_size: int = 500,
        flush_seconds: float = 0.5,
    ) -> None:
        self.store = store
        self.buffer = buffer
        self.fallback = MemoryUsageBuffer()
        self.metrics = metrics
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.db_healthy = True

    async def record(self, event: UsageEvent) -> None:
        """Buffer one record (never raises: a failure is logged and counted)."""
        try:
            await self.buffer.append(event)
        except (RedisError, OSError, OverflowError):
            try:
                await self.fallback.append(event)
            except OverflowError:
                self.metrics.usage_lost.inc()
                log.error(
                    "usage record lost: buffers unavailable", extra={"usage_request_id": event.request_id}
                )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-flusher")

    async def stop(self) -> None:
        """Flush what can be flushed, then stop."""
        self._stopping = True
        try:
            await asyncio.wait_for(self.flush(), timeout=5)
        except (TimeoutError, SQLAlchemyError, RedisError, OSError):
            log.warning("usage records left in the buffer at shutdown")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def flush(self) -> int:
        """Write everything buffered now (tests, shutdown); how many records were written."""
        written = 0
        for buffer in (self.fallback, self.buffer):
            while True:
                batch = await buffer.take(self.batch_size, 0 if buffer is self.fallback else 1)
                if not batch:
                    break
                await self._move(buffer, batch)
                written += len(batch)
        return written

    async def _move(self, buffer: UsageBuffer, batch: list[tuple[str, UsageEvent]]) -> None:
        """Write a batch to the store, then acknowledge it in its buffer; count it, and observe
        each record's delay from its creation to the commit."""
        events = [e for _, e in batch]
        await self.store.write(events)
        committed = now_utc()
        await buffer.ack([i for i, _ in batch])
        self.metrics.usage_written.inc(len(batch))
        for event in events:
            created = event.created_at if event.created_at.tzinfo else event.created_at.replace(tzinfo=UTC)
            self.metrics.usage_delay.observe(max(0.0, (committed - created).total_seconds()))

    async def _run(self) -> None:
        delay = self.flush_seconds
        while not self._stopping:
            try:
                moved = 0
                for buffer, block in ((self.fallback, 0), (self.buffer, int(self.flush_seconds * 1000))):
                    batch = await buffer.take(self.batch_size, block)
                    if batch:
                        await self._move(buffer, batch)
                        moved += len(batch)
                if not self.db_healthy:
                    log.info("usage database reachable again")
                self.db_healthy = True
                delay = self.flush_seconds
                if moved < self.batch_size:
                    await asyncio.sleep(self.flush_seconds / 5)
            except asyncio.CancelledError:
                raise
            except (SQLAlchemyError, OSError, RedisError) as exc:
                if self.db_healthy:
                    log.warning("usage records buffered: %s", type(exc).__name__)
                self.db_healthy = False
                with contextlib.suppress(RedisError, OSError):
                    self.metrics.usage_buffered.set(
                        await self.buffer.pending() + await self.fallback.pending()
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception:
                log.exception("usage flusher error")
                await asyncio.sleep(delay)


def now_utc() -> datetime:
    return datetime.now(UTC)
