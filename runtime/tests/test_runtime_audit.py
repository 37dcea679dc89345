"""The runtime's audit trail: refusals, documents, tool calls and quota refusals each leave a record in
the tenant's chain, the chain verifies, and records written while PostgreSQL is down are all there
once it is back."""

from __future__ import annotations

import json

import httpx
import pytest
from runtime_support import Served, make_config, serve, tenant_name
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from agentplane_platform.audit import export, verify
from agentplane_runtime import Settings
from support.waiting import wait_for_async

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]

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
