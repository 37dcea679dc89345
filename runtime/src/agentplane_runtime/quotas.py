"""Quotas: requests and tokens per minute per tenant (and per API key), and a monthly budget in USD.

The counting primitive is a `QuotaBackend`: check several fixed-window counters against their
limits and, only if every one has room, increment them all — atomically. `RedisQuotaBackend`
does it in one Lua script (correct across any number of replicas); `MemoryQuotaBackend` does the
same in-process (for `agentplane up`), with the same semantics and the same tests.

Tokens are *reserved* before the LLM call (prompt size and `max_tokens`) and *settled* after it
with the real usage: the difference is given back, so the counters only ever hold
reserved-or-used tokens and concurrent or streaming requests cannot overshoot a limit.

A settlement does not take a Redis round trip of its own: `RedisQuotaBackend` sends it (with the
request's usage record) ahead of the next `acquire`, in that call's pipeline, or after
`SETTLE_DELAY_SECONDS` when no request comes. Under load a request costs one round trip, and the
next request's check still sees every settlement before it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from agentplane_platform.config import ResolvedQuota
from agentplane_platform.quotas import QuotaLimits
from agentplane_runtime.buffer import StreamEntry
from agentplane_runtime.redis_pipe import Command, RedisPipe

log = logging.getLogger("agentplane.runtime.quota")

WINDOW_SECONDS = 60
UNLIMITED = -1
# how long a settlement waits for a request to carry it to Redis before it goes on its own
SETTLE_DELAY_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """One counter to check and increment: its key, the amount to add, its limit (-1: none)."""

    key: str
    add: int
    limit: int


@dataclass(frozen=True, slots=True)
class Acquired:
    """The outcome of `acquire`: `ok`, else which counter refused (`failed`) and its value."""

    ok: bool
    values: tuple[int, ...] = ()
    failed: int = -1
    spend: float = 0.0
    spend_missing: bool = False


class QuotaBackend(Protocol):
    """Atomic counters shared by every replica that enforces a tenant's quota."""

    async def acquire(
        self, counters: Sequence[CounterSpec], *, spend_key: str, budget: float, ttl: int
    ) -> Acquired:
        """All-or-nothing: refuse when the spend has reached the budget (if `budget` >= 0) or any
        counter would pass its limit; else add to every counter. `spend_missing` when the spend
        counter does not exist yet (the caller initialises it from the usage records and retries)."""
        ...

    def settle(
        self,
        keys: Sequence[str],
        delta: int,
        spend_key: str,
        amount: float,
        ttl: int,
        append: StreamEntry | None = None,
    ) -> asyncio.Future[bool]:
        """A request is done: add `delta` (possibly negative) to those of `keys` that still exist, and
        `amount` USD (if any) to the spend counter, which expires in `ttl` seconds; and append the
        record `append` in the same round trip when it can. Returns at once; the future says, once
        the settlement is sent, whether `append` was appended (it never raises: a failure is logged,
        and the caller records the record itself). Awaiting it is optional."""
        ...

    async def flush(self) -> None:
        """Send every settlement not sent yet, and wait for those under way (at shutdown)."""
        ...

    async def init_spend(self, key: str, amount: float, ttl: int) -> None:
        """Set the spend counter if it does not exist."""
        ...

    async def ping(self) -> bool: ...


_ACQUIRE = """
local n = #KEYS - 1
local budget = tonumber(ARGV[2 * n + 1])
local ttl = tonumber(ARGV[2 * n + 2])
local spend = 0
local spent = '0'
if budget >= 0 then
  local raw = redis.call('GET', KEYS[n + 1])
  if not raw then return {-1} end
  spend = tonumber(raw)
  spent = raw
  if spend >= budget then return {0, 0, raw} end
end
for i = 1, n do
  local add = tonumber(ARGV[2 * i - 1])
  local limit = tonumber(ARGV[2 * i])
  if limit >= 0 and add > 0 then
    local current = tonumber(redis.call('GET', KEYS[i]) or '0')
    if current + add > limit then return {0, i, tostring(current)} end
  end
end
local out = {1}
for i = 1, n do
  local value = redis.call('INCRBY', KEYS[i], tonumber(ARGV[2 * i - 1]))
  redis.call('EXPIRE', KEYS[i], ttl)
  out[#out + 1] = value
end
out[#out + 1] = spent
return out
"""

_SETTLE = """
local n = #KEYS - 1
local delta = tonumber(ARGV[1])
if delta ~= 0 then
  for i = 1, n do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], delta) end
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('INCRBYFLOAT', KEYS[n + 1], ARGV[2])
  redis.call('EXPIRE', KEYS[n + 1], tonumber(ARGV[3]))
end
return 1
"""


@dataclass(slots=True)
class _Settlement:
    """A settlement waiting for a round trip: its script's keys and arguments (none when it changes
    no counter), the record to append with it, and its outcome."""

    keys: list[str]
    args: list[str | int] | None
    append: StreamEntry | None
    appended: asyncio.Future[bool]


class RedisQuotaBackend:
    """Counters in Redis; each check-and-increment is one Lua script, atomic across replicas.
    Settlements wait for the next `acquire` and go in its pipeline, ahead of its script (or alone
    after `settle_delay` seconds): one round trip a request under load."""

    def __init__(self, redis: Redis, *, settle_delay: float = SETTLE_DELAY_SECONDS) -> None:
        self.redis = redis
        self.settle_delay = settle_delay
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._pipe = RedisPipe(redis)  # the request's own round trip; redis-py loads a missing script
        self._pending: list[_Settlement] = []
        self._timer: asyncio.TimerHandle | None = None
        self._under_way: set[asyncio.Task[Any]] = set()

    async def acquire(
        self, counters: Sequence[CounterSpec], *, spend_key: str, budget: float, ttl: int
    ) -> Acquired:
        keys = [c.key for c in counters] + [spend_key]
        args: list[str | int | float] = []
        for c in counters:
            args += [c.add, c.limit]
        args += [budget, ttl]
        pending = self._take()
        if pending:  # the settlements first, so this check sees them; shielded: they must land
            result = await asyncio.shield(self._send(pending, (keys, args)))
        else:
            (result,) = await self._pipe.execute([("EVALSHA", self._acquire.sha, len(keys), *keys, *args)])
            if isinstance(result, NoScriptError):  # Redis restarted: load the script again
                result = await self._acquire(keys=keys, args=args)
            elif isinstance(result, Exception):
                raise result
        status = int(result[0])
        if status == -1:
            return Acquired(ok=False, spend_missing=True)
        if status == 0:
            failed = int(result[1]) - 1
            value = float(result[2])
            if failed < 0:
                return Acquired(ok=False, failed=-1, spend=value)
            return Acquired(
                ok=False,
                failed=failed,
                values=tuple(int(value) if i == failed else 0 for i in range(len(counters))),
            )
        # the counters' new values, then the month's spend as text (a Lua number would be truncated)
        return Acquired(ok=True, values=tuple(int(v) for v in result[1:-1]), spend=float(result[-1]))

    def settle(
        self,
        keys: Sequence[str],
        delta: int,
        spend_key: str,
        amount: float,
        ttl: int,
        append: StreamEntry | None = None,
    ) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        appended: asyncio.Future[bool] = loop.create_future()
        if append is not None and append.redis is not self.redis:
            append = None  # another Redis: the caller records it (the future says False)
        # the amount as text (repr): INCRBYFLOAT adds it as Redis parses it, with no rounding by Lua
        needed = bool(delta or amount > 0)
        if not needed and append is None:
            appended.set_result(False)
            return appended
        settle_args: list[str | int] | None = [delta, repr(float(amount)), ttl] if needed else None
        self._pending.append(_Settlement([*keys, spend_key], settle_args, append, appended))
        if self._timer is None:
            self._timer = loop.call_later(self.settle_delay, self._send_pending)
        return appended

    async def flush(self) -> None:
        pending = self._take()
        if pending:
            await self._send(pending, None)
        while self._under_way:
            await asyncio.gather(*self._under_way, return_exceptions=True)

    def _take(self) -> list[_Settlement]:
        """The settlements waiting, for the round trip about to be made."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        return pending

    def _send_pending(self) -> None:
        """No request came in time: the waiting settlements go on their own."""
        self._timer = None
        if pending := self._take():
            self._send(pending, None)

    def _send(
        self, pending: list[_Settlement], acquire: tuple[list[str], list[str | int | float]] | None
    ) -> asyncio.Task[Any]:
        """One pipeline: `pending`, each settlement's script and record, then `acquire`'s script (the
        task's result is that script's). Tracked until done, so `flush` can wait for it."""
        task = asyncio.ensure_future(self._round_trip(pending, acquire))
        self._under_way.add(task)
        task.add_done_callback(self._sent)
        return task

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._under_way.discard(task)
        if not task.cancelled():
            task.exception()  # an acquire's error is its caller's; a cancelled caller's is dropped

    async def _round_trip(
        self, pending: list[_Settlement], acquire: tuple[list[str], list[str | int | float]] | None
    ) -> Any:
        commands: list[Command] = []
        for item in pending:
            if item.args is not None:
                commands.append(("EVALSHA", self._settle.sha, len(item.keys), *item.keys, *item.args))
            if item.append is not None:
                commands.append(("XADD", item.append.stream, "*", "r", item.append.data))
        if acquire is not None:
            commands.append(("EVALSHA", self._acquire.sha, len(acquire[0]), *acquire[0], *acquire[1]))
        try:
            results = await self._pipe.execute(commands)
        except BaseException as exc:
            for item in pending:
                self._settled(item, exc, exc)
            raise
        results.reverse()
        for item in pending:
            outcome = results.pop() if item.args is not None else None
            if isinstance(outcome, NoScriptError):  # Redis restarted: load the script again
                try:
                    await self._settle(keys=item.keys, args=item.args)
                    outcome = None
                except (RedisError, OSError) as exc:
                    outcome = exc
            self._settled(item, outcome, results.pop() if item.append is not None else None)
        if acquire is None:
            return None
        result = results.pop()
        if isinstance(result, NoScriptError):
            return await self._acquire(keys=acquire[0], args=acquire[1])
        if isinstance(result, Exception):
            raise result
        return result

    @staticmethod
    def _settled(item: _Settlement, settle: object, append: object) -> None:
        """Log a settlement that failed; say whether its record was appended (`append` is the
        XADD's reply: the record's id, or the error)."""
        if isinstance(settle, BaseException) and not isinstance(settle, asyncio.CancelledError):
            log.warning("quota settle failed (%s: %s)", type(settle).__name__, settle)
        if not item.appended.done():
            item.appended.set_result(
                item.append is not None and append is not None and not isinstance(append, BaseException)
            )

    async def init_spend(self, key: str, amount: float, ttl: int) -> None:
        await self.redis.set(key, repr(float(amount)), nx=True, ex=ttl)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def aclose(self) -> None:
        """Close the connection of the requests' round trips (once `flush` has sent what waited)."""
        await self._pipe.aclose()


class MemoryQuotaBackend:
    """The same counters in this process (one event loop, so every method is atomic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._values: dict[str, tuple[float, float]] = {}  # key -> (value, expires at)
        self._clock = clock

    def _get(self, key: str) -> float | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._values[key]
            return None
        return entry[0]

    def _set(self, key: str, value: float, ttl: int) -> None:
        self._values[key] = (value, self._clock() + ttl)
        if len(self._values) > 10_000:
            now = self._clock()
            for k in [k for k, (_, exp) in self._values.items() if exp <= now]:
                del self._values[k]

    async def acquire(
        self, counters: Sequence[CounterSpec], *, spend_key: str, budget: float, ttl: int
    ) -> Acquired:
        spend = 0.0
        if budget >= 0:
            current_spend = self._get(spend_key)
            if current_spend is None:
                return Acquired(ok=False, spend_missing=True)
            spend = current_spend
            if spend >= budget:
                return Acquired(ok=False, failed=-1, spend=spend)
        for i, c in enumerate(counters):
            if c.limit >= 0 and c.add > 0:
                current = int(self._get(c.key) or 0)
                if current + c.add > c.limit:
                    return Acquired(
                        ok=False,
                        failed=i,
                        values=tuple(current if j == i else 0 for j in range(len(counters))),
                    )
        values = []
        for c in counters:
            value = int(self._get(c.key) or 0) + c.add
            self._set(c.key, value, ttl)
            values.append(value)
        return Acquired(ok=True, values=tuple(values), spend=spend)

    def settle(
        self,
        keys: Sequence[str],
        delta: int,
        spend_key: str,
        amount: float,
        ttl: int,
        append: StreamEntry | None = None,
    ) -> asyncio.Future[bool]:
        for key in keys if delta else ():
            entry = self._values.get(key)
            if entry is not None and self._get(key) is not None:
                self._values[key] = (entry[0] + delta, entry[1])
        if amount > 0:
            self._set(spend_key, (self._get(spend_key) or 0.0) + amount, ttl)
        appended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        appended.set_result(False)  # no stream here to append to
        return appended

    async def flush(self) -> None:
        return None  # every settlement is done when `settle` returns

    async def init_spend(self, key: str, amount: float, ttl: int) -> None:
        if self._get(key) is None:
            self._set(key, amount, ttl)

    async def ping(self) -> bool:
        return True


class LimitsSource(Protocol):
    """Where a tenant's limits come from (the operator's Redis hash, or fixed ones)."""

    async def get(self, quota: ResolvedQuota) -> QuotaLimits | None: ...


class RedisLimits:
    """Reads the hash the operator writes at `quota.limits_key`; cached for a few seconds."""

    def __init__(self, redis: Redis, cache_seconds: float) -> None:
        self.redis = redis
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, QuotaLimits | None]] = {}

    async def get(self, quota: ResolvedQuota) -> QuotaLimits | None:
        now = time.monotonic()
        cached = self._cache.get(quota.limits_key)
        if cached is not None and cached[0] > now:
            return cached[1]
        fields = await self.redis.hgetall(quota.limits_key)
        limits: QuotaLimits | None = None
        if fields:
            decoded = {
                (k.decode() if isinstance(k, bytes) else str(k)): (
                    v.decode() if isinstance(v, bytes) else str(v)
                )
                for k, v in fields.items()
            }
            try:
                limits = QuotaLimits.from_redis(quota.tenant, decoded)
            except (KeyError, ValueError):
                log.warning("malformed quota limits", extra={"key": quota.limits_key})
        self._cache[quota.limits_key] = (now + self.cache_seconds, limits)
        return limits


class StaticLimits:
    """Fixed limits per tenant (local mode, tests)."""

    def __init__(self, limits: dict[str, QuotaLimits] | None = None) -> None:
        self.limits: dict[str, QuotaLimits] = dict(limits or {})

    async def get(self, quota: ResolvedQuota) -> QuotaLimits | None:
        return self.limits.get(quota.tenant)


@dataclass
class KeyLimits:
    """Per-key limits on top of the tenant's (from the API key's record)."""

    key_id: str
    tokens_per_minute: int | None
    requests_per_minute: int | None


@dataclass
class Reservation:
    """What a request holds: the token counters it added to, and how much."""

    token_keys: tuple[str, ...]
    reserved: int
    spend_key: str
    headers: dict[str, str] = field(default_factory=dict)
    enforced: bool = True
    budget_usd: float | None = None
    """The tenant's monthly budget, when it has one."""
    spent_usd: float = 0.0
    """The tenant's spend this month when the request was admitted (known only with a budget)."""


class QuotaExceeded(Exception):
    """A limit refuses the request; `headers` carry Retry-After and the x-ratelimit-* values."""

    def __init__(self, limit: str, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.limit = limit
        self.message = message
        self.headers = headers


SpendLoader = Callable[[str, datetime], Awaitable[float]]
"""The tenant's spend since the start of the month, from the usage records."""


@functools.lru_cache(maxsize=4)
def _month_bounds(year: int, month: int, tz: tzinfo | None) -> tuple[str, datetime, datetime]:
    start = datetime(year, month, 1, tzinfo=tz)
    nxt = datetime(year + 1, 1, 1, tzinfo=tz) if month == 12 else datetime(year, month + 1, 1, tzinfo=tz)
    return start.strftime("%Y-%m"), start, nxt


def _month(now: datetime) -> tuple[str, datetime, float]:
    """`now`'s month (`YYYY-MM`), its first moment, and the seconds left of it."""
    label, start, nxt = _month_bounds(now.year, now.month, now.tzinfo)
    return label, start, (nxt - now).total_seconds()


class QuotaGate:
    """Admits a request against its tenant's (and key's) limits, reserves tokens, settles usage."""

    def __init__(
        self,
        backend: QuotaBackend,
        limits: LimitsSource,
        spend_loader: SpendLoader,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.spend_loader = spend_loader
        self.clock = clock

    async def admit(self, quota: ResolvedQuota, key: KeyLimits | None, tokens: int) -> Reservation:
        """Count one request and reserve `tokens`, or raise `QuotaExceeded`."""
        now = self.clock()
        moment = datetime.fromtimestamp(now, UTC)
        month, month_start, to_month_end = _month(moment)
        spend_key = f"{quota.key_prefix}:spend:{month}"
        limits = await self.limits.get(quota)
        if limits is None and (
            key is None or (key.tokens_per_minute is None and key.requests_per_minute is None)
        ):
            return Reservation((), 0, spend_key, enforced=False)
        window = int(now // WINDOW_SECONDS)
        reset = WINDOW_SECONDS - (now % WINDOW_SECONDS)
        counters: list[CounterSpec] = []
        names: list[str] = []
        if limits is not None:
            counters += [
                CounterSpec(f"{quota.key_prefix}:rpm:{window}", 1, limits.requests_per_minute),
                CounterSpec(f"{quota.key_prefix}:tpm:{window}", tokens, limits.tokens_per_minute),
            ]
            names += ["requests_per_minute", "tokens_per_minute"]
        if key is not None and (key.tokens_per_minute is not None or key.requests_per_minute is not None):
            rpm = key.requests_per_minute if key.requests_per_minute is not None else UNLIMITED
            tpm = key.tokens_per_minute if key.tokens_per_minute is not None else UNLIMITED
            counters += [
                CounterSpec(f"{quota.key_prefix}:key:{key.key_id}:rpm:{window}", 1, rpm),
                CounterSpec(f"{quota.key_prefix}:key:{key.key_id}:tpm:{window}", tokens, tpm),
            ]
            names += ["key_requests_per_minute", "key_tokens_per_minute"]
        budget = limits.monthly_budget_usd if limits is not None and limits.monthly_budget_usd > 0 else -1.0
        ttl_window = WINDOW_SECONDS * 2
        spend_ttl = int(to_month_end) + 86400
        result = await self.backend.acquire(counters, spend_key=spend_key, budget=budget, ttl=ttl_window)
        if result.spend_missing:
            spent = await self.spend_loader(quota.tenant, month_start)
            await self.backend.init_spend(spend_key, spent, spend_ttl)
            result = await self.backend.acquire(counters, spend_key=spend_key, budget=budget, ttl=ttl_window)
        token_keys = tuple(c.key for c in counters if ":tpm:" in c.key)
        if not result.ok:
            if result.failed < 0:
                raise QuotaExceeded(
                    "monthly_budget_usd",
                    "the tenant's monthly budget is used up",
                    {"Retry-After": str(math.ceil(to_month_end)), "X-Budget-Remaining-USD": "0.000000"},
                )
            name = names[result.failed]
            spec = counters[result.failed]
            headers = self._headers(counters, names, result.values, reset, failed=result.failed)
            headers["Retry-After"] = str(max(1, math.ceil(reset)))
            what = "requests" if "requests" in name else "tokens"
            scope = "API key" if name.startswith("key_") else "tenant"
            if what == "tokens" and spec.add > spec.limit:
                message = (
                    f"the request needs {spec.add} tokens, more than the {scope}'s {spec.limit} per minute"
                )
            else:
                message = f"the {scope}'s {what} per minute limit ({spec.limit}) is reached"
            raise QuotaExceeded(name, message, headers)
        return Reservation(
            token_keys,
            tokens,
            spend_key,
            headers=self._headers(counters, names, result.values, reset),
            budget_usd=budget if budget > 0 else None,
            spent_usd=result.spend if budget > 0 else 0.0,
        )

    async def reserve_more(
        self, reservation: Reservation, quota: ResolvedQuota, key: KeyLimits | None, tokens: int
    ) -> bool:
        """Reserve tokens for one more LLM call of the same request (tool loop); False if over."""
        if not reservation.enforced or tokens <= 0:
            return True
        limits = await self.limits.get(quota)
        counters = []
        for counter_key in reservation.token_keys:
            if ":key:" in counter_key:
                limit = (
                    key.tokens_per_minute
                    if key is not None and key.tokens_per_minute is not None
                    else UNLIMITED
                )
            else:
                limit = limits.tokens_per_minute if limits is not None else UNLIMITED
            counters.append(CounterSpec(counter_key, tokens, limit))
        result = await self.backend.acquire(
            counters, spend_key=reservation.spend_key, budget=-1, ttl=WINDOW_SECONDS * 2
        )
        if result.ok:
            reservation.reserved += tokens
        return result.ok

    def settle(
        self,
        reservation: Reservation,
        used_tokens: int,
        cost_usd: float,
        *,
        append: StreamEntry | None = None,
    ) -> asyncio.Future[bool]:
        """Replace the reservation by the real usage (gives back what was not used); with `append`, a
        record to add to its Redis stream in the same round trip. Returns at once (the backend sends
        it with its next round trip); the future says whether the record was appended (else the
        caller records it itself) and never raises."""
        keys = reservation.token_keys if reservation.enforced else ()
        delta = used_tokens - reservation.reserved if reservation.enforced else 0
        _, _, to_month_end = _month(datetime.fromtimestamp(self.clock(), UTC))
        appended = self.backend.settle(
            keys, delta, reservation.spend_key, max(0.0, cost_usd), int(to_month_end) + 86400, append
        )
        if reservation.enforced:
            reservation.reserved = used_tokens
        return appended

    async def flush(self) -> None:
        """Send the settlements still waiting (at shutdown)."""
        await self.backend.flush()

    @staticmethod
    def _headers(
        counters: Sequence[CounterSpec],
        names: Sequence[str],
        values: Sequence[int],
        reset: float,
        failed: int = -1,
    ) -> dict[str, str]:
        headers: dict[str, str] = {}
        for i, (counter, name) in enumerate(zip(counters, names, strict=True)):
            if name.startswith("key_") or counter.limit < 0:
                continue
            what = "requests" if "requests" in name else "tokens"
            used = values[i] if i < len(values) else 0
            remaining = max(0, counter.limit - used)
            headers[f"x-ratelimit-limit-{what}"] = str(counter.limit)
            headers[f"x-ratelimit-remaining-{what}"] = str(remaining)
            headers[f"x-ratelimit-reset-{what}"] = f"{math.ceil(reset)}s"
        del failed
        return headers


__all__ = [
    "Acquired",
    "CounterSpec",
    "KeyLimits",
    "LimitsSource",
    "MemoryQuotaBackend",
    "QuotaBackend",
    "QuotaExceeded",
    "QuotaGate",
    "RedisError",
    "RedisLimits",
    "RedisQuotaBackend",
    "Reservation",
    "StaticLimits",
]
