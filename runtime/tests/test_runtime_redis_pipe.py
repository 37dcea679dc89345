"""`RedisPipe`, the connection of a chat request's own Redis round trip, on real Redis servers: replies
in order under many round trips at once, error replies in place, a lost or silent connection failing
what is in flight and then connecting again, and the URL's credentials, database, TLS and socket."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import uvloop
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ConnectionError, NoScriptError, ResponseError, TimeoutError

from agentplane_runtime.redis_pipe import RedisPipe
from support.services import Server, start_redis
from support.waiting import wait_for_async

pytestmark = [pytest.mark.redis]


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_redis(tmp_path_factory.mktemp("redis-tls"), tls=True)
    yield server
    server.stop()


@pytest_asyncio.fixture
async def redis(redis_server: Server) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def key() -> str:
    return f"pipe-{secrets.token_hex(6)}"


@pytest.mark.asyncio
async def test_round_trips_at_once_each_get_their_own_replies_in_order(redis: Redis) -> None:
    pipe = RedisPipe(redis)
    try:
        keys = [key() for _ in range(300)]
        replies = await asyncio.gather(
            *[pipe.execute([("SET", k, i), ("INCRBY", k, 1000), ("GET", k)]) for i, k in enumerate(keys)]
        )
        assert replies == [[b"OK", 1000 + i, str(1000 + i).encode()] for i in range(len(keys))]
        assert int(await redis.get(keys[7]) or 0) == 1007
    finally:
        await pipe.aclose()


def test_round_trips_on_uvloop(redis_server: Server) -> None:
    """The runtime's loop is uvloop's, whose transports are not asyncio's classes: round trips sent
    at once, while the connection is made, and after it, all answered."""

    async def at_once() -> list[list[object]]:
        client = Redis.from_url(redis_server.url)
        pipe = RedisPipe(client)
        try:
            at_once = await asyncio.gather(*[pipe.execute([("PING",)]) for _ in range(50)])
            return [*at_once, await pipe.execute([("PING",)])]
        finally:
            await pipe.aclose()
            await client.aclose()

    assert uvloop.run(at_once()) == [[b"PONG"]] * 51


@pytest.mark.asyncio
async def test_an_argument_redis_cannot_take_is_refused_before_anything_is_sent(redis: Redis) -> None:
    pipe = RedisPipe(redis)
    k = key()
    try:
        for wrong in (None, True):
            with pytest.raises(TypeError, match="is not a Redis argument"):
                await pipe.execute([("SET", k, "sent"), ("SET", k, wrong)])  # type: ignore[list-item]
        assert await redis.get(k) is None
        assert await pipe.execute([("SET", k, 1.5), ("GET", k)]) == [b"OK", b"1.5"]
    finally:
        await pipe.aclose()


@pytest.mark.asyncio
async def test_an_error_reply_is_returned_in_its_place(redis: Redis) -> None:
    pipe = RedisPipe(redis)
    try:
        k = key()
        unknown = "0" * 40
        set_, wrong, script, got = await pipe.execute(
            [("SET", k, "text"), ("INCR", k), ("EVALSHA", unknown, 0), ("GET", k)]
        )
        assert (set_, got) == (b"OK", b"text")
        assert isinstance(wrong, ResponseError)
        assert "not an integer" in str(wrong)
        assert isinstance(script, NoScriptError)
        # the connection is still good
        assert await pipe.execute([("PING",)]) == [b"PONG"]
    finally:
        await pipe.aclose()


@pytest.mark.asyncio
async def test_a_lost_connection_fails_what_is_in_flight_and_the_next_round_trip_connects_again(
    redis: Redis,
) -> None:
    pipe = RedisPipe(redis)
    try:
        (client_id,) = await pipe.execute([("CLIENT", "ID")])
        waiting = asyncio.ensure_future(pipe.execute([("BLPOP", key(), 30)]))  # blocks: in flight

        async def blocked() -> bool:
            return any(int(c["id"]) == client_id and c["cmd"] == "blpop" for c in await redis.client_list())

        await wait_for_async("the round trip to be in flight", blocked, 10)
        assert await redis.client_kill_filter(_id=client_id) == 1
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(waiting, 10)  # a deadline against a hang, not a measure
        (other_id,) = await pipe.execute([("CLIENT", "ID")])
        assert other_id != client_id
    finally:
        await pipe.aclose()


@pytest.mark.asyncio
async def test_a_connection_idle_for_the_health_check_interval_is_replaced(
    redis: Redis, redis_server: Server
) -> None:
    """A load balancer may drop an idle connection without a word: one idle for the client's
    health-check interval is closed and a new one made before the next round trip."""
    checked = Redis.from_url(redis_server.url, health_check_interval=0.5)
    pipe = RedisPipe(checked)
    try:
        (first,) = await pipe.execute([("CLIENT", "ID")])
        assert await pipe.execute([("CLIENT", "ID")]) == [first]  # busy: the same connection
        await asyncio.sleep(0.7)
        (second,) = await pipe.execute([("CLIENT", "ID")])
        assert second != first

        async def closed() -> bool:  # the idle one
            return first not in {int(c["id"]) for c in await redis.client_list()}

        await wait_for_async("the idle connection to close", closed, 10)
    finally:
        await pipe.aclose()
        await checked.aclose()


@pytest.mark.asyncio
async def test_no_reply_in_the_socket_timeout_fails_the_round_trip(redis_server: Server) -> None:
    impatient = Redis.from_url(redis_server.url, socket_timeout=0.3)
    pipe = RedisPipe(impatient)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pipe.execute([("BLPOP", key(), 5)]), 10)
        # its replies can no longer be told apart: the connection went, the next one is new
        assert await pipe.execute([("PING",)]) == [b"PONG"]
    finally:
        await pipe.aclose()
        await impatient.aclose()


@pytest.mark.asyncio
async def test_the_urls_user_password_and_database_are_used(redis: Redis, redis_server: Server) -> None:
    user, password = key(), secrets.token_hex(8)
    await redis.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    host_port = redis_server.url.removeprefix("redis://").split("/")[0]
    pipe = RedisPipe(Redis.from_url(f"redis://{user}:{password}@{host_port}/5"))
    wrong = RedisPipe(Redis.from_url(f"redis://{user}:not-{password}@{host_port}/5"))
    in_5 = Redis.from_url(f"redis://{host_port}/5")
    try:
        k = key()
        assert await pipe.execute([("SET", k, "five"), ("ACL", "WHOAMI")]) == [b"OK", user.encode()]
        assert await in_5.get(k) == b"five"
        assert await redis.get(k) is None  # database 0
        with pytest.raises(AuthenticationError):
            await wrong.execute([("PING",)])
    finally:
        await pipe.aclose()
        await wrong.aclose()
        await in_5.aclose()
        await redis.acl_deluser(user)


@pytest.mark.asyncio
async def test_tls_is_verified_as_redis_py_verifies_it(tls_redis: Server) -> None:
    trusted = Redis.from_url(tls_redis.url)
    untrusted = Redis.from_url(tls_redis.url.split("?")[0])  # the system's CAs, which do not know ours
    pipe, refused = RedisPipe(trusted), RedisPipe(untrusted)
    try:
        assert await pipe.execute([("PING",)]) == [b"PONG"]
        assert await trusted.ping()  # redis-py agrees on both
        with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await refused.execute([("PING",)])
        with pytest.raises(ConnectionError):
            await untrusted.ping()
    finally:
        for closing in (pipe, refused):
            await closing.aclose()
        for client in (trusted, untrusted):
            await client.aclose()


@pytest.mark.asyncio
async def test_a_unix_socket(tls_redis: Server) -> None:
    socket = Path(tls_redis.directory) / "redis.sock"
    client = Redis.from_url(f"unix://{socket}?db=2")
    pipe = RedisPipe(client)
    try:
        k = key()
        assert await pipe.execute([("SET", k, "two")]) == [b"OK"]
        assert await client.get(k) == b"two"
    finally:
        await pipe.aclose()
        await client.aclose()
