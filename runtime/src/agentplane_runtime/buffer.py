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
import logging
import socket
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

log = logging.getLogger("agentplane.runtime.buffer")

T = TypeVar("T")


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


__all__ = ["Buffer", "MemoryBuffer", "RedisStreamBuffer"]
