"""Durable buffers for records on their way to the database, whatever the record.

A record is appended to a buffer on the request path (one Redis round trip, or none in memory) and
taken from it by a background writer, which acknowledges it only once the database committed it:
a database outage delays records and loses none. `RedisStreamBuffer` is a Redis stream read through
a consumer group (every replica appends and writes; a record a dead replica took is claimed after
a while); `MemoryBuffer` is the same in the process (`agentplane up`, or the fallback while Redis
itself is down).

The usage meter (`agentplane_runtime.usage`) and the audit log (`agentplane_runtime.audit`) both
keep their records here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("agentplane.runtime.buffer")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """A record as its Redis stream takes it (`XADD <stream> * r <data>`), for a writer that appends
    it in a round trip of its own (`QuotaGate.settle`) rather than through `BufferedWriter.record`."""

    redis: Redis
    stream: str
    data: bytes


class Buffer(Protocol[T]):
    """Where records wait until they are in the database."""

    async def append(self, item: T) -> None: ...

    async def take(self, count: int, block_ms: int) -> list[tuple[str, T]]:
        """Up to `count` records not yet acknowledged (the ones taken before and not acknowledged
        first), waiting up to `block_ms` for one when there is none."""
        ...

    async def ack(self, ids: Sequence[str]) -> None:
        """The records are in the database: forget them."""
        ...

    async def pending(self) -> int: ...


class MemoryBuffer(Generic[T]):
    """An in-process buffer: survives a database outage, not a process crash. `append` raises
    `OverflowError` beyond `limit` records."""

    def __init__(self, limit: int = 100_000) -> None:
        self._queue: deque[tuple[str, T]] = deque()
        self._taken: dict[str, T] = {}
        self._ready = asyncio.Event()
        self._limit = limit
        self._seq = 0

    async def append(self, item: T) -> None:
        if len(self._queue) + len(self._taken) >= self._limit:
            raise OverflowError("the buffer is full")
        self._seq += 1
        self._queue.append((str(self._seq), item))
        self._ready.set()

    async def take(self, count: int, block_ms: int) -> list[tuple[str, T]]:
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
        batch: list[tuple[str, T]] = []
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


class RedisStreamBuffer(Generic[T]):
    """A Redis stream with a consumer group `group`: records are `encode`d into the field `r`; an
    entry `decode` cannot read is logged and dropped (acknowledged with the next batch). A record
    another consumer took but never acknowledged (it died) is claimed after `claim_idle_ms`."""

    def __init__(
        self,
        redis: Redis,
        stream: str,
        *,
        group: str,
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
        consumer: str | None = None,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.encode = encode
        self.decode = decode
        self.consumer = consumer or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.claim_idle_ms = claim_idle_ms
        self._group_ready = False
        self._own_pending = True
        self._unreadable: list[str] = []

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def append(self, item: T) -> None:
        await self.redis.xadd(self.stream, {"r": self.encode(item)})

    def entry(self, item: T) -> StreamEntry:
        """`item` as `append` would add it."""
        return StreamEntry(self.redis, self.stream, self.encode(item))

    async def take(self, count: int, block_ms: int) -> list[tuple[str, T]]:
        await self._ensure_group()
        if self._own_pending:
            # what this consumer took before and could not write (database down) comes first
            entries = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
            batch = self._decoded(entries)
            if batch:
                return batch
            self._own_pending = False
            claimed = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start_id="0-0", count=count
            )
            batch = self._decoded([[self.stream, claimed[1]]])
            if batch:
                self._own_pending = True
                return batch
        entries = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        batch = self._decoded(entries)
        if batch:
            self._own_pending = True
        return batch

    def _decoded(self, entries: object) -> list[tuple[str, T]]:
        batch: list[tuple[str, T]] = []
        if not isinstance(entries, list):
            return batch
        for _stream, messages in entries:
            for ident, payload in messages or []:
                key = ident.decode() if isinstance(ident, bytes) else str(ident)
                raw = payload.get(b"r", payload.get("r")) if payload else None
                try:
                    if raw is None:
                        raise ValueError("no record")
                    batch.append((key, self.decode(raw if isinstance(raw, bytes) else str(raw).encode())))
                except (ValueError, TypeError, KeyError):
                    log.error("dropping an unreadable record of %s", self.stream, extra={"stream_id": key})
                    self._unreadable.append(key)
        return batch

    async def ack(self, ids: Sequence[str]) -> None:
        done = [*ids, *self._unreadable]
        self._unreadable = []
        if done:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, self.group, *done)
                pipe.xdel(self.stream, *done)
                await pipe.execute()

    async def pending(self) -> int:
        return int(await self.redis.xlen(self.stream))


class BufferedWriter(Generic[T]):
    """Records appended on the request path (`record`: one append, never a database round trip, never
    raises) and written to the database by a background task in batches, each acknowledged only once
    committed. While Redis refuses appends, records wait in a memory `fallback`. `flush` and the task
    hold one lock around take-and-write, so they never take the same unacknowledged records.

    A subclass says how a batch is written (`write`) and may observe what was written (`written`),
    what could not be buffered (`lost`) and an outage of the database (`outage`)."""

    what = "records"
    """What the records are, in log lines (`usage records`, `audit events`)."""

    def __init__(self, buffer: Buffer[T], *, batch_size: int = 500, flush_seconds: float = 0.5) -> None:
        self.buffer = buffer
        self.fallback: MemoryBuffer[T] = MemoryBuffer()
        """Where records go while `buffer` (Redis) refuses them."""
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.db_healthy = True
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._moving = asyncio.Lock()

    async def write(self, items: Sequence[T]) -> None:
        """Write a batch to the database, in one transaction."""
        raise NotImplementedError

    def written(self, items: Sequence[T]) -> None:
        """A batch is committed and acknowledged."""

    def lost(self, item: T, problem: BaseException) -> None:
        """No buffer took `item` (logged here; a subclass adds what it counts)."""
        log.error("%s: one lost, no buffer takes it (%s)", self.what, type(problem).__name__)

    async def outage(self) -> None:
        """The database did not take a batch (called on each failed attempt)."""

    def stream_entry(self, item: T) -> StreamEntry | None:
        """`item` as the buffer's Redis stream takes it (None when the buffer is not one), for a
        caller that appends it along with writes of its own; if that fails, it calls `record`."""
        return self.buffer.entry(item) if isinstance(self.buffer, RedisStreamBuffer) else None

    async def record(self, item: T) -> None:
        """Buffer one record. Never raises."""
        try:
            await self.buffer.append(item)
            return
        except (RedisError, OSError, OverflowError) as exc:
            problem: BaseException = exc
        try:
            await self.fallback.append(item)
        except OverflowError:
            self.lost(item, problem)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.what} writer")

    async def stop(self) -> None:
        """Write what can be written (for a few seconds), then stop; the rest stays buffered."""
        self._stopping = True
        try:
            await asyncio.wait_for(self.flush(), timeout=5)
        except (TimeoutError, SQLAlchemyError, RedisError, OSError):
            log.warning("%s left in the buffer at shutdown", self.what)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def flush(self) -> int:
        """Write everything buffered now (tests, shutdown); how many records were written."""
        written = 0
        async with self._moving:
            for buffer, block in ((self.fallback, 0), (self.buffer, 1)):
                while batch := await buffer.take(self.batch_size, block):
                    await self._move(buffer, batch)
                    written += len(batch)
        return written

    async def _move(self, buffer: Buffer[T], batch: list[tuple[str, T]]) -> None:
        items = [item for _, item in batch]
        await self.write(items)
        await buffer.ack([ident for ident, _ in batch])
        self.written(items)

    async def _run(self) -> None:
        delay = self.flush_seconds
        while not self._stopping:
            try:
                moved = 0
                for buffer, block in ((self.fallback, 0), (self.buffer, int(self.flush_seconds * 1000))):
                    async with self._moving:
                        batch = await buffer.take(self.batch_size, block)
                        if batch:
                            await self._move(buffer, batch)
                            moved += len(batch)
                if not self.db_healthy:
                    log.info("%s: the database is reachable again", self.what)
                self.db_healthy = True
                delay = self.flush_seconds
                if moved < self.batch_size:
                    await asyncio.sleep(self.flush_seconds / 5)
            except asyncio.CancelledError:
                raise
            except (SQLAlchemyError, OSError, RedisError) as exc:
                if self.db_healthy:
                    log.warning("%s buffered: %s: %s", self.what, type(exc).__name__, exc)
                self.db_healthy = False
                with contextlib.suppress(RedisError, OSError):
                    await self.outage()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception:
                log.exception("%s writer error", self.what)
                await asyncio.sleep(delay)


__all__ = ["Buffer", "BufferedWriter", "MemoryBuffer", "RedisStreamBuffer"]
