"""A lean HTTP/1.1 client for the direct path's LLM calls: keep-alive connections pooled per origin,
each an asyncio protocol whose responses httptools parses (llhttp, the parser uvicorn serves with).

A call is one write and the parser's callbacks; aiohttp spent about 250 µs of CPU a call here, on its
request and response objects, its timers and its stream reader, and this about 40 µs. What it keeps
of a client's duties:

- a connection is reused only after a response read to its end whose server keeps it alive, and not
  once it has been idle `keepalive_seconds` (15 s, aiohttp's default), since a server or a load
  balancer may have dropped it by then; one the server closes while idle leaves the pool at once;
- `connect_timeout` bounds getting a connection (a free place in the pool, TCP, TLS), and
  `read_timeout` every wait for bytes of the response, so a stream is bounded per chunk, not whole;
- TLS verifies as aiohttp does: `ssl.create_default_context()`, ALPN `http/1.1`;
- bodies by `content-length`, chunked, or until the server closes; a body cut short is an error;
- a response read faster than it is consumed pauses the socket (`pause_reading`) past 256 KiB.

What it leaves out: proxies (a call through one goes on aiohttp; see `providers.DirectClient`),
compression (it asks for none), redirects, cookies, HTTP/2. A request is never sent twice: a
connection that broke before answering fails the call, and the caller's retry policy decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httptools

KEEPALIVE_SECONDS = 15.0
"""How long an idle connection may be reused (aiohttp's default keep-alive)."""
PAUSE_BYTES = 256 * 1024
"""Unread response bytes past which the socket's reading is paused, until half are read."""


class HttpError(Exception):
    """A connection that could not be made, broke, or carried something that is not HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: its origin, the request line's target, and the `host` header."""

    origin: Origin
    path: str
    host_header: str


@functools.lru_cache(maxsize=256)
def target_of(url: str, query: tuple[tuple[str, str], ...] = ()) -> Target:
    """The `Target` of an `http` or `https` URL (with `query` added to its own)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    path = parts.path or "/"
    queries = [q for q in (parts.query, urllib.parse.urlencode(query)) if q]
    if queries:
        path += "?" + "&".join(queries)
    return Target(
        Origin(parts.scheme, host, port),
        path,
        shown if port == default else f"{shown}:{port}",
    )


@functools.cache
def _tls() -> ssl.SSLContext:
    context = ssl.create_default_context()  # loads the system's CAs once (honours SSL_CERT_FILE)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _head(target: Target, headers: Mapping[str, str], length: int) -> bytes:
    lines = [f"POST {target.path} HTTP/1.1", f"host: {target.host_header}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"the header {name!r} has a line break")
        lines.append(f"{name}: {value}")
    lines.append(f"content-length: {length}")
    lines.append("\r\n")
    try:
        return "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError("a header is not latin-1") from exc


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one request at a time, and its response's state."""

    def __init__(self, pool: Http1Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = True  # holds a place of the pool's `max_connections`
        self.idle_since = 0.0
        self.parser: httptools.HttpResponseParser | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.framed = False  # the body's end is known (content-length, chunked), not the close
        self.keep_alive = False
        self.complete = False
        self.error: HttpError | None = None
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None or self.complete:  # bytes no request asked for: the connection is unusable
            self.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.complete:  # else a second response followed the one asked for
                self._fail(HttpError(f"not an HTTP/1.1 response: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # the transport closes itself; `connection_lost` follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.parser is not None and not self.complete:
            if self.headers_done and not self.framed:
                self.complete = True  # a body that ends when the server closes
                self._wake()
            else:
                cause = f": {exc}" if exc else ""
                self._fail(HttpError(f"the server closed the connection before the response ended{cause}"))
        self.pool._gone(self)

    # httptools' callbacks
    def on_message_begin(self) -> None:
        if self.complete:  # a second response in the same bytes: no request asked for it
            raise HttpError("a response no request asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if status < 200:  # an interim response (100 Continue, 103 Early Hints): the real one follows
            self.headers = {}
            return
        self.status = status
        self.headers_done = True
        self.framed = "content-length" in self.headers or "transfer-encoding" in self.headers
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > PAUSE_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.headers_done:  # else the end of an interim response
            self.complete = True
            self._wake()

    # the request's side
    def send(self, head: bytes, body: bytes) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers = {}
        self.headers_done = self.framed = self.keep_alive = self.complete = False
        self.error = None
        self.body.clear()
        self.buffered = 0
        assert self.transport is not None
        self.transport.write(head + body)

    async def wait(self, timeout: float) -> None:
        """Until the response has moved on (headers, body, its end, an error), or `TimeoutError`."""
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def take(self) -> bytes | None:
        """The next unread piece of the body, if one is in."""
        if not self.body:
            return None
        piece = self.body.popleft()
        self.buffered -= len(piece)
        if self.paused and self.buffered <= PAUSE_BYTES // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return piece

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.error is None and not self.closed

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self.pool._uncount(self)

    def _fail(self, error: HttpError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Response:
    """A response whose status and headers are in; its body is read with `read` or `chunks`.
    `release()` (after the body) or `close()` gives its connection back or closes it."""

    __slots__ = ("_connection", "_timeout", "headers", "status")

    def __init__(self, connection: _Connection, timeout: float) -> None:
        self.status = connection.status
        self.headers = connection.headers
        self._connection: _Connection | None = connection
        self._timeout = timeout

    async def _next(self) -> bytes | None:
        connection = self._connection
        if connection is None:
            raise HttpError("the response was released")
        while True:
            piece = connection.take()
            if piece is not None:
                return piece
            if connection.error is not None:
                raise connection.error
            if connection.complete:
                return None
            await connection.wait(self._timeout)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive (each wait bounded by the read timeout)."""
        while (piece := await self._next()) is not None:
            yield piece

    async def read(self, limit: int | None = None) -> bytes:
        """The body (with `limit`, its first `limit` bytes at most); the connection is released when
        the body was read to its end, else closed."""
        parts: list[bytes] = []
        size = 0
        try:
            while limit is None or size < limit:
                piece = await self._next()
                if piece is None:
                    break
                parts.append(piece)
                size += len(piece)
        except BaseException:
            self.close()
            raise
        self.release()
        data = b"".join(parts)
        return data if limit is None else data[:limit]

    def release(self) -> None:
        """Back to the pool if the body was read to its end and the server keeps the connection,
        else closed."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.pool._put_back(connection)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def __del__(self) -> None:
        # dropped without `release` or `close` (a stream whose answer was never started): its
        # connection must not stay open, holding a place of the pool
        if self._connection is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: the socket is closed with it
                self.close()


class Http1Pool:
    """Keep-alive connections per origin, at most `max_connections` open (idle ones included)."""

    def __init__(
        self,
        *,
        max_connections: int = 200,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.keepalive_seconds = keepalive_seconds
        self._tls = tls
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0
        self._closed = False
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def post(
        self,
        target: Target,
        headers: Mapping[str, str],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> Response:
        """Send `body`; returns once the response's status and headers are in. Raises `HttpError`,
        `TimeoutError`, or `ValueError` for a header that cannot be sent."""
        head = _head(target, headers, len(body))
        connection = await self._connection(target.origin, connect_timeout)
        try:
            connection.send(head, body)
            while not connection.headers_done:
                if connection.error is not None:
                    raise connection.error
                await connection.wait(read_timeout)
        except BaseException:
            connection.close()
            raise
        return Response(connection, read_timeout)

    async def aclose(self) -> None:
        """Closes the idle connections, and every other once its response is done with."""
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

    async def _connection(self, origin: Origin, timeout: float) -> _Connection:
        idle = self._idle.get(origin)
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                connection = idle.pop()  # the most recently used: the likeliest to be alive
                if connection.closed:
                    continue
                if now - connection.idle_since <= self.keepalive_seconds:
                    return connection
                connection.close()
        async with asyncio.timeout(timeout):  # rare: only for a new connection
            while self._open >= self.max_connections:
                if not self._close_one_idle():
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiting.append(waiter)
                    try:
                        await waiter
                    except BaseException:
                        if waiter.done() and not waiter.cancelled():
                            self._wake_one()  # woken, then timed out or cancelled: pass the wake on
                        raise
                    finally:
                        if waiter in self._waiting:
                            self._waiting.remove(waiter)
                    idle = self._idle.get(origin)
                    while idle:  # a connection given back while this waited
                        connection = idle.pop()
                        if not connection.closed:
                            return connection
            return await self._connect(origin)

    async def _connect(self, origin: Origin) -> _Connection:
        made: list[_Connection] = []

        def protocol() -> _Connection:
            made.append(_Connection(self, origin))
            return made[-1]

        self._open += 1
        tls = (self._tls or _tls()) if origin.scheme == "https" else None
        try:
            _, connection = await asyncio.get_running_loop().create_connection(
                protocol, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
            )
        except BaseException as exc:
            for connection in made:
                connection.close()
            if not made:
                self._open -= 1
                self._wake_one()
            if isinstance(exc, OSError):  # refused, unreachable, no such host, TLS refused
                raise HttpError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
            raise
        return connection

    def _put_back(self, connection: _Connection) -> None:
        if self._closed or not connection.reusable():
            connection.close()
            return
        connection.parser = None
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(connection.origin, []).append(connection)
        self._wake_one()

    def _close_one_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                idle.pop(0).close()  # the longest idle
                return True
        return False

    def _uncount(self, connection: _Connection) -> None:
        if connection.counted:
            connection.counted = False
            self._open -= 1
            self._wake_one()

    def _gone(self, connection: _Connection) -> None:
        """`connection` was closed (by either side): it leaves the pool."""
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
        self._uncount(connection)

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
