"""Tenant API keys in the platform database: made, listed, revoked and rotated here, checked by the runtime.

A key looks like `ap_<id>_<secret>`; only sha256(secret) is stored, so a new key is shown once.
A key belongs to one tenant, optionally to some of its agents, and may expire or be revoked. The
`agentplane keys` command, the runtime's `/v1/keys` API, `agentplane up` and the runtime's tests
all use these functions.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from agentplane_platform.db import ApiKey

KEY_PREFIX = "ap_"
KEY_ID_LENGTH = 16
KeyState = Literal["active", "expired", "revoked"]
MAX_ROTATION_OVERLAP = timedelta(days=7)
"""The longest a rotated key may keep working next to its replacement."""


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


def _new_key(
    *,
    tenant: str,
    name: str,
    subject: str | None,
    agents: list[str] | None,
    roles: list[str] | None,
    expires_at: datetime | None,
    tokens_per_minute: int | None,
    requests_per_minute: int | None,
) -> tuple[ApiKey, str]:
    """A new key's row and the key itself (which only the caller ever sees)."""
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
    return row, f"{KEY_PREFIX}{key_id}_{secret}"


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
    row, key = _new_key(
        tenant=tenant, name=name, subject=subject, agents=agents, roles=roles, expires_at=expires_at,
        tokens_per_minute=tokens_per_minute, requests_per_minute=requests_per_minute,
    )  # fmt: skip
    async with AsyncSession(engine) as session, session.begin():
        session.add(row)
    return key


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
    """A key as listed: everything but its secret (which is not stored) and the secret's hash."""

    id: str
    tenant: str
    name: str
    subject: str
    agents: list[str] | None
    roles: list[str]
    created_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None

    def state(self, now: datetime) -> KeyState:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and _aware(self.expires_at) <= now:
            return "expired"
        return "active"


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns: they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        tenant=row.tenant,
        name=row.name,
        subject=row.subject,
        agents=list(row.agents) if row.agents is not None else None,
        roles=list(row.roles or []),
        created_at=_aware(row.created_at) if row.created_at else None,
        expires_at=_aware(row.expires_at) if row.expires_at else None,
        revoked_at=_aware(row.revoked_at) if row.revoked_at else None,
        tokens_per_minute=row.tokens_per_minute,
        requests_per_minute=row.requests_per_minute,
    )


async def list_api_keys(engine: AsyncEngine, *, tenant: str, agent: str | None = None) -> list[KeyInfo]:
    """The tenant's keys (those usable on `agent`, when given), oldest first."""
    async with AsyncSession(engine) as session:
        rows = await session.scalars(
            select(ApiKey).where(ApiKey.tenant == tenant).order_by(ApiKey.created_at, ApiKey.id)
        )
        found = [_info(row) for row in rows]
    return [k for k in found if agent is None or k.agents is None or agent in k.agents]


async def get_api_key(engine: AsyncEngine, *, key_id: str, tenant: str) -> KeyInfo | None:
    """The tenant's key `key_id`; None when the tenant has none by that id (another tenant's key
    is not found either)."""
    async with AsyncSession(engine) as session:
        row = await session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant == tenant))
        return _info(row) if row is not None else None


class KeyNotRotatable(Exception):
    """The key is revoked or expired: there is nothing left to rotate (make a new key instead)."""

    def __init__(self, key_id: str, state: str) -> None:
        super().__init__(f"key {key_id} is {state}: only an active key can be rotated, create a new one")
        self.key_id = key_id
        self.state = state


async def rotate_api_key(engine: AsyncEngine, *, key_id: str, tenant: str, overlap: timedelta) -> str | None:
    """Replace the tenant's active key `key_id` by a new one and return the new key (shown this once);
    None when the tenant has no key by that id. `KeyNotRotatable` when it is revoked or expired.

    The new key has the old one's name, subject (so the documents it owns stay its own), agents,
    roles and limits. Its expiry keeps the old key's lifetime, counted from now: a key made for 90
    days is replaced by one for 90 days, a key that never expires by one that never expires. The
    old key keeps working for `overlap` (0 to `MAX_ROTATION_OVERLAP`) and then expires; an earlier
    expiry it already had is never extended. Both changes are one transaction."""
    if not timedelta(0) <= overlap <= MAX_ROTATION_OVERLAP:
        raise ValueError(f"the overlap must be between 0 and {MAX_ROTATION_OVERLAP.days} days, not {overlap}")
    async with AsyncSession(engine) as session, session.begin():
        old = await session.scalar(
            select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant == tenant).with_for_update()
        )
        if old is None:
            return None
        info = _info(old)
        now = datetime.now(UTC)
        state = info.state(now)
        if state != "active":
            raise KeyNotRotatable(key_id, state)
        expires_at = None
        if info.expires_at is not None:
            lifetime = info.expires_at - (info.created_at or now)
            expires_at = now + max(lifetime, timedelta(0))
        row, key = _new_key(
            tenant=tenant, name=info.name, subject=info.subject, agents=info.agents, roles=info.roles,
            expires_at=expires_at, tokens_per_minute=info.tokens_per_minute,
            requests_per_minute=info.requests_per_minute,
        )  # fmt: skip
        session.add(row)
        end_of_overlap = now + overlap
        if info.expires_at is None or end_of_overlap < info.expires_at:
            old.expires_at = end_of_overlap
    return key
