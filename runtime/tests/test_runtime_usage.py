"""Usage metering: one row per request in PostgreSQL, and none lost while PostgreSQL restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from runtime_support import (
    MINUTE,
    Served,
    counters,
    limit,
    make_config,
    parse_metrics,
    scrape,
    serve,
    tenant_name,
    total,
)
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from agentplane_platform.db import UsageRecord
from agentplane_runtime import Settings
from agentplane_runtime.quotas import RedisQuotaBackend
from support.fake_llm import FakeLLM, error, reply, stream_error
from support.service_fixtures import unavailable
from support.services import Server, ServiceUnavailable, start_postgres, wait_port
from support.waiting import wait_for_async

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]


async def rows(served: Served, tenant: str) -> list[UsageRecord]:
    async with served.runtime.engine.connect() as connection:
        result = await connection.execute(select(UsageRecord.__table__).where(UsageRecord.tenant == tenant))
        return [UsageRecord(**dict(r)) for r in result.mappings()]


async def wait_for_rows(served: Served, tenant: str, count: int, timeout: float = 20.0) -> list[UsageRecord]:
    """The tenant's usage rows once there are `count` of them (the database may be restarting)."""

    async def enough() -> list[UsageRecord] | None:
        try:
            found = await rows(served, tenant)
        except (DBAPIError, OSError):  # the database is not back yet
            return None
        return found if len(found) >= count else None

    return await wait_for_async(f"{count} usage rows of {tenant}", enough, timeout, interval=0.1)


async def test_every_request_writes_one_usage_row(settings: Settings, fake_llm: FakeLLM) -> None:
    tenant = tenant_name()
    config = make_config(tenant, model="openai/broken-model", fallbacks=["openai/gpt-4o-mini"])
    async with serve(settings, config) as served:
        key = await served.key()
        client = openai.AsyncOpenAI(api_key=key, base_url=served.base_url, max_retries=0)
        fake_llm.script("broken-model", [error(500)] * 2)
        fake_llm.script("gpt-4o-mini", [reply("plain answer", prompt_tokens=100, completion_tokens=20)])
        await client.chat.completions.create(model="helper", messages=[{"role": "user", "content": "a"}])
        fake_llm.script("broken-model", [reply("streamed answer", prompt_tokens=50, completion_tokens=2)])
        stream = await client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "b"}], stream=True
        )
        async for _ in stream:
            pass
        async with httpx.AsyncClient() as http:
            bad = await http.post(
                f"{served.base_url}/chat/completions",
                json={"messages": [{"role": "user", "content": "c"}], "tools": [{"type": "function"}]},
                headers={"Authorization": f"Bearer {key}", "X-Request-ID": "bad-one"},
            )
        assert bad.status_code == 400
        found = sorted(await wait_for_rows(served, tenant, 3), key=lambda r: r.created_at)
        await client.close()
    assert [(r.status, r.http_status, r.stream) for r in found] == [
        ("ok", 200, False),
        ("ok", 200, True),
        ("error", 400, False),
    ]
    plain, streamed, refused = found
    assert plain.model == "openai/gpt-4o-mini"  # the fallback that answered
    assert (plain.prompt_tokens, plain.completion_tokens) == (100, 20)
    assert plain.cost_usd == pytest.approx(100 * 0.15e-6 + 20 * 0.6e-6)  # gpt-4o-mini in litellm's cost map
    assert plain.api_key_id == key.split("_")[1]
    assert plain.ttft_ms is None
    assert streamed.model == "openai/broken-model"
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (50, 2)
    assert streamed.ttft_ms is not None
    assert streamed.ttft_ms <= streamed.latency_ms
    assert refused.request_id == "bad-one"
    assert refused.prompt_tokens == 0
    assert all(r.tenant == tenant and r.agent == "helper" for r in found)


async def test_a_plain_answer_is_sent_before_its_settlement_which_the_next_request_carries(
    settings: Settings, fake_llm: FakeLLM, redis_server: Server
) -> None:
    """The caller has the answer while its quota settlement (carrying the usage record) still waits
    for a Redis round trip; the next request's quota check carries it, ahead of that check, and the
    runtime's shutdown sends the last one."""
    tenant = tenant_name()
    await limit(redis_server, tenant)
    async with serve(settings, make_config(tenant)) as served:
        gate = served.runtime.chat.quota
        gate.clock = lambda: MINUTE
        backend = gate.backend
        assert isinstance(backend, RedisQuotaBackend)
        backend.settle_delay = 3600.0  # only a request (or the shutdown) sends a settlement
        fake_llm.script(
            "gpt-4o-mini",
            [
                reply("settled later", prompt_tokens=30, completion_tokens=5),
                reply("again", prompt_tokens=30, completion_tokens=5),
            ],
        )
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
        # a deadline against a hang, not a measure
        answer = await asyncio.wait_for(client.chat.completions.create(model="helper", messages=messages), 30)
        assert answer.choices[0].message.content == "settled later"
        reserved, _ = await counters(redis_server, tenant)
        assert reserved > 35  # the reservation (prompt and max_tokens) still counts, not what was used
        assert await rows(served, tenant) == []
        again = await asyncio.wait_for(client.chat.completions.create(model="helper", messages=messages), 30)
        await client.close()
        assert again.choices[0].message.content == "again"
        (row,) = await wait_for_rows(served, tenant, 1)  # the first's record came with the second's check
        assert (row.status, row.prompt_tokens, row.completion_tokens) == ("ok", 30, 5)
        assert (await counters(redis_server, tenant))[0] == 35 + reserved  # settled; the second reserved
        await served.runtime.chat.aclose()
        assert (await counters(redis_server, tenant))[0] == 70
        assert len(await wait_for_rows(served, tenant, 2)) == 2


@pytest.fixture
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A PostgreSQL server of this test only (it gets stopped and restarted)."""
    try:
        server = start_postgres(tmp_path_factory.mktemp("pg-restart"))
    except (ServiceUnavailable, OSError) as exc:
        unavailable("postgresql", str(exc))
        raise AssertionError("unreachable") from exc
    yield server
    server.stop()


def stop(server: Server) -> None:
    """Fast shutdown of the whole process group (postgres runs under `runuser` as root)."""
    os.killpg(server.process.pid, signal.SIGINT)
    server.process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any((p / "postmaster.pid").exists() for p in server.directory.glob("data")):
        if time.monotonic() > deadline:
            raise AssertionError("postgres did not stop")
        time.sleep(0.05)


def restart(server: Server, log: Path) -> None:
    """Start the same server again: same data directory, same port."""
    with log.open("ab") as out:
        server.process = subprocess.Popen(
            server.process.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    wait_port(server.port, server.process, log)


async def test_no_usage_record_is_lost_across_a_postgres_restart(
    own_postgres: Server, settings: Settings, tmp_path: Path
) -> None:
    tenant = tenant_name()
    config = make_config(tenant)
    local = settings.model_copy(update={"database_url": own_postgres.url, "usage_stream": f"usage:{tenant}"})
    async with serve(local, config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        ask: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
        await client.chat.completions.create(model="helper", messages=ask)
        assert len(await wait_for_rows(served, tenant, 1)) == 1
        await asyncio.to_thread(stop, own_postgres)
        # the database is down: requests are still served (the key was verified before) and metered
        for _ in range(10):
            await client.chat.completions.create(model="helper", messages=ask)
        stream = await client.chat.completions.create(model="helper", messages=ask, stream=True)
        async for _ in stream:
            pass
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"{served.url}/healthz/ready")
        assert ready.status_code == 200  # a database outage is absorbed, the pod stays in service
        assert ready.json()["checks"]["database"] == "unreachable"
        redis = served.runtime.redis
        assert redis is not None
        deadline = asyncio.get_running_loop().time() + 10
        while await redis.xlen(f"usage:{tenant}") < 11 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # the flusher parks records in the stream as it fails
        assert await redis.xlen(f"usage:{tenant}") == 11
        await asyncio.to_thread(restart, own_postgres, tmp_path / "postgres-restart.log")
        found = await wait_for_rows(served, tenant, 12, timeout=30)
        assert len(found) == 12
        assert len({r.id for r in found}) == 12
        assert await redis.xlen(f"usage:{tenant}") == 0
        async with served.runtime.engine.connect() as connection:
            count = await connection.scalar(select(func.count()).select_from(UsageRecord))
        assert count == 12
        await client.close()


async def test_a_client_gone_mid_stream_is_recorded_and_its_call_ended(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    """The answer is cut where the client left: its row says cancelled (499), the call it was reading
    is counted as ended by the client, and the next request is served."""
    tenant = tenant_name()
    async with serve(settings, make_config(tenant)) as served:
        key = await served.key()
        fake_llm.chunk_delay_ms = 100
        fake_llm.script("gpt-4o-mini", [reply(" ".join(["word"] * 50))])  # 5 s of stream
        async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as http:
            request = {"model": "helper", "messages": [{"role": "user", "content": "talk"}], "stream": True}
            async with http.stream(
                "POST", "/chat/completions", json=request, headers={"Authorization": f"Bearer {key}"}
            ) as response:
                lines = response.aiter_lines()
                while '"content":"word"' not in await anext(lines):
                    pass
            # the client is gone after the first word
            (row,) = await wait_for_rows(served, tenant, 1)
            assert (row.status, row.http_status, row.error_type) == ("cancelled", 499, "client_closed")
            samples = parse_metrics(await scrape(served.url))
            ended = total(
                samples,
                "gen_ai_client_operation_duration_seconds_count",
                tenant=tenant,
                gen_ai_request_model="openai/gpt-4o-mini",
                error_type="client_closed",
            )
            assert ended == 1
            fake_llm.chunk_delay_ms = 0
            fake_llm.script("gpt-4o-mini", [reply("still here")])
            again = await http.post(
                "/chat/completions",
                json={**request, "stream": False},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert again.json()["choices"][0]["message"]["content"] == "still here"


async def test_a_provider_failing_mid_stream_ends_the_stream_with_an_error(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    """What was said is delivered, then an OpenAI-shaped error event; the row says how it ended."""
    tenant = tenant_name()
    async with serve(settings, make_config(tenant)) as served:
        key = await served.key()
        fake_llm.script("gpt-4o-mini", [stream_error("half an answer")])
        async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as http:
            request = {"model": "helper", "messages": [{"role": "user", "content": "talk"}], "stream": True}
            response = await http.post(
                "/chat/completions", json=request, headers={"Authorization": f"Bearer {key}"}
            )
        events = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data: {")]
        said = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
        assert said == "half an answer"
        assert events[-1]["error"]["type"] == "upstream_error"
        assert "[DONE]" not in response.text
        (row,) = await wait_for_rows(served, tenant, 1)
        assert (row.status, row.http_status, row.error_type) == ("error", 502, "stream_error")
