"""The reports API: `GET /v1/usage` (its sums are the usage table's; a user sees only their own key,
never another tenant; a tenant admin the tenant), `GET /v1/budget`, `GET /v1/audit` (tenant admins
only; JSON or the export lines), strict query parameters, and the budget left on chat responses."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import openai
import pytest
from runtime_support import Served, make_config, serve, tenant_name
from sqlalchemy import func, insert, select
from test_runtime_usage import wait_for_rows

from agentplane_platform.audit import GENESIS
from agentplane_platform.db import TenantQuota, UsageRecord
from agentplane_platform.quotas import QuotaLimits
from agentplane_runtime import Settings
from agentplane_runtime.quotas import StaticLimits
from support.fake_llm import FakeLLM, reply

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]

Document = dict[str, object]


def own_streams(settings: Settings, tenant: str) -> Settings:
    return settings.model_copy(update={"audit_stream": f"audit:{tenant}", "usage_stream": f"usage:{tenant}"})


async def get(served: Served, key: str, path: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=served.base_url) as http:
        return await http.get(path, params=params, headers={"Authorization": f"Bearer {key}"})


async def chat(served: Served, key: str, times: int) -> None:
    client = openai.AsyncOpenAI(api_key=key, base_url=served.base_url, max_retries=0)
    for _ in range(times):
        await client.chat.completions.create(model="helper", messages=[{"role": "user", "content": "hi"}])
    await client.close()


async def table_totals(served: Served, tenant: str, key_id: str | None = None) -> tuple[int, int, int, float]:
    conditions = [UsageRecord.tenant == tenant]
    if key_id is not None:
        conditions.append(UsageRecord.api_key_id == key_id)
    async with served.runtime.engine.connect() as connection:
        row = (
            await connection.execute(
                select(
                    func.count(),
                    func.sum(UsageRecord.prompt_tokens),
                    func.sum(UsageRecord.completion_tokens),
                    func.sum(UsageRecord.cost_usd),
                ).where(*conditions)
            )
        ).one()
    return int(row[0]), int(row[1] or 0), int(row[2] or 0), float(row[3] or 0.0)


def totals(document: Document) -> tuple[int, int, int, float]:
    total = document["total"]
    assert isinstance(total, dict)
    return total["requests"], total["prompt_tokens"], total["completion_tokens"], total["cost_usd"]


async def test_usage_sums_are_the_tables_and_each_caller_sees_only_what_is_theirs(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    tenant, other = tenant_name(), tenant_name()
    async with serve(own_streams(settings, tenant), make_config(tenant)) as served:
        alice = await served.key(subject="alice")
        bob = await served.key(subject="bob")
        admin = await served.key(subject="root", roles=["admin"])
        outsider = await served.key(tenant=other, subject="mallory", roles=["admin"])
        fake_llm.script("gpt-4o-mini", [reply("ok", prompt_tokens=100, completion_tokens=10)] * 6)
        await chat(served, alice, 3)
        await chat(served, bob, 2)
        await chat(served, admin, 1)
        await wait_for_rows(served, tenant, 6)
        async with served.runtime.engine.begin() as connection:  # another tenant's usage, same table
            await connection.execute(
                insert(UsageRecord),
                [
                    {
                        "id": uuid.uuid4().hex,
                        "request_id": "elsewhere",
                        "tenant": other,
                        "agent": "helper",
                        "api_key_id": outsider.split("_")[1],
                        "subject": "mallory",
                        "model": "openai/gpt-4o-mini",
                        "prompt_tokens": 5000,
                        "completion_tokens": 500,
                        "cost_usd": 3.0,
                        "latency_ms": 1.0,
                        "status": "ok",
                        "http_status": 200,
                        "stream": False,
                        "tool_calls": 0,
                        "llm_calls": 1,
                        "created_at": datetime.now(UTC),
                    }
                ],
            )

        whole = await get(served, admin, "/usage", group_by="key,model")
        assert whole.status_code == 200, whole.text
        everything: Document = whole.json()
        assert everything["scope"] == "tenant"
        assert everything["tenant"] == tenant
        assert totals(everything) == pytest.approx(await table_totals(served, tenant))
        rows = everything["rows"]
        assert isinstance(rows, list)
        assert {row["key"]: row["requests"] for row in rows} == {
            alice.split("_")[1]: 3,
            bob.split("_")[1]: 2,
            admin.split("_")[1]: 1,
        }

        own = (await get(served, alice, "/usage", group_by="key")).json()
        assert own["scope"] == "key"
        assert totals(own) == pytest.approx(await table_totals(served, tenant, alice.split("_")[1]))
        assert [row["key"] for row in own["rows"]] == [alice.split("_")[1]]

        # the tenant is the agent's: a query cannot name another, and another tenant's key is refused
        named = await get(served, alice, "/usage", tenant=other)
        assert named.status_code == 400
        assert named.json()["error"]["param"] == "tenant"
        assert (await get(served, outsider, "/usage")).status_code == 403


async def test_bad_query_values_are_400s_naming_the_parameter(settings: Settings) -> None:
    tenant = tenant_name()
    async with serve(own_streams(settings, tenant), make_config(tenant)) as served:
        admin = await served.key(roles=["admin"])
        cases = [
            ("/usage", {"group_by": "tenant"}, "group_by"),
            ("/usage", {"from": "yesterday"}, "from"),
            ("/usage", {"from": "2026-12-02", "to": "2026-12-01"}, "to"),
            ("/usage", {"page": "2"}, "page"),
            ("/budget", {"month": "2026-11"}, "month"),
            ("/audit", {"limit": "0"}, "limit"),
            ("/audit", {"limit": "many"}, "limit"),
            ("/audit", {"action": "key.stolen"}, "action"),
            ("/audit", {"format": "xml"}, "format"),
        ]
        for path, params, param in cases:
            answer = await get(served, admin, path, **params)
            assert answer.status_code == 400, (path, params, answer.text)
            error = answer.json()["error"]
            assert error["param"] == param, (path, params, error)
            assert error["request_id"] == answer.headers["x-request-id"]


async def test_the_audit_trail_is_for_tenant_admins_as_json_or_export_lines(settings: Settings) -> None:
    tenant = tenant_name()
    async with serve(own_streams(settings, tenant), make_config(tenant)) as served:
        user = await served.key(subject="ivan")
        admin = await served.key(subject="judy", roles=["admin"])
        refused = await get(served, user, "/audit")
        assert refused.status_code == 403
        assert refused.json()["error"]["type"] == "permission_error"
        assert refused.json()["error"]["request_id"]
        async with httpx.AsyncClient(base_url=served.base_url) as http:
            for _ in range(2):
                await http.get("/models", headers={"Authorization": "Bearer wrong"})
        await served.runtime.audit.flush()
        page = await get(served, admin, "/audit", action="auth.failed,access.denied", limit="2")
        assert page.status_code == 200, page.text
        listed = page.json()
        assert [r["action"] for r in listed["data"]] == ["access.denied", "auth.failed"], listed
        assert listed["has_more"] is True
        assert listed["data"][0]["actor_subject"] == "ivan"
        lines = await get(served, admin, "/audit", format="jsonl")
        assert lines.headers["content-type"].startswith("application/x-ndjson")
        exported = [json.loads(line) for line in lines.text.splitlines()]
        assert [r["action"] for r in exported] == ["access.denied", "auth.failed", "auth.failed"]
        previous = GENESIS
        for record in exported:  # a SIEM can follow the chain
            assert record["prev_hash"] == previous
            previous = record["hash"]


async def test_budget_report_and_the_budget_left_on_chat_responses(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    tenant, unbudgeted = tenant_name(), tenant_name()
    limits = StaticLimits(
        {
            tenant: QuotaLimits(
                tenant, tokens_per_minute=100_000, requests_per_minute=100, monthly_budget_usd=10
            ),
            unbudgeted: QuotaLimits(
                unbudgeted, tokens_per_minute=100_000, requests_per_minute=100, monthly_budget_usd=0
            ),
        }
    )
    async with serve(own_streams(settings, tenant), make_config(tenant), limits=limits) as served:
        key = await served.key()
        async with served.runtime.engine.begin() as connection:
            await connection.execute(
                insert(TenantQuota).values(
                    tenant=tenant, tokens_per_minute=100_000, requests_per_minute=100, monthly_budget_usd=10
                )
            )
        client = openai.AsyncOpenAI(api_key=key, base_url=served.base_url, max_retries=0)
        fake_llm.script("gpt-4o-mini", [reply("ok", prompt_tokens=1000, completion_tokens=100)] * 2)
        first = await client.chat.completions.with_raw_response.create(
            model="helper", messages=[{"role": "user", "content": "hi"}]
        )
        redis = served.runtime.redis
        assert redis is not None
        await served.runtime.chat.quota.flush()  # the first's settlement (it waits for a round trip)
        (spend_key,) = await redis.keys(f"agentplane:quota:{tenant}:spend:*")
        await redis.set(spend_key, "2.5")
        second = await client.chat.completions.with_raw_response.create(
            model="helper", messages=[{"role": "user", "content": "hi"}]
        )
        await client.close()
        cost = 1000 * 0.15e-6 + 100 * 0.6e-6  # gpt-4o-mini in litellm's cost map
        assert float(first.headers["x-budget-remaining-usd"]) == pytest.approx(10 - cost, abs=1e-6)
        assert float(second.headers["x-budget-remaining-usd"]) == pytest.approx(10 - 2.5 - cost, abs=1e-6)

        await wait_for_rows(served, tenant, 2)
        status = (await get(served, key, "/budget")).json()
        assert status["tenant"] == tenant
        assert status["limit_usd"] == 10
        assert status["spend_usd"] == pytest.approx(2 * cost)
        assert status["remaining_usd"] == pytest.approx(10 - 2 * cost)
        assert status["share_used"] == pytest.approx(2 * cost / 10)

    async with serve(own_streams(settings, unbudgeted), make_config(unbudgeted), limits=limits) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        fake_llm.script("gpt-4o-mini", [reply("ok")])
        free = await client.chat.completions.with_raw_response.create(
            model="helper", messages=[{"role": "user", "content": "hi"}]
        )
        await client.close()
    assert "x-ratelimit-remaining-requests" in free.headers  # the quota applies, with no budget
    assert "x-budget-remaining-usd" not in free.headers
