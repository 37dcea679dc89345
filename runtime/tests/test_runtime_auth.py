"""Authentication: tenant API keys (hashed, scoped, expiring, revocable) and OIDC tokens against a JWKS."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from runtime_support import make_config, serve, tenant_name
from sqlalchemy import select

from agentplane_platform.db import ApiKey
from agentplane_platform.keys import create_api_key, revoke_api_key
from agentplane_runtime import Settings
from support.fake_llm import FakeLLM

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]

BODY = {"model": "helper", "messages": [{"role": "user", "content": "hi"}]}


async def post(base_url: str, token: str | None, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(base_url=base_url) as http:
        return await http.post(path, json=BODY, headers=headers)


async def test_api_keys_scope_expiry_and_revocation(settings: Settings) -> None:
    tenant, other = tenant_name(), tenant_name()
    async with serve(settings, make_config(tenant), make_config(other)) as served:
        engine = served.runtime.engine
        good = await served.key()
        assert (await post(served.url, good)).status_code == 200
        # only the hash is stored
        async with engine.connect() as connection:
            stored = (
                (await connection.execute(select(ApiKey.secret_hash).where(ApiKey.tenant == tenant)))
                .scalars()
                .all()
            )
        assert stored
        assert all(good.split("_", 2)[2] not in h for h in stored)

        refusals: list[httpx.Response] = []
        for token in (
            None,
            "garbage",
            "ap_0123456789abcdef_wrong",
            good[:-1] + ("A" if good[-1] != "A" else "B"),
            await create_api_key(
                engine, tenant=tenant, name="old", expires_at=datetime.now(UTC) - timedelta(seconds=1)
            ),
        ):
            response = await post(served.url, token)
            assert response.status_code == 401, token
            refusals.append(response)
        # the same answer whatever was wrong: nothing to learn from it
        messages = {r.json()["error"]["message"] for r in refusals[1:]}
        assert messages == {"invalid credentials"}
        assert all(r.headers["www-authenticate"] == "Bearer" for r in refusals)
        # a caller is refused before its body is read: an invalid body tells a stranger nothing
        stranger = await create_api_key(engine, tenant=other, name="stranger")
        async with httpx.AsyncClient(base_url=served.url) as http:
            for token, status in (("garbage", 401), (stranger, 403), (good, 400)):
                invalid = await http.post(
                    "/v1/chat/completions",
                    json={"model": "helper"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert invalid.status_code == status, invalid.text
                assert ("messages" in invalid.text) is (status == 400)

        revoked = await create_api_key(engine, tenant=tenant, name="leaked")
        assert (await post(served.url, revoked)).status_code == 200
        assert await revoke_api_key(engine, key_id=revoked.split("_")[1])
        assert (await post(served.url, revoked)).status_code == 401

        other_tenant = await create_api_key(engine, tenant=other, name="theirs")
        forbidden = await post(served.url, other_tenant)
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["message"] == "not allowed to use this agent"

        scoped = await create_api_key(engine, tenant=tenant, name="scoped", agents=["another-agent"])
        assert (await post(served.url, scoped)).status_code == 403
        in_scope = await create_api_key(engine, tenant=tenant, name="scoped", agents=["helper"])
        assert (await post(served.url, in_scope)).status_code == 200


class Issuer:
    """A locally generated RSA key, published as a JWKS by the fake upstream."""

    def __init__(self, fake: FakeLLM) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
        fake.jwks = {"keys": [jwk]}
        self.url = f"{fake.root_url}/.well-known/jwks.json"
        self.issuer = "https://login.microsoftonline.com/test-tenant/v2.0"

    def token(self, kid: str = "k1", **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": "api://agentplane",
            "iat": now,
            "exp": now + 300,
            "oid": "user-1",
            **claims,
        }
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": kid})


async def test_oidc_tokens_with_group_roles(settings: Settings, fake_llm: FakeLLM) -> None:
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
        assert (await post(served.url, issuer.token(groups=["group-support"]))).status_code == 200
        assert (await post(served.url, issuer.token(roles=[f"{tenant}:admin"]))).status_code == 200
        assert (await post(served.url, issuer.token(groups=["group-other"]))).status_code == 403
        assert (await post(served.url, issuer.token(roles=["someone-else:admin"]))).status_code == 403
        for bad in (
            issuer.token(aud="api://other", groups=["group-support"]),
            issuer.token(iss="https://evil.example", groups=["group-support"]),
            issuer.token(exp=int(time.time()) - 120, groups=["group-support"]),
            issuer.token(kid="unknown", groups=["group-support"]),
            jwt.encode(
                {"iss": issuer.issuer, "aud": "api://agentplane", "exp": int(time.time()) + 60, "oid": "x"},
                rsa.generate_private_key(public_exponent=65537, key_size=2048),
                algorithm="RS256",
                headers={"kid": "k1"},
            ),
            jwt.encode(
                {"iss": issuer.issuer, "aud": "api://agentplane", "exp": int(time.time()) + 60, "oid": "x"},
                "a-shared-secret-of-at-least-32-bytes!!",
                algorithm="HS256",
                headers={"kid": "k1"},
            ),
        ):
            response = await post(served.url, bad)
            assert response.status_code == 401
            assert response.json()["error"]["message"] == "invalid credentials"
