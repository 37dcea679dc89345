"""Who is calling: tenant API keys (hashed in the database) and OIDC bearer tokens (Entra ID).

An API key looks like `ap_<id>_<secret>`; only sha256(secret) is stored. A key belongs to one
tenant, optionally to some of its agents, and may expire or be revoked. Verified keys are cached
for `api_key_cache_seconds` (so a revocation takes at most that long) and, while the database is
unreachable, trusted for `api_key_stale_seconds`.

An OIDC token is verified against the issuer's JWKS (issuer, audience, expiry, signature); its
roles are the `roles` claim plus the roles mapped from its group claims. A role `<tenant>:user`
or `<tenant>:admin` grants access to that tenant's agents.

A request's trace has a span of authentication only where it waited for something: `auth lookup` when
a key was read from the database, `auth jwks` when the issuer's keys were fetched. A check from the
caches has none (the request's span carries `agentplane.auth.method`): a span costs about as much as
the check itself.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import jwt
from opentelemetry.trace import Status, StatusCode, Tracer
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentplane_platform.db import ApiKey
from agentplane_platform.keys import KEY_PREFIX, hash_secret, split_key
from agentplane_runtime.core.config import Settings
from agentplane_runtime.quotas import KeyLimits


class AuthError(Exception):
    """The credentials are missing or not valid (401); the message is safe to show."""


class AuthUnavailable(Exception):
    """The credentials cannot be checked right now (503)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    subject: str
    roles: frozenset[str]
    method: Literal["api_key", "oidc", "anonymous"]
    tenant: str | None = None
    """The tenant an API key belongs to (OIDC principals get tenants from their roles)."""
    key_id: str | None = None
    agents: frozenset[str] | None = None
    groups: frozenset[str] = frozenset()
    key_limits: KeyLimits | None = None

    def may_use(self, tenant: str, agent: str) -> bool:
        if self.method == "anonymous":
            return True
        if self.method == "api_key":
            return self.tenant == tenant and (self.agents is None or agent in self.agents)
        return bool({f"{tenant}:user", f"{tenant}:admin"} & self.roles)

    def is_admin(self, tenant: str) -> bool:
        if self.method == "anonymous":
            return True
        if self.method == "api_key":
            return self.tenant == tenant and "admin" in self.roles
        return f"{tenant}:admin" in self.roles

    def audiences(self) -> list[str]:
        """Values a document's `shared_with` may name to share it with this caller."""
        return [self.subject, *sorted(self.groups)]


@dataclass(slots=True)
class _CachedKey:
    row: dict[str, Any] | None
    checked_at: float


class ApiKeyVerifier:
    """Checks API keys against the database, with a short cache."""

    def __init__(
        self, engine: AsyncEngine, tracer: Tracer, *, cache_seconds: float, stale_seconds: float
    ) -> None:
        self.engine = engine
        self.tracer = tracer
        self.cache_seconds = cache_seconds
        self.stale_seconds = stale_seconds
        self._cache: dict[str, _CachedKey] = {}

    async def _load(self, key_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as connection:
            result = await connection.execute(select(ApiKey.__table__).where(ApiKey.id == key_id))
            row = result.mappings().first()
        return dict(row) if row is not None else None

    async def _lookup(self, key_id: str, cached: _CachedKey | None, now: float) -> dict[str, Any] | None:
        """The key's row from the database (and cached), or the cached one while the database is
        unreachable for at most `stale_seconds`."""
        # a leaf span (nothing runs under it): started, not made current
        with self.tracer.start_span("auth lookup", attributes={"agentplane.auth.method": "api_key"}) as span:
            try:
                row = await self._load(key_id)
            except (SQLAlchemyError, OSError) as exc:
                span.set_status(Status(StatusCode.ERROR, "the key store is unreachable"))
                if cached is not None and now - cached.checked_at < self.stale_seconds:
                    return cached.row
                raise AuthUnavailable("the key store is unreachable") from exc
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[key_id] = _CachedKey(row, now)
        return row

    async def verify(self, token: str) -> Principal:
        parts = split_key(token)
        if parts is None:
            raise AuthError("invalid credentials")
        key_id, secret = parts
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached.checked_at < self.cache_seconds:
            row = cached.row
        else:
            row = await self._lookup(key_id, cached, now)
        if row is None or not hmac.compare_digest(row["secret_hash"], hash_secret(secret)):
            raise AuthError("invalid credentials")
        if row["revoked_at"] is not None:
            raise AuthError("invalid credentials")
        expires_at = row["expires_at"]
        if expires_at is not None:
            if expires_at.tzinfo is None:
                expires_at = expires_at.replace(tzinfo=UTC)
            if expires_at <= datetime.now(UTC):
                raise AuthError("invalid credentials")
        agents = row["agents"]
        return Principal(
            subject=row["subject"],
            roles=frozenset(row["roles"] or ()),
            method="api_key",
            tenant=row["tenant"],
            key_id=key_id,
            agents=frozenset(agents) if agents is not None else None,
            key_limits=KeyLimits(key_id, row["tokens_per_minute"], row["requests_per_minute"])
            if row["tokens_per_minute"] is not None or row["requests_per_minute"] is not None
            else None,
        )


class OidcVerifier:
    """Verifies bearer JWTs against an issuer's JWKS (fetched over HTTP, cached, refetched on a new kid)."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient, tracer: Tracer) -> None:
        if not (settings.oidc_issuer and settings.oidc_audience and settings.oidc_jwks_url):
            raise ValueError("OIDC needs oidc_issuer, oidc_audience and oidc_jwks_url")
        self.settings = settings
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.jwks_url = settings.oidc_jwks_url
        self.http = http
        self.tracer = tracer
        self._keys: jwt.PyJWKSet | None = None
        self._fetched_at = 0.0

    async def _jwks(self, refresh: bool = False) -> jwt.PyJWKSet:
        now = time.monotonic()
        stale = now - self._fetched_at > self.settings.oidc_jwks_cache_seconds
        # A refresh for an unknown kid at most every 10 s (tokens with made-up kids cannot hammer the issuer).
        if self._keys is None or stale or (refresh and now - self._fetched_at > 10):
            with self.tracer.start_span("auth jwks", attributes={"agentplane.auth.method": "oidc"}) as span:
                try:
                    response = await self.http.get(self.jwks_url, timeout=5)
                    response.raise_for_status()
                    self._keys = jwt.PyJWKSet.from_dict(response.json())
                    self._fetched_at = now
                except (httpx.HTTPError, ValueError, jwt.PyJWKSetError) as exc:
                    span.set_status(Status(StatusCode.ERROR, "the identity provider's keys are unreachable"))
                    if self._keys is None:
                        raise AuthUnavailable("the identity provider's keys are unreachable") from exc
        assert self._keys is not None
        return self._keys

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("invalid credentials") from exc
        kid = header.get("kid")
        keys = await self._jwks()
        key = _find(keys, kid)
        if key is None:
            key = _find(await self._jwks(refresh=True), kid)
        if key is None:
            raise AuthError("invalid credentials")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=self.settings.oidc_algorithms,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud"]},
                leeway=30,
            )
        except jwt.PyJWTError as exc:
            raise AuthError("invalid credentials") from exc
        subject = claims.get(self.settings.oidc_subject_claim) or claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError("invalid credentials")
        roles = set(_strings(claims.get(self.settings.oidc_roles_claim)))
        groups = set(_strings(claims.get(self.settings.oidc_groups_claim)))
        for group in groups:
            roles.update(self.settings.oidc_group_roles.get(group, ()))
        return Principal(subject=subject, roles=frozenset(roles), method="oidc", groups=frozenset(groups))


def _find(keys: jwt.PyJWKSet, kid: object) -> jwt.PyJWK | None:
    for key in keys.keys:
        if kid is None or key.key_id == kid:
            return key
    return None


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


class Authenticator:
    """Routes a bearer credential to the API-key or the OIDC verifier."""

    def __init__(self, keys: ApiKeyVerifier, oidc: OidcVerifier | None) -> None:
        self.keys = keys
        self.oidc = oidc

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError("missing credentials: send Authorization: Bearer <API key or token>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 16384:
            raise AuthError("invalid credentials")
        if token.startswith(KEY_PREFIX):
            return await self.keys.verify(token)
        if self.oidc is not None and token.count(".") == 2:
            return await self.oidc.verify(token)
        raise AuthError("invalid credentials")
