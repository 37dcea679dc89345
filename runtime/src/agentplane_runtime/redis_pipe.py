"""One pipelined connection to Redis for a chat request's own round trip (its quota check, carrying
the settlements before it).

redis-py spent about as much CPU on that round trip as on everything else of the request's quota:
a pipeline object, its command table and callbacks, a retry wrapper, the pool's checkout and health
check, and an asyncio stream read per reply. `RedisPipe` writes a round trip's commands in one write
on one connection that every request shares (many round trips in flight, their replies in the order
sent) and parses the replies with hiredis, the parser redis-py itself uses.

What a connection is comes from the redis-py client it is given: host and port or socket path,
database, credentials and TLS context are read from a connection its pool would make, so the same
URL reaches the same server the same way. Everything else of the runtime's Redis (buffers, limits,
health checks, scripts to load) stays on redis-py.

A reply that does not come within the client's socket timeout fails every round trip in flight and
closes the connection; a lost connection fails them too. The next round trip connects again. A
connection idle for the client's health-check interval (the runtime's is 30 s) is replaced before
its next round trip, where redis-py would PING it first: a load balancer may have dropped it without
a word (Azure's drops flows idle for 4 minutes), and a round trip sent into it would wait out the
socket timeout. Errors
are redis-py's (`redis.exceptions`): `ConnectionError`, `TimeoutError`, `AuthenticationError`; an error reply is returned
in its place (a `ResponseError`, or `NoScriptError` for a script Redis does not hold).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
from redis import exceptions as errors
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, SSLConnection, UnixDomainSocketConnection
from redis.credentials import UsernamePasswordCredentialProvider
from redis.exceptions import NoScriptError, ResponseError

Arg = bytes | str | int | float
Command = Sequence[Arg]

_MORE = object()  # hiredis: no whole reply buffered yet


def _encoded(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int | float) and not isinstance(arg, bool):
        return repr(arg).encode()  # as redis-py writes them
    # as redis-py: a bool or None is refused (say 0 or 1, or leave it out), never written as "None"
    raise TypeError(f"{type(arg).__name__} is not a Redis argument (bytes, str, int or float)")


def pack(commands: Sequence[Command]) -> bytes:
    """`commands` in RESP, as one buffer."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = _encoded(arg)
            out.append(b"$%d\r\n" % len(data))
            out.append(data)
            out.append(b"\r\n")
    return b"".join(out)


def _reply(value: Any) -> Any:
    if isinstance(value, ResponseError) and str(value).startswith("NOSCRIPT"):
        return NoScriptError(str(value))
    return value


@dataclass(slots=True, eq=False)
class _RoundTrip:
    count: int
    future: asyncio.Future[list[Any]]
    replies: list[Any] = field(default_factory=list)
    deadline: asyncio.TimerHandle | None = None


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.active = time.monotonic()  # when it last wrote or read
        self._reader = hiredis.Reader(replyError=ResponseError, notEnoughData=_MORE)
        self._waiting: deque[_RoundTrip] = deque()

    def usable(self, idle: float) -> bool:
        """Not lost, and not idle for `idle` seconds (0: however long)."""
        if self.lost is not None:
            return False
        return not idle or bool(self._waiting) or time.monotonic() - self.active < idle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of it

    def send(self, data: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Write a round trip of `count` commands; its replies are the future's."""
        if self.lost is not None or self.transport is None:
            raise errors.ConnectionError(f"the connection to Redis is closed ({self.lost})")
        loop = asyncio.get_running_loop()
        trip = _RoundTrip(count, loop.create_future())
        if self.timeout:
            trip.deadline = loop.call_later(self.timeout, self._expired, trip)
        self._waiting.append(trip)
        self.transport.write(data)
        self.active = time.monotonic()
        return trip.future

    def _expired(self, trip: _RoundTrip) -> None:
        if not trip.future.done():
            self.close(errors.TimeoutError(f"no reply from Redis in {self.timeout} s"))

    def data_received(self, data: bytes) -> None:
        self.active = time.monotonic()
        self._reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.close(errors.ConnectionError(f"Redis sent what is not RESP: {exc}"))
                return
            if reply is _MORE:
                return
            if not waiting:
                self.close(errors.ConnectionError("Redis sent a reply nothing asked for"))
                return
            trip = waiting[0]
            trip.replies.append(_reply(reply))
            if len(trip.replies) == trip.count:
                waiting.popleft()
                if trip.deadline is not None:
                    trip.deadline.cancel()
                if not trip.future.done():  # its caller may have given up: the replies are still read
                    trip.future.set_result(trip.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(errors.ConnectionError(f"the connection to Redis was lost ({exc or 'closed'})"))

    def close(self, reason: Exception) -> None:
        """Fail every round trip in flight with `reason` and drop the connection."""
        self._fail(reason)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, reason: Exception) -> None:
        if self.lost is None:
            self.lost = reason
        while self._waiting:
            trip = self._waiting.popleft()
            if trip.deadline is not None:
                trip.deadline.cancel()
            if not trip.future.done():
                trip.future.set_exception(reason)


class RedisPipe:
    """Round trips of commands on one shared, pipelined connection to the server of `redis`."""

    def __init__(self, redis: Redis) -> None:
        # a connection as the client's pool makes them, for its settings only: never connected
        self._settings: AbstractConnection = redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        self._idle = float(self._settings.health_check_interval or 0)
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The replies of `commands`, sent in one write, in order; an error reply is its exception."""
        protocol = self._protocol
        if protocol is None or not protocol.usable(self._idle):
            protocol = await self._connected()
        trip = protocol.send(pack(commands), len(commands))
        return await trip

    async def _connected(self) -> _Protocol:
        async with self._connecting:
            old = self._protocol
            if old is None or not old.usable(self._idle):
                if old is not None:  # idle (nothing in flight) or lost
                    old.close(errors.ConnectionError("replaced: idle for the health-check interval"))
                self._protocol = await self._connect()
            assert self._protocol is not None
            return self._protocol

    async def _connect(self) -> _Protocol:
        settings = self._settings
        loop = asyncio.get_running_loop()
        protocol = _Protocol(settings.socket_timeout)
        try:
            async with asyncio.timeout(settings.socket_connect_timeout):
                if isinstance(settings, UnixDomainSocketConnection):
                    await loop.create_unix_connection(lambda: protocol, settings.path)
                else:
                    ssl = settings.ssl_context.get() if isinstance(settings, SSLConnection) else None
                    await loop.create_connection(
                        lambda: protocol,
                        settings.host,
                        settings.port,  # type: ignore[attr-defined]
                        ssl=ssl,
                    )
        except (OSError, TimeoutError) as exc:
            raise errors.ConnectionError(f"cannot connect to Redis: {type(exc).__name__}: {exc}") from exc
        try:
            await self._handshake(protocol)
        except BaseException as exc:  # refused, timed out or cancelled: the connection goes too
            protocol.close(exc if isinstance(exc, Exception) else errors.ConnectionError("cancelled"))
            raise
        return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        """AUTH and SELECT, as the URL asks, in one round trip."""
        settings = self._settings
        handshake: dict[str, Command] = {}
        if settings.credential_provider or settings.username or settings.password:
            provider = settings.credential_provider or UsernamePasswordCredentialProvider(
                settings.username, settings.password
            )
            handshake["AUTH"] = ("AUTH", *(await provider.get_credentials_async()))
        if settings.db:
            handshake["SELECT"] = ("SELECT", settings.db)
        if handshake:
            replies = await protocol.send(pack(list(handshake.values())), len(handshake))
            for name, reply in zip(handshake, replies, strict=True):
                if isinstance(reply, ResponseError):
                    error = errors.AuthenticationError if name == "AUTH" else errors.ConnectionError
                    raise error(f"Redis refused {name}: {reply}")

    async def aclose(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close(errors.ConnectionError("the client was closed"))
