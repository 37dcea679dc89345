"""The tenant's API keys, for its admins: create (the key shown once), list (never a secret), revoke,
rotate with an overlap. The same functions as `agentplane keys` (`agentplane_platform.keys`).

The tenant is always the agent's: a caller manages the keys of the tenant whose agent it calls, and
another tenant's key is "not found", never "forbidden". A key is never given more than its creator
holds: roles it has not, or agents beyond those its own key is limited to.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StrictStr
from pydantic_core import PydanticCustomError
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from agentplane_platform.audit import AuditAction
from agentplane_platform.jsontypes import JsonValue
from agentplane_platform.keys import (
    MAX_ROTATION_OVERLAP,
    KeyInfo,
    KeyNotRotatable,
    KeyState,
    create_api_key,
    get_api_key,
    list_api_keys,
    revoke_api_key,
    rotate_api_key,
    split_key,
)
from agentplane_runtime.agents import AgentContext
from agentplane_runtime.api.deps import CurrentAgent, CurrentPrincipal, RuntimeDep, actor, denied
from agentplane_runtime.audit import audit_event
from agentplane_runtime.auth import Principal
from agentplane_runtime.core.errors import ApiError, unavailable
from agentplane_runtime.services import Runtime

router = APIRouter(prefix="/keys", tags=["keys"])

KeyRole = Literal["admin"]
"""What a key may be given: `admin` manages the tenant's keys and documents."""
KEY_ROLES: frozenset[str] = frozenset({"admin"})

AgentName = Annotated[StrictStr, Field(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
PerMinute = Annotated[int, Field(ge=1, le=1_000_000_000, strict=True)]


def _text_only(value: object) -> object:
    """A date-time must be an ISO 8601 string in the JSON (not a number of seconds)."""
    if value is not None and not isinstance(value, str):
        raise PydanticCustomError("datetime_type", "Input should be an ISO 8601 date-time string")
    return value


class KeyCreate(BaseModel):
    """A new key of the agent's tenant (the body cannot name another tenant)."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(min_length=1, max_length=128)
    """What the key is for."""
    agents: list[AgentName] | None = Field(default=None, min_length=1, max_length=256)
    """The agents the key may call; every agent of the tenant when absent."""
    roles: list[KeyRole] = Field(default_factory=list, max_length=len(KEY_ROLES))
    expires_at: Annotated[AwareDatetime | None, BeforeValidator(_text_only)] = None
    """When the key stops working (with a time zone); never when absent."""
    tokens_per_minute: PerMinute | None = None
    """A limit of the key's own, within the tenant's."""
    requests_per_minute: PerMinute | None = None


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int = Field(
        default=86_400, ge=0, le=int(MAX_ROTATION_OVERLAP.total_seconds()), strict=True
    )
    """How long the old key keeps working next to the new one (then it expires): 0 to 7 days."""


class KeyPublic(BaseModel):
    """A key as listed: never its secret nor the secret's hash."""

    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    subject: str
    agents: list[str] | None
    roles: list[str]
    state: KeyState
    created_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    tokens_per_minute: int | None
    requests_per_minute: int | None


class KeyCreated(KeyPublic):
    key: str
    """The key itself, `ap_<id>_<secret>`: shown in this response only (the database keeps a hash)."""


class KeyRotated(KeyCreated):
    replaces: str
    """The id of the old key."""
    replaced_expires_at: datetime | None
    """When the old key stops working."""


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyPublic]


def _public(key: KeyInfo) -> KeyPublic:
    return KeyPublic(
        id=key.id,
        name=key.name,
        subject=key.subject,
        agents=key.agents,
        roles=key.roles,
        state=key.state(datetime.now(UTC)),
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        tokens_per_minute=key.tokens_per_minute,
        requests_per_minute=key.requests_per_minute,
    )


async def require_admin(
    request: Request, agent: CurrentAgent, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Principal:
    """The caller, when it is an admin of the agent's tenant (403 otherwise, audited)."""
    if not principal.is_admin(agent.config.tenant):
        raise await denied(
            request,
            runtime,
            agent,
            principal,
            "keys",
            ApiError(
                403,
                "only an admin of the tenant may manage its API keys",
                type="permission_error",
                code="forbidden",
            ),
        )
    return principal


TenantAdmin = Annotated[Principal, Depends(require_admin)]


def grantable_roles(principal: Principal, tenant: str) -> frozenset[str]:
    """The key roles `principal` holds in `tenant`, and so may give a key: an API key's own roles,
    an OIDC caller's `<tenant>:<role>` roles."""
    if principal.method == "anonymous":
        return KEY_ROLES
    if principal.method == "api_key":
        return principal.roles & KEY_ROLES if principal.tenant == tenant else frozenset()
    prefix = f"{tenant}:"
    return frozenset(r.removeprefix(prefix) for r in principal.roles if r.startswith(prefix)) & KEY_ROLES


def _beyond_creator(
    principal: Principal, tenant: str, roles: list[str], agents: list[str] | None
) -> ApiError | None:
    """The refusal of a key that would hold more than its creator (a role it has not, or agents
    beyond the ones its own key is limited to); None when it holds no more."""
    missing = sorted(set(roles) - grantable_roles(principal, tenant))
    if missing:
        return ApiError(
            403,
            f"a key cannot be given roles its creator does not hold: {', '.join(missing)}",
            type="permission_error",
            code="forbidden",
            param="roles",
        )
    if principal.agents is not None and (agents is None or not set(agents) <= principal.agents):
        return ApiError(
            403,
            "a key cannot reach agents its creator's key cannot: name agents among "
            f"{', '.join(sorted(principal.agents))}",
            type="permission_error",
            code="forbidden",
            param="agents",
        )
    return None


async def _record(
    request: Request,
    runtime: Runtime,
    agent: AgentContext,
    principal: Principal,
    action: AuditAction,
    key_id: str,
    details: Mapping[str, JsonValue],
) -> None:
    config = agent.config
    await runtime.audit.record(
        audit_event(
            action,
            tenant=config.tenant,
            actor=actor(request, principal),
            agent=config.agent,
            target=f"key:{key_id}",
            details=details,
        )
    )


def _moment(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _not_found() -> ApiError:
    return ApiError(404, "no such key", type="not_found_error", code="key_not_found")


def _key_id(key: str) -> str:
    parts = split_key(key)
    assert parts is not None
    return parts[0]


@router.post("", status_code=201, summary="Create a key of the tenant; the key is in this response only")
async def create_key(
    request: Request, body: KeyCreate, agent: CurrentAgent, principal: TenantAdmin, runtime: RuntimeDep
) -> KeyCreated:
    tenant = agent.config.tenant
    beyond = _beyond_creator(principal, tenant, list(body.roles), body.agents)
    if beyond is not None:
        raise await denied(request, runtime, agent, principal, "keys", beyond)
    if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
        raise ApiError(400, "expires_at: the key would expire in the past", param="expires_at")
    try:
        key = await create_api_key(
            runtime.engine,
            tenant=tenant,
            name=body.name,
            agents=body.agents,
            roles=list(body.roles),
            expires_at=body.expires_at,
            tokens_per_minute=body.tokens_per_minute,
            requests_per_minute=body.requests_per_minute,
        )
        info = await get_api_key(runtime.engine, key_id=_key_id(key), tenant=tenant)
    except (SQLAlchemyError, OSError):
        raise unavailable("the key store") from None
    assert info is not None
    await _record(
        request,
        runtime,
        agent,
        principal,
        AuditAction.KEY_CREATED,
        info.id,
        {
            "name": info.name,
            "agents": list(info.agents) if info.agents is not None else None,
            "roles": list(info.roles),
            "expires_at": _moment(info.expires_at),
            "tokens_per_minute": info.tokens_per_minute,
            "requests_per_minute": info.requests_per_minute,
        },
    )
    return KeyCreated(**_public(info).model_dump(), key=key)


@router.get("", summary="The tenant's keys, oldest first (never a secret)")
async def list_keys(agent: CurrentAgent, principal: TenantAdmin, runtime: RuntimeDep) -> KeyList:
    try:
        keys = await list_api_keys(runtime.engine, tenant=agent.config.tenant)
    except (SQLAlchemyError, OSError):
        raise unavailable("the key store") from None
    return KeyList(data=[_public(k) for k in keys])


@router.delete("/{key_id}", status_code=204, summary="Revoke a key (it stops within the key cache interval)")
async def revoke_key(
    request: Request, key_id: str, agent: CurrentAgent, principal: TenantAdmin, runtime: RuntimeDep
) -> Response:
    tenant = agent.config.tenant
    try:
        info = await get_api_key(runtime.engine, key_id=key_id, tenant=tenant)
        if info is None:
            raise _not_found()
        revoked = await revoke_api_key(runtime.engine, key_id=key_id, tenant=tenant)
    except (SQLAlchemyError, OSError):
        raise unavailable("the key store") from None
    if revoked:  # else it was revoked already: nothing happened, nothing to audit
        await _record(
            request, runtime, agent, principal, AuditAction.KEY_REVOKED, key_id, {"name": info.name}
        )
    return Response(status_code=204)


@router.post(
    "/{key_id}/rotate",
    status_code=201,
    summary="Replace a key by a new one (in this response only); the old one works for the overlap",
)
async def rotate_key(
    request: Request,
    key_id: str,
    agent: CurrentAgent,
    principal: TenantAdmin,
    runtime: RuntimeDep,
    body: KeyRotate | None = None,
) -> KeyRotated:
    tenant = agent.config.tenant
    overlap_seconds = (body or KeyRotate()).overlap_seconds
    try:
        old = await get_api_key(runtime.engine, key_id=key_id, tenant=tenant)
        if old is None:
            raise _not_found()
        beyond = _beyond_creator(principal, tenant, old.roles, old.agents)
        if beyond is not None:
            raise await denied(request, runtime, agent, principal, "keys", beyond)
        try:
            key = await rotate_api_key(
                runtime.engine, key_id=key_id, tenant=tenant, overlap=timedelta(seconds=overlap_seconds)
            )
        except KeyNotRotatable as exc:
            raise ApiError(409, str(exc), code="key_not_active") from None
        if key is None:
            raise _not_found()
        new = await get_api_key(runtime.engine, key_id=_key_id(key), tenant=tenant)
        old = await get_api_key(runtime.engine, key_id=key_id, tenant=tenant)
    except (SQLAlchemyError, OSError):
        raise unavailable("the key store") from None
    assert new is not None
    assert old is not None
    await _record(
        request,
        runtime,
        agent,
        principal,
        AuditAction.KEY_ROTATED,
        key_id,
        {
            "name": old.name,
            "new_key_id": new.id,
            "overlap_seconds": overlap_seconds,
            "old_expires_at": _moment(old.expires_at),
            "new_expires_at": _moment(new.expires_at),
        },
    )
    return KeyRotated(
        **_public(new).model_dump(), key=key, replaces=key_id, replaced_expires_at=old.expires_at
    )
