"""`http1.Http1Pool`, the direct path's HTTP/1.1 client, against scripted servers on loopback: what
it sends, keep-alive reuse and when a connection is not reused (closed by the server, idle too long,
`connection: close`, a body not read to its end), every way a body ends or is cut short, timeouts
per wait, the pool's limit, TLS verification, and backpressure; under asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop

from agentplane_runtime.http1 import Http1Pool, HttpError, Response, target_of
from support.cluster import Pki
from support.waiting import wait_for_async

JSON = {"content-type": "application/json", "authorization": "Bearer sk-test"}

Handler = Callable[["Request", asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Request:
    head: list[str]
    body: bytes
    connection: int
    """Which connection of the server it came on (0, 1, ...)."""


@dataclass
class Server:
    url: str
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


async def _read_request(reader: asyncio.StreamReader) -> tuple[list[str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")[:-2]
    length = next(
        (int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:")), 0
    )
    return lines, await reader.readexactly(length)


@asynccontextmanager
async def serving(handler: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """A server answering each request with `handler`, on as many requests a connection as the client
    sends (a handler that closes the writer ends its connection)."""
    server = Server(url="")

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = server.connections
        server.connections += 1
        server.writers.append(writer)
        try:
            while not writer.is_closing() and (read := await _read_request(reader)) is not None:
                request = Request(read[0], read[1], number)
                server.requests.append(request)
                await handler(request, writer)
        finally:
            writer.close()

    listening = await asyncio.start_server(connection, "127.0.0.1", 0, ssl=tls)
    port = listening.sockets[0].getsockname()[1]
    server.url = f"{'https' if tls else 'http'}://localhost:{port}/v1/chat/completions"
    try:
        yield server
    finally:
        listening.close()
        for writer in server.writers:
            writer.close()


async def until(what: str, condition: Callable[[], bool]) -> None:
    async def probe() -> bool:
        return condition()

    await wait_for_async(what, probe, timeout=5, interval=0.01)


def answer(body: bytes, *extra: str) -> bytes:
    headers = "".join(f"{line}\r\n" for line in extra)
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{headers}\r\n".encode() + body


def held_until(release: asyncio.Event) -> Handler:
    """A handler holding each request until `release` is set, then answering `done`."""

    async def held(request: Request, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(answer(b"done"))

    return held


async def ok(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(answer(b'{"echo": %d}' % len(request.body)))


async def post(pool: Http1Pool, server: Server, body: bytes = b"{}", *, timeout: float = 5.0) -> Response:
    return await pool.post(target_of(server.url), JSON, body, connect_timeout=timeout, read_timeout=timeout)


LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


def run_on(loop: str, test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    LOOPS[loop](asyncio.wait_for(test(), 30))


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_one_connection_carries_request_after_request(loop: str) -> None:
    async def test() -> None:
        pool = Http1Pool()
        async with serving(ok) as server:
            for size in range(1, 51):
                response = await post(pool, server, b"x" * size)
                assert (response.status, await response.read()) == (200, b'{"echo": %d}' % size)
            assert server.connections == 1
            first = server.requests[0]
            assert first.head[0] == "POST /v1/chat/completions HTTP/1.1"
            assert f"host: localhost:{server.url.split(':')[2].split('/')[0]}" in first.head
            assert "authorization: Bearer sk-test" in first.head
            assert "content-length: 1" in first.head
            # at once: as many connections as requests in flight, then reused
            responses = await asyncio.gather(*(post(pool, server) for _ in range(8)))
            assert [await r.read() for r in responses] == [b'{"echo": 2}'] * 8
            opened = server.connections
            assert opened <= 8

            async def one() -> bytes:
                return await (await post(pool, server)).read()

            for _ in range(3):
                await asyncio.gather(*(one() for _ in range(8)))
            assert server.connections == opened
        await pool.aclose()

    run_on(loop, test)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_every_way_a_body_ends(loop: str) -> None:
    async def chunked(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b'data: {"a"', b": 1}\n\n", b"data: [DONE]\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")

    async def until_close(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nthe body ends ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"when the server closes")
        writer.close()

    async def interim(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n")
        writer.write(answer(b"after two interim responses", "x-kept: yes"))

    async def test() -> None:
        pool = Http1Pool()
        async with serving(chunked) as server:
            response = await post(pool, server)
            pieces = [piece async for piece in response.chunks()]
            assert len(pieces) == 3  # each as it came, not the body at once
            assert b"".join(pieces) == b'data: {"a": 1}\n\ndata: [DONE]\n\n'
            response.release()
            assert await (await post(pool, server)).read() == b'data: {"a": 1}\n\ndata: [DONE]\n\n'
            assert server.connections == 1  # a chunked body read to its end keeps the connection
        async with serving(until_close) as server:
            assert await (await post(pool, server)).read() == b"the body ends when the server closes"
            assert await (await post(pool, server)).read() == b"the body ends when the server closes"
            assert server.connections == 2
        async with serving(interim) as server:
            response = await post(pool, server)
            assert (response.status, response.headers.get("x-kept")) == (200, "yes")
            assert await response.read() == b"after two interim responses"
        await pool.aclose()

    run_on(loop, test)


def test_a_body_cut_short_is_an_error() -> None:
    async def short(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
        writer.close()

    async def short_chunked(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        writer.close()

    async def before_headers(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-")
        writer.close()

    async def garbage(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    async def test() -> None:
        pool = Http1Pool()
        for handler in (short, short_chunked):
            async with serving(handler) as server:
                response = await post(pool, server)
                with pytest.raises(HttpError, match="closed the connection before the response ended"):
                    await response.read()
        async with serving(before_headers) as server:
            with pytest.raises(HttpError, match="closed the connection before the response ended"):
                await post(pool, server)
        async with serving(garbage) as server:
            with pytest.raises(HttpError, match=r"not an HTTP/1\.1 response"):
                await post(pool, server)
        assert pool._open == 0  # every broken connection left the pool
        await pool.aclose()

    asyncio.run(test())


def test_a_connection_is_not_reused_when_it_should_not_be() -> None:
    async def closing(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(b"bye", "connection: close"))

    async def long(request: Request, writer: asyncio.StreamWriter) -> None:
        whole = answer(b"x" * 2000)
        writer.write(whole[:-1990])  # the headers and the body's first 10 bytes, the rest after
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(whole[-1990:])

    async def test() -> None:
        pool = Http1Pool(keepalive_seconds=0.3)
        async with serving(closing) as server:
            for _ in range(3):
                assert await (await post(pool, server)).read() == b"bye"
            assert server.connections == 3
        async with serving(long) as server:
            assert await (await post(pool, server)).read(10) == b"x" * 10  # the rest left unread
            assert len(await (await post(pool, server)).read()) == 2000
            assert server.connections == 2
            await asyncio.sleep(0.5)  # idle longer than keepalive_seconds
            assert len(await (await post(pool, server)).read()) == 2000
            assert server.connections == 3
            # the server closes an idle connection: it leaves the pool, the next call does not fail
            await (await post(pool, server)).read()
            server.writers[-1].close()
            await until("the closed connection to leave the pool", lambda: pool._open == 0)
            assert len(await (await post(pool, server)).read()) == 2000
            assert server.connections == 4
        await pool.aclose()

    asyncio.run(test())


def test_idle_connections_are_reused_within_keepalive() -> None:
    """The control of the test above: with a long keep-alive the same connection is reused."""

    async def test() -> None:
        pool = Http1Pool(keepalive_seconds=30)
        async with serving(ok) as server:
            await (await post(pool, server)).read()
            await asyncio.sleep(0.5)
            await (await post(pool, server)).read()
            assert server.connections == 1
        await pool.aclose()

    asyncio.run(test())


def test_timeouts_bound_each_wait_not_the_whole() -> None:
    async def silent(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    async def trickle(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(8):  # 0.8 s in all, 0.1 s between pieces
            await asyncio.sleep(0.1)
            writer.write(b"1\r\n.\r\n")
        writer.write(b"0\r\n\r\n")

    async def stalls(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\n.\r\n")
        await asyncio.sleep(3600)

    async def test() -> None:
        pool = Http1Pool()
        async with serving(silent) as server:
            with pytest.raises(TimeoutError):
                await post(pool, server, timeout=0.3)
        async with serving(trickle) as server:
            assert await (await post(pool, server, timeout=0.4)).read() == b"." * 8
        async with serving(stalls) as server:
            response = await post(pool, server, timeout=0.3)
            chunks = response.chunks()
            assert await anext(chunks) == b"."
            with pytest.raises(TimeoutError):
                await anext(chunks)
            response.close()
        assert pool._open == 0
        await pool.aclose()

    asyncio.run(test())


def test_the_pool_holds_at_most_max_connections() -> None:
    release = asyncio.Event()
    held = held_until(release)

    async def test() -> None:
        pool = Http1Pool(max_connections=2)
        async with serving(held) as server, serving(ok) as other:
            first = [asyncio.create_task(post(pool, server)) for _ in range(2)]
            await until("two requests held", lambda: len(server.requests) == 2)
            with pytest.raises(TimeoutError):  # no place for a third connection in time
                await post(pool, server, timeout=0.3)
            third = asyncio.create_task(post(pool, other))  # another origin waits for a place too
            await until("the third request to wait", lambda: len(pool._waiting) == 1)
            assert not third.done()
            assert other.connections == 0
            release.set()
            assert [await (await t).read() for t in first] == [b"done", b"done"]
            # a released connection of the first origin is closed to make room for the other's
            assert await (await third).read() == b'{"echo": 2}'
            assert pool._open == 2
        await pool.aclose()

    asyncio.run(test())


def test_a_waiter_woken_as_it_gives_up_passes_the_wake_on() -> None:
    """A place freed for the first waiter, cancelled (or timed out) before it ran, goes to the next
    one; otherwise the next waits for its own timeout beside an idle connection."""
    release = asyncio.Event()
    held = held_until(release)

    async def test() -> None:
        pool = Http1Pool(max_connections=1)
        async with serving(held) as server:
            first = asyncio.create_task(post(pool, server))
            await until("the first request held", lambda: len(server.requests) == 1)
            gives_up = asyncio.create_task(post(pool, server))
            waits = asyncio.create_task(post(pool, server, timeout=5))
            await until("two requests waiting for a place", lambda: len(pool._waiting) == 2)
            release.set()
            assert await (await first).read() == b"done"  # its connection back: `gives_up` woken
            gives_up.cancel()  # before it ran
            assert await (await waits).read() == b"done"
            assert server.connections == 1
            with pytest.raises(asyncio.CancelledError):
                await gives_up
        await pool.aclose()

    asyncio.run(test())


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async def test() -> None:
        pool = Http1Pool()
        async with serving(ok) as server:
            for headers in ({"authorization": "Bearer sk-test\n"}, {"x\r\ninjected": "1"}):
                with pytest.raises(ValueError, match="line break"):
                    await pool.post(target_of(server.url), headers, b"{}", connect_timeout=1, read_timeout=1)
            assert server.connections == 0
        await pool.aclose()

    asyncio.run(test())


def test_tls_is_verified(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pair = pki.issue("upstream", "localhost", server=True, dns_names=["localhost"])
    serving_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving_tls.load_cert_chain(pair.cert, pair.key)
    trusting = ssl.create_default_context(cafile=str(pki.ca.cert))

    async def test() -> None:
        async with serving(ok, tls=serving_tls) as server:
            assert server.url.startswith("https://localhost:")
            pool = Http1Pool(tls=trusting)
            assert await (await post(pool, server)).read() == b'{"echo": 2}'
            await pool.aclose()
            system = Http1Pool()  # the system's CAs, which do not know ours
            with pytest.raises(HttpError, match="CERTIFICATE_VERIFY_FAILED"):
                await post(system, server)
            assert system._open == 0
            await system.aclose()

    asyncio.run(test())


def test_a_response_read_slower_than_it_comes_pauses_the_socket() -> None:
    size = 32 * 1024 * 1024

    async def big(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        writer.write(b"y" * size)
        await writer.drain()

    async def test() -> None:
        pool = Http1Pool()
        async with serving(big) as server:
            response = await post(pool, server)
            connection = response._connection
            assert connection is not None
            # not reading: the client stops reading its socket
            await until("the client to pause reading", lambda: connection.paused)
            writer = server.writers[0]
            assert writer.transport.get_write_buffer_size() > size // 2  # the rest waits at the server
            assert len(await response.read()) == size
        await pool.aclose()

    asyncio.run(test())


def test_bytes_no_request_asked_for_end_the_connection() -> None:
    async def chatty(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(b"one"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(answer(b"unasked"))

    async def at_once(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(b"one") + answer(b"unasked"))

    async def test() -> None:
        pool = Http1Pool()
        for handler in (chatty, at_once):
            async with serving(handler) as server:
                assert await (await post(pool, server)).read() == b"one"
                await until("the connection that carried unasked bytes to close", lambda: pool._open == 0)
                assert await (await post(pool, server)).read() == b"one"
                assert server.connections == 2
        await pool.aclose()

    asyncio.run(test())
