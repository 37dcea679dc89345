"""The keys API (`/v1/keys`) on real PostgreSQL and Redis, with the OpenAI SDK for the chats: tenant
admins create, list, revoke and rotate the tenant's keys; nobody else reaches it; another tenant's
key is not found; a revoked key stops within the key cache interval; a rotated key works for the
overlap, then stops; per-key limits set over the API hold; `agentplane keys rotate` does the same;
each create, revoke and rotate, and each refusal, is in the tenant's audit trail."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest
from runtime_support import Served, free_port, make_config, serve, tenant_name
from sqlalchemy import Connection
from test_runtime_auth import Issuer

from agentplane_platform.audit import export, verify
from agentplane_platform.cli import run
from agentplane_platform.db import create_engine
from agentplane_platform.keys import create_api_key, get_api_key, list_api_keys, split_key
from agentplane_runtime import Settings
from agentplane_runtime.api.routes.keys import grantable_roles
from agentplane_runtime.auth import Principal
from support.fake_llm import FakeLLM
from support.waiting import wait_for_async

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]

CACHE_SECONDS = 1.0
"""The runtime's key cache in these tests: how long a revoked or expired key may still be taken."""
MARGIN_SECONDS = 10.0
"""What a busy test machine may add to the cache interval before a stop shows."""
MINUTE = 1_767_225_600.0
"""The first second of a minute: where the per-key limit test puts the quota gate's clock."""


def cached(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_key_cache_seconds": CACHE_SECONDS})


async def call(
    served: Served, token: str | None, method: str, path: str, body: object = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(base_url=served.base_url) as http:
        if body is None:
            return await http.request(method, path, headers=headers)
        return await http.request(method, path, headers=headers, json=body)


async def chats(served: Served, key: str) -> bool:
    """Whether the key gets an answer through the OpenAI SDK (False: refused as invalid)."""
    client = openai.AsyncOpenAI(api_key=key, base_url=served.base_url, max_retries=0)
    try:
        completion = await client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "hi"}]
        )
    except openai.AuthenticationError:
        return False
    finally:
        await client.close()
    assert completion.choices[0].message.content == "Fake answer to: hi"
    return True


async def stops(served: Served, key: str, within: float) -> None:
    async def refused() -> bool:
        return not await chats(served, key)

    await wait_for_async("the key to be refused", refused, timeout=within, interval=0.1)


def key_id(key: str) -> str:
    parts = split_key(key)
    assert parts is not None, key
    return parts[0]


async def test_an_admin_creates_a_key_that_chats_and_is_listed_without_its_secret(settings: Settings) -> None:
    tenant = tenant_name()
    async with serve(settings, make_config(tenant)) as served:
        admin = await served.key(roles=["admin"])
        expires = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
        created = await call(
            served,
            admin,
            "POST",
            "/keys",
            {
                "name": "ci",
                "agents": ["helper"],
                "expires_at": expires.isoformat(),
                "tokens_per_minute": 5000,
                "requests_per_minute": 50,
            },
        )
        assert created.status_code == 201, created.text
        body = created.json()
        key = body["key"]
        secret = key.split("_", 2)[2]
        assert body["id"] == key_id(key)
        assert (body["name"], body["agents"], body["roles"], body["state"]) == (
            "ci",
            ["helper"],
            [],
            "active",
        )
        assert (body["tokens_per_minute"], body["requests_per_minute"]) == (5000, 50)
        assert datetime.fromisoformat(body["expires_at"]) == expires
        assert await chats(served, key)

        listed = await call(served, admin, "GET", "/keys")
        assert listed.status_code == 200, listed.text
        rows = {row["id"]: row for row in listed.json()["data"]}
        assert set(rows) == {key_id(admin), body["id"]}
        assert secret not in listed.text
        assert all("key" not in row and "secret_hash" not in row for row in rows.values())
        assert rows[body["id"]] == {k: v for k, v in body.items() if k != "key"}
        assert rows[key_id(admin)]["roles"] == ["admin"]
        # the new key is no admin: it chats but cannot manage keys
        assert (await call(served, key, "GET", "/keys")).status_code == 403


async def test_only_the_tenants_admins_reach_the_keys_routes(settings: Settings) -> None:
    tenant, other = tenant_name(), tenant_name()
    async with serve(settings, make_config(tenant)) as served:
        admin = await served.key(roles=["admin"])
        target = key_id(await served.key())
        callers = {
            "user key": await served.key(),
            "admin key of another agent": await served.key(roles=["admin"], agents=["billing"]),
            "admin key of another tenant": await served.key(tenant=other, roles=["admin"]),
        }
        routes = [
            ("POST", "/keys", {"name": "mine"}),
            ("GET", "/keys", None),
            ("DELETE", f"/keys/{target}", None),
            ("POST", f"/keys/{target}/rotate", {"overlap_seconds": 0}),
        ]
        for who, token in callers.items():
            for method, path, body in routes:
                response = await call(served, token, method, path, body)
                assert response.status_code == 403, (who, method, path, response.text)
                error = response.json()["error"]
                assert error["type"] == "permission_error"
                assert error["request_id"] == response.headers["x-request-id"]
        for method, path, body in routes:
            assert (await call(served, None, method, path, body)).status_code == 401
        # nothing changed: the target key is active, no key was made
        keys = await list_api_keys(served.runtime.engine, tenant=tenant)
        assert [k.state(datetime.now(UTC)) for k in keys if k.id == target] == ["active"]
        assert len(keys) == 4
        assert (await call(served, admin, "GET", "/keys")).status_code == 200


async def test_another_tenants_key_is_not_found(settings: Settings) -> None:
    tenant, other = tenant_name(), tenant_name()
    async with serve(settings, make_config(tenant)) as served:
        engine = served.runtime.engine
        admin = await served.key(roles=["admin"])
        theirs = key_id(await create_api_key(engine, tenant=other, name="theirs"))
        answers = [
            await call(served, admin, "DELETE", f"/keys/{theirs}"),
            await call(served, admin, "POST", f"/keys/{theirs}/rotate", {"overlap_seconds": 0}),
            await call(served, admin, "DELETE", "/keys/0123456789abcdef"),
            await call(served, admin, "POST", "/keys/0123456789abcdef/rotate"),
        ]
        # the same answer as for a key that does not exist: nothing to learn about other tenants
        assert [a.status_code for a in answers] == [404] * 4
        assert {a.json()["error"]["message"] for a in answers} == {"no such key"}
        listed = await call(served, admin, "GET", "/keys")
        assert theirs not in listed.text
        # the tenant is the agent's, whatever the body says
        named = await call(served, admin, "POST", "/keys", {"name": "x", "tenant": other})
        assert named.status_code == 400
        assert named.json()["error"]["param"] == "tenant"
        their_keys = await list_api_keys(engine, tenant=other)
        assert [(k.id, k.state(datetime.now(UTC)), k.expires_at) for k in their_keys] == [
            (theirs, "active", None)
        ]


async def test_a_key_never_gets_more_than_its_creator_holds(settings: Settings) -> None:
    tenant = tenant_name()
    async with serve(settings, make_config(tenant)) as served:
        scoped_admin = await served.key(roles=["admin"], agents=["helper"])
        unscoped = key_id(await served.key())
        refused = [
            await call(served, scoped_admin, "POST", "/keys", {"name": "wide"}),
            await call(
                served, scoped_admin, "POST", "/keys", {"name": "wide", "agents": ["helper", "billing"]}
            ),
            await call(served, scoped_admin, "POST", f"/keys/{unscoped}/rotate", {"overlap_seconds": 60}),
        ]
        assert [r.status_code for r in refused] == [403] * 3
        assert {r.json()["error"]["param"] for r in refused} == {"agents"}
        allowed = await call(
            served, scoped_admin, "POST", "/keys", {"name": "n", "agents": ["helper"], "roles": ["admin"]}
        )
        assert allowed.status_code == 201, allowed.text
        assert allowed.json()["roles"] == ["admin"]
        assert len(await list_api_keys(served.runtime.engine, tenant=tenant)) == 3


async def test_the_roles_a_caller_may_give() -> None:
    def oidc(*roles: str) -> Principal:
        return Principal(subject="u", roles=frozenset(roles), method="oidc")

    assert grantable_roles(oidc("acme:admin", "globex:user"), "acme") == {"admin"}
    assert grantable_roles(oidc("acme:user", "globex:admin"), "acme") == set()
    assert grantable_roles(oidc("acme:owner"), "acme") == set()
    key = Principal(subject="k", roles=frozenset({"admin"}), method="api_key", tenant="acme")
    assert grantable_roles(key, "acme") == {"admin"}
    assert grantable_roles(key, "globex") == set()
    plain = Principal(subject="k", roles=frozenset(), method="api_key", tenant="acme")
    assert grantable_roles(plain, "acme") == set()


async def test_oidc_admins_manage_keys_and_oidc_users_do_not(settings: Settings, fake_llm: FakeLLM) -> None:
    tenant = tenant_name()
    issuer = Issuer(fake_llm)
    oidc = settings.model_copy(
        update={
            "oidc_issuer": issuer.issuer,
            "oidc_audience": "api://agentplane",
            "oidc_jwks_url": issuer.url,
            "oidc_group_roles": {"group-support": [f"{tenant}:user"], "group-admins": [f"{tenant}:admin"]},
        }
    )
    async with serve(oidc, make_config(tenant)) as served:
        user = issuer.token(groups=["group-support"])
        admin = issuer.token(groups=["group-admins"])
        assert (await call(served, user, "POST", "/keys", {"name": "x"})).status_code == 403
        created = await call(served, admin, "POST", "/keys", {"name": "app", "roles": ["admin"]})
        assert created.status_code == 201, created.text
        assert await chats(served, created.json()["key"])
        assert [k["name"] for k in (await call(served, admin, "GET", "/keys")).json()["data"]] == ["app"]


async def test_key_bodies_are_strict(settings: Settings) -> None:
    tenant = tenant_name()
    async with serve(settings, make_config(tenant)) as served:
        admin = await served.key(roles=["admin"])
        target = key_id(await served.key())
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        cases: list[tuple[str, str, object, str | None]] = [
            ("POST", "/keys", {"name": "x", "requests_per_minute": "5"}, "requests_per_minute"),
            ("POST", "/keys", {"name": "x", "tokens_per_minute": 0}, "tokens_per_minute"),
            ("POST", "/keys", {"name": "x", "expires_at": 1_900_000_000}, "expires_at"),
            ("POST", "/keys", {"name": "x", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
            ("POST", "/keys", {"name": "x", "expires_at": past}, "expires_at"),
            ("POST", "/keys", {"name": "x", "roles": ["owner"]}, "roles.0"),
            ("POST", "/keys", {"name": "x", "agents": ["Not An Agent"]}, "agents.0"),
            ("POST", "/keys", {"name": 7}, "name"),
            ("POST", "/keys", {}, "name"),
            ("POST", f"/keys/{target}/rotate", {"overlap_seconds": 8 * 86_400}, "overlap_seconds"),
            ("POST", f"/keys/{target}/rotate", {"overlap_seconds": "60"}, "overlap_seconds"),
            ("POST", f"/keys/{target}/rotate", {"overlap": "24h"}, "overlap"),
        ]
        for method, path, body, param in cases:
            response = await call(served, admin, method, path, body)
            assert response.status_code == 400, (body, response.text)
            error = response.json()["error"]
            assert error["param"] == param, (body, error)
            assert error["request_id"] == response.headers["x-request-id"]
        keys = await list_api_keys(served.runtime.engine, tenant=tenant)
        assert len(keys) == 2
        assert all(k.state(datetime.now(UTC)) == "active" and k.expires_at is None for k in keys)


async def test_a_revoked_key_stops_within_the_cache_interval(settings: Settings) -> None:
    async with serve(cached(settings), make_config(tenant_name())) as served:
        admin = await served.key(roles=["admin"])
        key = (await call(served, admin, "POST", "/keys", {"name": "leaked"})).json()["key"]
        assert await chats(served, key)  # now in the runtime's key cache
        revoked = await call(served, admin, "DELETE", f"/keys/{key_id(key)}")
        assert revoked.status_code == 204
        assert revoked.content == b""
        await stops(served, key, within=CACHE_SECONDS + MARGIN_SECONDS)
        rows = {r["id"]: r for r in (await call(served, admin, "GET", "/keys")).json()["data"]}
        assert rows[key_id(key)]["state"] == "revoked"
        assert rows[key_id(key)]["revoked_at"] is not None
        # revoking again changes nothing; rotating a revoked key is refused
        assert (await call(served, admin, "DELETE", f"/keys/{key_id(key)}")).status_code == 204
        rotated = await call(served, admin, "POST", f"/keys/{key_id(key)}/rotate")
        assert rotated.status_code == 409
        assert "is revoked" in rotated.json()["error"]["message"]
        assert await chats(served, admin)


async def test_rotation_keeps_both_keys_working_for_the_overlap(settings: Settings) -> None:
    overlap = 4
    async with serve(cached(settings), make_config(tenant_name())) as served:
        admin = await served.key(roles=["admin"])
        old = (
            await call(
                served,
                admin,
                "POST",
                "/keys",
                {"name": "app", "agents": ["helper"], "requests_per_minute": 1000},
            )
        ).json()
        assert await chats(served, old["key"])
        before = datetime.now(UTC)
        response = await call(
            served, admin, "POST", f"/keys/{old['id']}/rotate", {"overlap_seconds": overlap}
        )
        assert response.status_code == 201, response.text
        new = response.json()
        assert new["replaces"] == old["id"]
        assert new["id"] != old["id"]
        for field in ("name", "subject", "agents", "roles", "tokens_per_minute", "requests_per_minute"):
            assert new[field] == old[field], field
        old_until = datetime.fromisoformat(new["replaced_expires_at"])
        assert (
            before + timedelta(seconds=overlap) <= old_until <= datetime.now(UTC) + timedelta(seconds=overlap)
        )
        # both work during the overlap
        assert await chats(served, new["key"])
        assert await chats(served, old["key"])
        # then the old one stops and the new one goes on
        await stops(served, old["key"], within=overlap + CACHE_SECONDS + MARGIN_SECONDS)
        assert await chats(served, new["key"])
        rows = {r["id"]: r for r in (await call(served, admin, "GET", "/keys")).json()["data"]}
        assert (rows[old["id"]]["state"], rows[new["id"]]["state"]) == ("expired", "active")
        again = await call(served, admin, "POST", f"/keys/{old['id']}/rotate")
        assert again.status_code == 409
        assert "is expired" in again.json()["error"]["message"]


async def test_a_per_key_request_limit_set_over_the_api_holds(settings: Settings) -> None:
    async with serve(settings, make_config(tenant_name())) as served:
        # one quota window for the whole test, however long it takes
        served.runtime.chat.quota.clock = lambda: MINUTE + 1
        admin = await served.key(roles=["admin"])
        created = await call(served, admin, "POST", "/keys", {"name": "small", "requests_per_minute": 2})
        key = created.json()["key"]
        assert await chats(served, key)
        assert await chats(served, key)
        client = openai.AsyncOpenAI(api_key=key, base_url=served.base_url, max_retries=0)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="helper", messages=[{"role": "user", "content": "hi"}])
        await client.close()
        assert caught.value.status_code == 429
        # the limit is the key's own: the tenant's other keys go on
        assert await chats(served, admin)


async def test_cli_keys_rotate_on_the_runtimes_database(settings: Settings) -> None:
    tenant = tenant_name()
    assert settings.database_url is not None
    async with serve(cached(settings), make_config(tenant)) as served:
        admin = await served.key(roles=["admin"])
        old = (
            await call(served, admin, "POST", "/keys", {"name": "cli-made", "tokens_per_minute": 90_000})
        ).json()
        assert await chats(served, old["key"])
        out = io.StringIO()
        argv = ["keys", "rotate", old["id"], "--tenant", tenant, "--overlap", "0m", "--format", "json"]
        code = await asyncio.to_thread(run, [*argv, "--database-url", settings.database_url], out)
        assert code == 0
        printed = json.loads(out.getvalue())
        assert printed["replaces"] == old["id"]
        assert await chats(served, printed["key"])
        await stops(served, old["key"], within=CACHE_SECONDS + MARGIN_SECONDS)
        new = await get_api_key(served.runtime.engine, key_id=printed["id"], tenant=tenant)
        assert new is not None
        assert (new.name, new.tokens_per_minute, new.state(datetime.now(UTC))) == (
            "cli-made",
            90_000,
            "active",
        )


async def audit_records(served: Served, tenant: str, count: int) -> list[dict[str, object]]:
    """The tenant's audit records once there are `count` (they are written in the background)."""

    def read(connection: Connection) -> list[dict[str, object]]:
        return [json.loads(line) for line in export(connection, tenant)]

    async def enough() -> list[dict[str, object]] | None:
        async with served.runtime.engine.connect() as connection:
            found = await connection.run_sync(read)
        return found if len(found) >= count else None

    return await wait_for_async(f"{count} audit records of {tenant}", enough, timeout=20, interval=0.05)


async def test_key_changes_and_refusals_are_audited(settings: Settings) -> None:
    tenant = tenant_name()
    # an audit stream of this test's own: the Redis server is shared
    audited = settings.model_copy(update={"audit_stream": f"audit:{tenant}"})
    async with serve(audited, make_config(tenant)) as served:
        admin = await served.key(roles=["admin"], subject="alice")
        user = await served.key(subject="bob")

        async def step(token: str, method: str, path: str, body: object, request_id: str) -> httpx.Response:
            async with httpx.AsyncClient(base_url=served.base_url) as http:
                headers = {"Authorization": f"Bearer {token}", "X-Request-ID": request_id}
                return await http.request(method, path, headers=headers, json=body)

        created = await step(admin, "POST", "/keys", {"name": "app", "requests_per_minute": 9}, "req-create")
        made = created.json()["id"]
        rotated = await step(admin, "POST", f"/keys/{made}/rotate", {"overlap_seconds": 60}, "req-rotate")
        new = rotated.json()["id"]
        assert (await step(admin, "DELETE", f"/keys/{new}", None, "req-revoke")).status_code == 204
        assert (await step(user, "POST", "/keys", {"name": "mine"}, "req-denied")).status_code == 403
        # what changed nothing leaves no key record: a second revoke, an unknown key
        assert (await step(admin, "DELETE", f"/keys/{new}", None, "req-again")).status_code == 204
        assert (await step(admin, "DELETE", "/keys/0123456789abcdef", None, "req-none")).status_code == 404
        assert (created.status_code, rotated.status_code) == (201, 201)
        found = await audit_records(served, tenant, 4)
        async with served.runtime.engine.connect() as connection:
            (report,) = await connection.run_sync(lambda c: verify(c, tenant))
        assert report.ok, report.problems
    assert [(r["action"], r["request_id"]) for r in found] == [
        ("key.created", "req-create"),
        ("key.rotated", "req-rotate"),
        ("key.revoked", "req-revoke"),
        ("access.denied", "req-denied"),
    ]
    create, rotate, revoke, denied = found
    for record in (create, rotate, revoke):
        assert record["outcome"] == "success"
        assert (record["actor_subject"], record["actor_key_id"]) == ("alice", key_id(admin))
        assert record["actor_auth"] == "api_key"
        assert record["agent"] == "helper"
        assert record["source"] == "127.0.0.1"
    assert (create["target"], rotate["target"], revoke["target"]) == (
        f"key:{made}",
        f"key:{made}",
        f"key:{new}",
    )
    assert create["details"] == {
        "name": "app",
        "agents": None,
        "roles": [],
        "expires_at": None,
        "tokens_per_minute": None,
        "requests_per_minute": 9,
    }
    rotate_details = rotate["details"]
    assert isinstance(rotate_details, dict)
    assert (rotate_details["new_key_id"], rotate_details["overlap_seconds"]) == (new, 60)
    assert rotate_details["old_expires_at"] is not None
    assert revoke["details"] == {"name": "app"}
    assert (denied["outcome"], denied["actor_subject"], denied["target"]) == ("denied", "bob", "keys")
    # no secret reaches the trail
    for key in (admin, user, created.json()["key"], rotated.json()["key"]):
        assert key.split("_", 2)[2] not in json.dumps(found)


async def test_an_unreachable_key_store_is_a_503_with_the_request_id(settings: Settings) -> None:
    async with serve(settings, make_config(tenant_name())) as served:
        admin = await served.key(roles=["admin"])
        assert (await call(served, admin, "GET", "/keys")).status_code == 200
        # the routes' database stops answering (the key verifier keeps its own engine, so the caller
        # still authenticates)
        working = served.runtime.engine
        gone = create_engine(f"postgresql://agentplane@127.0.0.1:{free_port()}/gone")
        served.runtime.engine = gone
        try:
            answers = [
                await call(served, admin, "POST", "/keys", {"name": "x"}),
                await call(served, admin, "GET", "/keys"),
                await call(served, admin, "DELETE", f"/keys/{key_id(admin)}"),
                await call(served, admin, "POST", f"/keys/{key_id(admin)}/rotate"),
            ]
        finally:
            served.runtime.engine = working
            await gone.dispose()
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "5"
            assert answer.json()["error"]["request_id"] == answer.headers["x-request-id"]
        assert (await call(served, admin, "GET", "/keys")).status_code == 200
