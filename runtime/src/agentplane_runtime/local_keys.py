"""The local API keys of `agentplane up`: one per tenant, its hash in the database and the key
itself in `<state>/api-keys.json` (0600), where `agentplane chat` reads it."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from agentplane_platform.db.models import ApiKey
from agentplane_platform.keys import create_api_key, split_key
from agentplane_runtime.services import Runtime
from agentplane_runtime.terminal import KEYS_FILE


async def tenant_keys(runtime: Runtime, state: Path, tenants: list[str]) -> dict[str, str]:
    """One local API key per tenant: reused while its record is in the database, else created.
    The database keeps only the hash, so the plain keys are kept in `<state>/api-keys.json` (0600)."""
    path = state / KEYS_FILE
    saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    keys: dict[str, str] = {}
    async with runtime.engine.connect() as connection:
        for tenant in tenants:
            key = saved.get(tenant)
            parts = split_key(key) if key else None
            if key and parts is not None:
                row = (
                    await connection.execute(
                        select(ApiKey.id).where(
                            ApiKey.id == parts[0], ApiKey.tenant == tenant, ApiKey.revoked_at.is_(None)
                        )
                    )
                ).first()
                if row is not None:
                    keys[tenant] = key
                    continue
            keys[tenant] = await create_api_key(runtime.engine, tenant=tenant, name="agentplane-up")
    path.write_text(json.dumps(keys, indent=2) + "\n")
    path.chmod(0o600)
    return keys
