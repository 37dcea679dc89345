"""The runtime's audit trail: refusals, documents, tool calls and quota refusals each leave a record in
the tenant's chain, the chain verifies, and records written while PostgreSQL is down are all there
once it is back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import openai
import pytest
from runtime_support import CALCULATOR, Served, make_config, serve, tenant_name
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from test_runtime_usage import own_postgres, restart, stop

from agentplane_platform.api.v1alpha1 import ToolAudit
from agentplane_platform.audit import export, verify
from agentplane_platform.config import resolve_agent
from agentplane_platform.quotas import QuotaLimits
from agentplane_platform.specs import SpecSet
from agentplane_runtime import Settings
from agentplane_runtime.quotas import StaticLimits
from support.fake_llm import FakeLLM, reply, tool_calls
from support.services import Server
from support.waiting import wait_for_async

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]

__all__ = ["own_postgres"]  # a fixture of the outage test, shared with the usage tests

Record = dict[str, object]


def audited(settings: Settings, tenant: str, **update: object) -> Settings:
    """`settings` with an audit stream of this test's own (the Redis server is shared)."""
    return settings.model_copy(update={"audit_stream": f"audit:{tenant}", **update})


async def records(served: Served, tenant: str) -> list[Record]:
    def read(connection: Connection) -> list[Record]:
        return [json.loads(line) for line in export(connection, tenant)]

    async with served.runtime.engine.connect() as connection:
        return await connection.run_sync(read)


async def wait_for_records(served: Served, tenant: str, count: int, timeout: float = 20.0) -> list[Record]:
    """The tenant's audit records once there are `count` of them (the database may be restarting)."""

    async def enough() -> list[Record] | None:
        try:
            found = await records(served, tenant)
        except (DBAPIError, OSError):  # the database is not back yet
            return None
        return found if len(found) >= count else None

    return await wait_for_async(f"{count} audit records of {tenant}", enough, timeout, interval=0.05)


async def verified(served: Served, tenant: str) -> bool:
    async with served.runtime.engine.connect() as connection:
        (report,) = await connection.run_sync(lambda c: verify(c, tenant))
    assert report.problems == (), report.problems
    return report.ok


async def test_a_failed_authentication_and_a_denied_agent_are_audited(settings: Settings) -> None:
    tenant = tenant_name()
    async with serve(audited(settings, tenant), make_config(tenant)) as served:
        other_agent_key = await served.key(agents=["someone-else"], subject="carol")
        async with httpx.AsyncClient(base_url=served.base_url) as http:
            wrong = await http.get(
                "/models", headers={"Authorization": "Bearer ap_nope_nope", "X-Request-ID": "req-wrong"}
            )
            denied = await http.get(
                "/models",
                headers={"Authorization": f"Bearer {other_agent_key}", "X-Request-ID": "req-denied"},
            )
        assert (wrong.status_code, denied.status_code) == (401, 403)
        failed, refused = await wait_for_records(served, tenant, 2)
        assert await verified(served, tenant)
    assert failed["action"] == "auth.failed"
    assert failed["outcome"] == "failure"
    assert failed["request_id"] == "req-wrong"
    assert failed["source"] == "127.0.0.1"
    assert failed["actor_subject"] is None
    assert failed["agent"] == "helper"
    assert refused["action"] == "access.denied"
    assert refused["outcome"] == "denied"
    assert refused["actor_subject"] == "carol"
    assert refused["actor_key_id"] == other_agent_key.split("_")[1]
    assert refused["actor_auth"] == "api_key"
    assert refused["request_id"] == "req-denied"


async def test_tool_calls_are_audited_with_arguments_only_where_the_tool_opts_in(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    tenant = tenant_name()
    logged = {**CALCULATOR, "name": "logged-calculator", "function_name": "logged", "record_arguments": True}
    config = make_config(tenant, tools=[CALCULATOR, logged])
    async with serve(audited(settings, tenant), config) as served:
        key = await served.key(subject="dana")
        client = openai.AsyncOpenAI(api_key=key, base_url=served.base_url, max_retries=0)
        fake_llm.script(
            "gpt-4o-mini",
            [
                tool_calls(("calculator", {"expression": "6*7"}), ("logged", {"expression": "1+1"})),
                reply("42 and 2"),
            ],
        )
        answer = await client.chat.completions.with_raw_response.create(
            model="helper",
            messages=[{"role": "user", "content": "compute"}],
            extra_headers={"X-Request-ID": "req-tools"},
        )
        await client.close()
        found = await wait_for_records(served, tenant, 2)
        assert await verified(served, tenant)
    assert answer.status_code == 200
    by_tool = {r["target"]: r for r in found}
    assert set(by_tool) == {"tool:calculator", "tool:logged-calculator"}
    plain, kept = by_tool["tool:calculator"], by_tool["tool:logged-calculator"]
    for record in (plain, kept):
        assert record["action"] == "tool.called"
        assert record["outcome"] == "success"
        assert record["actor_subject"] == "dana"
        assert record["request_id"] == "req-tools"
        details = record["details"]
        assert isinstance(details, dict)
        assert details["result"] == "ok"
        assert isinstance(details["duration_ms"], float | int)
    assert "arguments" not in json.dumps(plain["details"])
    assert isinstance(kept["details"], dict)
    assert json.loads(str(kept["details"]["arguments"])) == {"expression": "1+1"}


async def test_quota_and_budget_refusals_are_audited(settings: Settings, fake_llm: FakeLLM) -> None:
    tenant = tenant_name()
    limits = StaticLimits(
        {tenant: QuotaLimits(tenant, tokens_per_minute=5, requests_per_minute=100, monthly_budget_usd=1.0)}
    )
    async with serve(audited(settings, tenant), make_config(tenant), limits=limits) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        with pytest.raises(openai.RateLimitError):  # needs more tokens than the tenant's minute allows
            await client.chat.completions.create(model="helper", messages=[{"role": "user", "content": "hi"}])
        redis = served.runtime.redis
        assert redis is not None
        spend_keys = await redis.keys(f"agentplane:quota:{tenant}:spend:*")
        assert len(spend_keys) == 1
        await redis.set(spend_keys[0], "1.5")  # over the budget
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="helper", messages=[{"role": "user", "content": "hi"}])
        await client.close()
        tokens, budget = await wait_for_records(served, tenant, 2)
        assert await verified(served, tenant)
    assert (tokens["action"], tokens["outcome"]) == ("quota.refused", "denied")
    assert isinstance(tokens["details"], dict)
    assert tokens["details"]["limit"] == "tokens_per_minute"
    assert (budget["action"], budget["outcome"]) == ("budget.refused", "denied")
    assert isinstance(budget["details"], dict)
    assert budget["details"]["limit"] == "monthly_budget_usd"


async def test_documents_uploaded_shared_and_deleted_are_audited(settings: Settings) -> None:
    tenant = tenant_name()
    config = make_config(tenant, knowledge=["docs"])
    async with serve(audited(settings, tenant, ensure_collections=True), config) as served:
        owner = await served.key(subject="erin")
        stranger = await served.key(subject="frank")
        async with httpx.AsyncClient(base_url=served.base_url) as http:
            uploaded = await http.post(
                "/knowledge/docs/documents",
                files={"file": ("notes.md", b"# Notes\n\nThe launch is on Tuesday.", "text/markdown")},
                data={"visibility": "shared", "shared_with": ["grace", "team-a"], "doc_id": "notes"},
                headers={"Authorization": f"Bearer {owner}", "X-Request-ID": "req-upload"},
            )
            assert uploaded.status_code == 201, uploaded.text
            refused = await http.delete(
                "/knowledge/docs/documents/notes", headers={"Authorization": f"Bearer {stranger}"}
            )
            deleted = await http.delete(
                "/knowledge/docs/documents/notes", headers={"Authorization": f"Bearer {owner}"}
            )
        assert (refused.status_code, deleted.status_code) == (404, 204)  # a stranger does not see it
        found = await wait_for_records(served, tenant, 3)
        assert await verified(served, tenant)
    assert [(r["action"], r["outcome"], r["actor_subject"]) for r in found] == [
        ("document.uploaded", "success", "erin"),
        ("document.shared", "success", "erin"),
        ("document.deleted", "success", "erin"),
    ]
    assert {r["target"] for r in found} == {"document:docs/notes"}
    assert found[0]["request_id"] == "req-upload"
    shared = found[1]["details"]
    assert isinstance(shared, dict)
    assert shared["shared_with"] == ["grace", "team-a"]


async def test_an_upload_refused_by_the_rules_is_audited(settings: Settings) -> None:
    tenant = tenant_name()
    config = make_config(tenant, knowledge=["docs"])
    async with serve(audited(settings, tenant, ensure_collections=True), config) as served:
        user = await served.key(subject="henry")
        async with httpx.AsyncClient(base_url=served.base_url) as http:
            refused = await http.post(
                "/knowledge/docs/documents",
                files={"file": ("all.md", b"# For everyone", "text/markdown")},
                data={"visibility": "org"},
                headers={"Authorization": f"Bearer {user}"},
            )
        assert refused.status_code == 403
        (record,) = await wait_for_records(served, tenant, 1)
    assert (record["action"], record["outcome"], record["actor_subject"]) == (
        "access.denied",
        "denied",
        "henry",
    )


async def test_no_audit_record_is_lost_while_postgres_is_down(
    own_postgres: Server, settings: Settings, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    tenant = tenant_name()
    local = audited(settings, tenant, database_url=own_postgres.url, usage_stream=f"usage:{tenant}")
    async with serve(local, make_config(tenant, tools=[CALCULATOR])) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        calculate = tool_calls(("calculator", {"expression": "2+2"}))
        fake_llm.script("gpt-4o-mini", [calculate, reply("4")])
        await client.chat.completions.create(model="helper", messages=[{"role": "user", "content": "2+2?"}])
        assert len(await wait_for_records(served, tenant, 1)) == 1
        await asyncio.to_thread(stop, own_postgres)
        # the database is down: the key was verified before, so chats and their tool calls go on
        fake_llm.script("gpt-4o-mini", [calculate, reply("4")] * 5)
        for _ in range(5):
            await client.chat.completions.create(
                model="helper", messages=[{"role": "user", "content": "2+2?"}]
            )
        async with httpx.AsyncClient(base_url=served.base_url) as http:
            for _ in range(3):
                wrong = await http.get("/models", headers={"Authorization": "Bearer not-a-key"})
                assert wrong.status_code == 401
        redis = served.runtime.redis
        assert redis is not None
        stream = f"audit:{tenant}"
        deadline = asyncio.get_running_loop().time() + 10
        while await redis.xlen(stream) < 8 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # the writer leaves the events in the stream as it fails
        assert await redis.xlen(stream) == 8
        await asyncio.to_thread(restart, own_postgres, tmp_path / "postgres-restart.log")
        found = await wait_for_records(served, tenant, 9, timeout=30)
        assert await verified(served, tenant)
        assert await redis.xlen(stream) == 0
        await client.close()
    assert len(found) == 9
    assert [r["action"] for r in found].count("tool.called") == 6
    assert [r["action"] for r in found].count("auth.failed") == 3
    assert [r["seq"] for r in found] == list(range(1, 10))


async def test_agentplane_up_records_in_memory_then_sqlite(local_settings: Settings) -> None:
    """Embedded stores (`agentplane up`): the in-process buffer and SQLite keep the same chain."""
    tenant = tenant_name()
    async with serve(local_settings, make_config(tenant)) as served:
        assert served.runtime.redis is None
        async with httpx.AsyncClient(base_url=served.base_url) as http:
            wrong = await http.get("/models", headers={"Authorization": "Bearer ap_nope_nope"})
        assert wrong.status_code == 401
        (record,) = await wait_for_records(served, tenant, 1)
        assert await verified(served, tenant)
    assert record["action"] == "auth.failed"


async def test_a_tool_opts_in_to_recorded_arguments_through_its_spec(specs: SpecSet) -> None:
    agent = specs.agents[("tenant-acme", "support-bot")].resource
    tenant = specs.tenants["acme"].resource
    prompts, tools = specs.prompts_in("tenant-acme"), specs.tools_in("tenant-acme")
    config = resolve_agent(agent, tenant, prompts, tools)
    assert not any(tool.record_arguments for tool in config.tools)  # off unless the Tool says so
    declared = tools["product-docs"]
    opted = declared.model_copy(
        update={
            "spec": declared.spec.model_copy(
                update={"audit": ToolAudit.model_validate({"recordArguments": True})}
            )
        }
    )
    config = resolve_agent(agent, tenant, prompts, {**tools, "product-docs": opted})
    assert {tool.name: tool.record_arguments for tool in config.tools} == {
        "order-lookup": False,
        "product-docs": True,
    }
