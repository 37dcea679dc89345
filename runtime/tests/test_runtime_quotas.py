"""Quotas: the Redis (Lua) and in-process backends have the same semantics; reservations make
concurrent streaming requests unable to overshoot a tokens-per-minute limit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import openai
import pytest
import pytest_asyncio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError
from runtime_support import Served, make_config, serve, tenant_name

from agentplane_platform.quotas import QuotaLimits
from agentplane_runtime import Settings
from agentplane_runtime.buffer import StreamEntry
from agentplane_runtime.quotas import (
    WINDOW_SECONDS,
    CounterSpec,
    KeyLimits,
    MemoryQuotaBackend,
    QuotaBackend,
    QuotaExceeded,
    QuotaGate,
    RedisQuotaBackend,
    StaticLimits,
)
from support.fake_llm import FakeLLM
from support.ports import free_port
from support.services import Server

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]


@pytest_asyncio.fixture(params=["redis", "memory"])
async def backend(request: pytest.FixtureRequest, redis_server: Server) -> AsyncIterator[QuotaBackend]:
    if request.param == "memory":
        yield MemoryQuotaBackend()
        return
    redis = Redis(connection_pool=BlockingConnectionPool.from_url(redis_server.url, max_connections=32))
    backend = RedisQuotaBackend(redis)
    yield backend
    await backend.aclose()
    await redis.aclose(close_connection_pool=True)


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


async def test_acquire_is_all_or_nothing(backend: QuotaBackend) -> None:
    a, b = key(), key()
    ok = await backend.acquire(
        [CounterSpec(a, 5, 10), CounterSpec(b, 5, 7)], spend_key=key(), budget=-1, ttl=60
    )
    assert ok.ok
    assert ok.values == (5, 5)
    refused = await backend.acquire(
        [CounterSpec(a, 5, 10), CounterSpec(b, 5, 7)], spend_key=key(), budget=-1, ttl=60
    )
    assert not refused.ok
    assert refused.failed == 1
    # nothing was added to the counter that had room
    again = await backend.acquire([CounterSpec(a, 5, 10)], spend_key=key(), budget=-1, ttl=60)
    assert again.values == (10,)
    gone = key()
    await backend.settle([a, gone], -7, key(), 0.0, 60)
    after = await backend.acquire([CounterSpec(a, 0, 10)], spend_key=key(), budget=-1, ttl=60)
    assert after.values == (3,)
    # a counter that no longer exists (its minute is over) is not made again by settling
    assert (await backend.acquire([CounterSpec(gone, 0, 10)], spend_key=key(), budget=-1, ttl=60)).values == (
        0,
    )


async def number(redis: Redis, name: str) -> float:
    value = await redis.get(name)
    assert value is not None, name
    return float(value)


async def test_a_settlement_carries_a_record_to_its_stream_in_the_same_round_trip(
    redis_server: Server,
) -> None:
    """The usage record rides with the settlement when its stream is on the quota's Redis; on another
    Redis, or with no stream, the caller is told to append it itself. A Redis that lost the script
    (restarted) gets it again, and the settlement still counts."""
    redis = Redis.from_url(redis_server.url)
    other = Redis.from_url(redis_server.url)
    backend = RedisQuotaBackend(redis)
    try:
        counter, spend, stream = key(), key(), key()
        assert (await backend.acquire([CounterSpec(counter, 10, 100)], spend_key=key(), budget=-1, ttl=60)).ok
        assert await backend.settle([counter], -4, spend, 0.25, 60, StreamEntry(redis, stream, b"one"))
        assert await number(redis, counter) == 6
        assert await number(redis, spend) == 0.25
        await redis.script_flush()
        assert await backend.settle([counter], -1, spend, 0.5, 60, StreamEntry(redis, stream, b"two"))
        assert await number(redis, counter) == 5
        assert await number(redis, spend) == 0.75
        assert [fields[b"r"] for _, fields in await redis.xrange(stream) or [] if fields] == [b"one", b"two"]
        # a stream on another client (another Redis) is not written here
        assert not await backend.settle([counter], 0, spend, 0.0, 60, StreamEntry(other, stream, b"three"))
        assert not await MemoryQuotaBackend().settle(
            [counter], 0, spend, 0.0, 60, StreamEntry(redis, stream, b"x")
        )
        assert await redis.xlen(stream) == 2
    finally:
        await backend.aclose()
        await redis.aclose()
        await other.aclose()


async def test_a_settlement_goes_ahead_of_the_next_check_in_its_round_trip(redis_server: Server) -> None:
    """A settlement waits for the next check and goes in its pipeline, ahead of it, so that check
    sees the tokens given back; the record goes along. A Redis that lost both scripts gets them again.
    With no check after it, `flush` sends it, and so does the delay on its own."""
    redis = Redis.from_url(redis_server.url)
    backend = RedisQuotaBackend(redis, settle_delay=3600.0)  # only a check or `flush` sends it
    try:
        counter, spend, stream = key(), key(), key()
        assert (await backend.acquire([CounterSpec(counter, 10, 10)], spend_key=spend, budget=-1, ttl=60)).ok
        appended = backend.settle([counter], -4, spend, 0.25, 60, StreamEntry(redis, stream, b"one"))
        await asyncio.sleep(0.05)
        assert not appended.done()
        assert await number(redis, counter) == 10  # still reserved
        await redis.script_flush()
        # 4 more fit only if the settlement went first
        checked = await backend.acquire([CounterSpec(counter, 4, 10)], spend_key=spend, budget=-1, ttl=60)
        assert (checked.ok, checked.values) == (True, (10,))
        assert appended.done()
        assert appended.result()
        assert await number(redis, spend) == 0.25
        assert await redis.xlen(stream) == 1
        last = backend.settle([counter], -10, spend, 0.0, 60)
        await backend.flush()
        assert last.done()
        assert not last.result()  # settled; it had no record to append
        assert await number(redis, counter) == 0
        backend.settle_delay = 0.05
        alone = backend.settle([counter], 3, spend, 0.0, 60, StreamEntry(redis, stream, b"two"))
        assert await asyncio.wait_for(alone, 10)  # a deadline against a hang, not a measure
        assert await number(redis, counter) == 3
        assert await redis.xlen(stream) == 2
    finally:
        await backend.aclose()
        await redis.aclose()


async def test_a_cancelled_check_still_sends_the_settlements_it_took(redis_server: Server) -> None:
    redis = Redis.from_url(redis_server.url)
    backend = RedisQuotaBackend(redis, settle_delay=3600.0)
    try:
        counter, stream = key(), key()
        assert (await backend.acquire([CounterSpec(counter, 10, 100)], spend_key=key(), budget=-1, ttl=60)).ok
        appended = backend.settle([counter], -4, key(), 0.0, 60, StreamEntry(redis, stream, b"one"))
        check = asyncio.ensure_future(
            backend.acquire([CounterSpec(counter, 1, 100)], spend_key=key(), budget=-1, ttl=60)
        )
        await asyncio.sleep(0)  # the check has taken the settlement into its round trip
        check.cancel()
        assert await asyncio.wait_for(appended, 10)
        with pytest.raises(asyncio.CancelledError):
            await check
        assert await number(redis, counter) == 7  # settled, and the check itself went through
        assert await redis.xlen(stream) == 1
    finally:
        await backend.aclose()
        await redis.aclose()


async def test_settlements_on_a_redis_gone_tell_their_caller_to_record_the_usage(
    redis_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    gone = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=2)
    backend = RedisQuotaBackend(gone, settle_delay=3600.0)
    try:
        appended = backend.settle([key()], -4, key(), 0.5, 60, StreamEntry(gone, key(), b"one"))
        with pytest.raises(RedisError):
            await backend.acquire([CounterSpec(key(), 1, 100)], spend_key=key(), budget=-1, ttl=60)
        assert appended.done()
        assert appended.result() is False
        assert "quota settle failed" in caplog.text
    finally:
        await backend.aclose()
        await gone.aclose()


async def test_concurrent_acquires_never_pass_the_limit(backend: QuotaBackend) -> None:
    counter = key()
    results = await asyncio.gather(
        *[
            backend.acquire([CounterSpec(counter, 7, 100)], spend_key=key(), budget=-1, ttl=60)
            for _ in range(200)
        ]
    )
    assert sum(r.ok for r in results) == 100 // 7
    assert max(r.values[0] for r in results if r.ok) == 98


async def test_budget_needs_the_spend_then_refuses_at_the_budget(backend: QuotaBackend) -> None:
    spend = key()
    first = await backend.acquire([CounterSpec(key(), 1, 10)], spend_key=spend, budget=5.0, ttl=60)
    assert first.spend_missing
    await backend.init_spend(spend, 4.5, 60)
    await backend.init_spend(spend, 0.0, 60)  # does not reset an existing value
    assert (await backend.acquire([CounterSpec(key(), 1, 10)], spend_key=spend, budget=5.0, ttl=60)).ok
    await backend.settle([], 0, spend, 0.5, 60)
    over = await backend.acquire([CounterSpec(key(), 1, 10)], spend_key=spend, budget=5.0, ttl=60)
    assert not over.ok
    assert over.failed == -1


async def test_gate_reserves_settles_and_refuses_with_headers(backend: QuotaBackend) -> None:
    tenant = tenant_name()
    config = make_config(tenant)

    async def no_spend(tenant: str, since: datetime) -> float:
        return 0.0

    limits = StaticLimits(
        {tenant: QuotaLimits(tenant, tokens_per_minute=1000, requests_per_minute=2, monthly_budget_usd=10)}
    )
    gate = QuotaGate(backend, limits, no_spend, clock=lambda: 120.0 + 0.5)  # 59.5 s before the window ends
    first = await gate.admit(config.quota, None, 600)
    assert first.headers["x-ratelimit-remaining-tokens"] == "400"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    with pytest.raises(QuotaExceeded) as caught:
        await gate.admit(config.quota, None, 600)
    assert caught.value.limit == "tokens_per_minute"
    assert caught.value.headers["Retry-After"] == "60"
    assert caught.value.headers["x-ratelimit-remaining-tokens"] == "400"
    await gate.settle(first, 150, 0.01)  # 450 tokens given back
    second = await gate.admit(config.quota, None, 600)
    assert second.headers["x-ratelimit-remaining-tokens"] == "250"
    with pytest.raises(QuotaExceeded) as rpm:
        await gate.admit(config.quota, None, 1)
    assert rpm.value.limit == "requests_per_minute"
    # a per-key limit applies on top of the tenant's
    keyed = KeyLimits("k1", tokens_per_minute=None, requests_per_minute=0)
    gate2 = QuotaGate(backend, StaticLimits(), no_spend, clock=lambda: 120.5)
    with pytest.raises(QuotaExceeded) as key_limit:
        await gate2.admit(config.quota, keyed, 1)
    assert key_limit.value.limit == "key_requests_per_minute"


MINUTE = 1_767_225_600.0
"""The first second of a minute (2026-01-01T00:00:00Z): where the tests put the quota gate's clock."""


def _clock_at_the_start_of_a_minute(served: Served) -> int:
    """Stop the quota gate's clock one second into `MINUTE`, so the whole test counts in one window
    however long it takes (no waiting for a fresh minute); the window's number."""
    served.runtime.chat.quota.clock = lambda: MINUTE + 1
    return int(MINUTE // WINDOW_SECONDS)


async def _counter(served: Served, name: str) -> int:
    backend = served.runtime.quota_backend
    if isinstance(backend, RedisQuotaBackend):
        raw = await backend.redis.get(name)
        return int(raw or 0)
    assert isinstance(backend, MemoryQuotaBackend)
    return int(backend._get(name) or 0)


@pytest.mark.parametrize("store", ["redis", "memory"])
async def test_fifty_concurrent_streams_never_overshoot_tokens_per_minute(
    store: str, settings: Settings, local_settings: Settings, fake_llm: FakeLLM, redis_server: Server
) -> None:
    tenant = tenant_name()
    limit = 6000
    limits = QuotaLimits(tenant, tokens_per_minute=limit, requests_per_minute=10_000, monthly_budget_usd=0)
    if store == "redis":
        redis = Redis.from_url(redis_server.url)
        await redis.hset(f"agentplane:quota:{tenant}:limits", mapping=dict(limits.redis_fields()))  # type: ignore[arg-type]
        await redis.aclose()
        chosen, static = settings, None
    else:
        chosen, static = local_settings, StaticLimits({tenant: limits})
    chosen = chosen.model_copy(update={"api_key_cache_seconds": 60.0})
    fake_llm.chunk_delay_ms = 40  # streams overlap: each holds its reservation for about half a second
    async with serve(chosen, make_config(tenant), limits=static) as served:
        window = _clock_at_the_start_of_a_minute(served)
        client = openai.AsyncOpenAI(
            api_key=await served.key(),
            base_url=served.base_url,
            max_retries=0,
            http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=100)),
        )
        counter = f"agentplane:quota:{tenant}:tpm:{window}"
        observed: list[int] = []
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                observed.append(await _counter(served, counter))
                await asyncio.sleep(0.002)

        async def one(i: int) -> tuple[int, int]:
            try:
                stream = await client.chat.completions.create(
                    model="helper",
                    messages=[{"role": "user", "content": f"request {i}: tell me a story about quotas"}],
                    stream=True,
                    stream_options={"include_usage": True},
                    max_tokens=200,
                )
            except openai.RateLimitError as exc:
                headers.append(dict(exc.response.headers))
                return 429, 0
            used = 0
            async for chunk in stream:
                if chunk.usage is not None:
                    used = chunk.usage.total_tokens
            return 200, used

        headers: list[dict[str, str]] = []
        watcher = asyncio.create_task(watch())
        outcomes = await asyncio.gather(*[one(i) for i in range(50)])
        done.set()
        await watcher
        await asyncio.sleep(0.05)
        final = await _counter(served, counter)
        await client.close()
    ok = [used for status, used in outcomes if status == 200]
    rejected = [s for s, _ in outcomes if s == 429]
    assert len(ok) + len(rejected) == 50
    assert ok  # some got through
    assert rejected  # and the limit did bite
    assert all(h["retry-after"] and h["x-ratelimit-limit-tokens"] == str(limit) for h in headers)
    assert max(observed) <= limit  # reserved + used never passed the limit
    assert final == sum(ok)  # every reservation was settled to exactly the tokens used
    assert sum(ok) <= limit
