"""Tenant API keys in the platform database: made, listed and revoked here, checked by the runtime.

A key looks like `ap_<id>_<secret>`; only sha256(secret) is stored, so a new key is shown once.
A key belongs to one tenant, optionally to some of its agents, and may expire or be revoked. The
`agentplane keys` command, `agentplane up` and the runtime's tests all use these functions.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from agentplane_platform.db import ApiKey

KEY_PREFIX = "ap_"
KEY_ID_LENGTH = 16


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    if not token.startswith(KEY_PREFIX):
        return None
    parts = token[len(KEY_PREFIX) :].split("_", 1)
    if len(parts) != 2 or len(parts[0]) != KEY_ID_LENGTH or not parts[1]:
        return None
    return parts[0], parts[1]


async def create_api_key(
    engine: AsyncEngine,
    *,
    tenant: str,
    name: str,
    subject: str | None = None,
    agents: list[str] | None = None,
    roles: list[str] | None = None,
    expires_at: datetime | None = None,
    tokens_per_minute: int | None = None,
    requests_per_minute: int | None = None,
) -> str:
    """Create a key and return it; it is shown only this once (the database keeps a hash)."""
    key_id = secrets.token_hex(KEY_ID_LENGTH // 2)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(
        id=key_id,
        tenant=tenant,
        name=name,
        subject=subject or f"key:{key_id}",
        secret_hash=hash_secret(secret),
        agents=agents,
        roles=roles or [],
        tokens_per_minute=tokens_per_minute,
        requests_per_minute=requests_per_minute,
        expires_at=expires_at,
    )
    async with AsyncSession(engine) as session, session.begin():
        session.add(row)
    return f"{KEY_PREFIX}{key_id}_{secret}"


async def revoke_api_key(engine: AsyncEngine, *, key_id: str, tenant: str | None = None) -> bool:
    """Revoke a key (of `tenant`, when given); whether it existed and was not revoked yet."""
    condition = [ApiKey.id == key_id, ApiKey.revoked_at.is_(None)]
    if tenant is not None:
        condition.append(ApiKey.tenant == tenant)
    async with engine.begin() as connection:
        result = await connection.execute(
            update(ApiKey).where(*condition).values(revoked_at=datetime.now(UTC))
        )
    return bool(result.rowcount)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as listed: everything but its secret (which is not stored)."""

    id: str
    tenant: str
    name: str
    subject: str
    agents: list[str] | None
    roles: list[str]
    created_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and _aware(self.expires_at) <= now:
            return "expired"
        return "active"


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns: they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def list_api_keys(engine: AsyncEngine, *, tenant: str, agent: str | None = None) -> list[KeyInfo]:
    """The tenant's keys (those usable on `agent`, when given), oldest first."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(ApiKey.__table__).where(ApiKey.tenant == tenant).order_by(ApiKey.created_at, ApiKey.id)
            )
        ).mappings()
        found = [
            KeyInfo(
                id=row["id"],
                tenant=row["tenant"],
                name=row["name"],
                subject=row["subject"],
                agents=row["agents"],
                roles=list(row["roles"] or []),
                created_at=_aware(row["created_at"]) if row["created_at"] else None,
                expires_at=_aware(row["expires_at"]) if row["expires_at"] else None,
                revoked_at=_aware(row["revoked_at"]) if row["revoked_at"] else None,
            )
            for row in rows
        ]
    return [k for k in found if agent is None or k.agents is None or agent in k.agents]
