"""The runtime's audit trail: what callers did and were refused, written without being lost.

`AuditLog.record(event)` appends the event to a durable buffer (`agentplane_runtime.buffer`: a
Redis stream in a pod, memory under `agentplane up`) and returns; it never waits on the database.
A background writer takes batches from the buffer, appends them to the tenant's chain with
`agentplane_platform.audit.append` in one transaction, and acknowledges them only after the commit:
while the database is down the events wait, and they are written when it is back (their `at` is
when they happened, `recorded_at` when they were written).

Delivery is at least once: a writer that dies between the commit and the acknowledgement leaves
its batch to be written again (the same events twice in the chain, which still verifies).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from agentplane_platform.audit import AuditAction, AuditEvent, AuditOutcome, JsonValue, append
from agentplane_runtime.auth import Principal
from agentplane_runtime.buffer import Buffer, BufferedWriter

log = logging.getLogger("agentplane.runtime.audit")

AUDIT_GROUP = "audit-writers"
"""The consumer group of the audit stream."""


def encode_event(event: AuditEvent) -> bytes:
    """An event as it waits in a buffer (JSON)."""
    return orjson.dumps(
        {
            "tenant": event.tenant,
            "action": str(event.action),
            "at": event.at.astimezone(UTC).isoformat(),
            "outcome": str(event.outcome),
            "actor_subject": event.actor_subject,
            "actor_key_id": event.actor_key_id,
            "actor_auth": event.actor_auth,
            "source": event.source,
            "agent": event.agent,
            "target": event.target,
            "request_id": event.request_id,
            "details": dict(event.details),
        }
    )


def decode_event(raw: bytes) -> AuditEvent:
    """The event `encode_event` wrote; `ValueError`, `TypeError` or `KeyError` when it is not one."""
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not an audit event")
    return AuditEvent(
        tenant=data["tenant"],
        action=AuditAction(data["action"]),
        at=datetime.fromisoformat(data["at"]),
        outcome=AuditOutcome(data["outcome"]),
        actor_subject=data.get("actor_subject"),
        actor_key_id=data.get("actor_key_id"),
        actor_auth=data.get("actor_auth"),
        source=data.get("source"),
        agent=data.get("agent"),
        target=data.get("target"),
        request_id=data.get("request_id"),
        details=data.get("details") or {},
    )


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something and from where, as an audit record names them."""

    subject: str | None = None
    key_id: str | None = None
    auth: str | None = None
    """How they authenticated (`api_key`, `oidc`, `anonymous`); None when they did not."""
    source: str | None = None
    """The client's address."""
    request_id: str | None = None

    @classmethod
    def of(cls, principal: Principal | None, *, source: str | None, request_id: str | None) -> Actor:
        if principal is None:
            return cls(source=source, request_id=request_id or None)
        return cls(
            subject=principal.subject,
            key_id=principal.key_id,
            auth=principal.method,
            source=source,
            request_id=request_id or None,
        )


def _clip(value: str | None, limit: int) -> str | None:
    return value if value is None or len(value) <= limit else value[: limit - 1] + "…"


def audit_event(
    action: AuditAction,
    *,
    tenant: str,
    actor: Actor,
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
    agent: str | None = None,
    target: str | None = None,
    details: Mapping[str, JsonValue] | None = None,
    at: datetime | None = None,
) -> AuditEvent:
    """An event of `actor`, now (or `at`); values longer than their columns are cut (a caller's
    subject or a tool's name is not ours to refuse an audit record for)."""
    return AuditEvent(
        tenant=tenant,
        action=action,
        at=at or datetime.now(UTC),
        outcome=outcome,
        actor_subject=_clip(actor.subject, 256),
        actor_key_id=_clip(actor.key_id, 32),
        actor_auth=_clip(actor.auth, 32),
        source=_clip(actor.source, 64),
        agent=_clip(agent, 63),
        target=_clip(target, 512),
        request_id=_clip(actor.request_id, 128),
        details=dict(details or {}),
    )


ARGUMENTS_LIMIT = 4096
"""Characters of a tool call's arguments an audit record keeps (where the Tool opts in)."""

_TOOL_OUTCOMES = {"ok": AuditOutcome.SUCCESS, "denied": AuditOutcome.DENIED}


def tool_call_event(
    tenant: str,
    agent: str,
    actor: Actor,
    tool: str,
    outcome: str,
    seconds: float,
    arguments: str | None,
) -> AuditEvent:
    """A tool call (`tool.called`): the tool, the runtime's outcome (`ok`, `error`, `timeout`,
    `denied`, `invalid_arguments`, `unknown`), the duration, and the arguments when given."""
    details: dict[str, JsonValue] = {"tool": tool, "result": outcome, "duration_ms": round(seconds * 1000, 3)}
    if arguments is not None:
        details["arguments"] = arguments[:ARGUMENTS_LIMIT]
        details["arguments_truncated"] = len(arguments) > ARGUMENTS_LIMIT
    return audit_event(
        AuditAction.TOOL_CALLED,
        tenant=tenant,
        actor=actor,
        outcome=_TOOL_OUTCOMES.get(outcome, AuditOutcome.FAILURE),
        agent=agent,
        target=f"tool:{tool}",
        details=details,
    )


def quota_refusal_event(tenant: str, agent: str, actor: Actor, limit: str, message: str) -> AuditEvent:
    """A request refused by a quota (`quota.refused`) or the monthly budget (`budget.refused`)."""
    budget = limit == "monthly_budget_usd"
    return audit_event(
        AuditAction.BUDGET_REFUSED if budget else AuditAction.QUOTA_REFUSED,
        tenant=tenant,
        actor=actor,
        outcome=AuditOutcome.DENIED,
        agent=agent,
        target=f"agent:{agent}",
        details={"limit": limit, "reason": message},
    )


class AuditLog(BufferedWriter[AuditEvent]):
    """Buffers audit events and appends them to the tenant chains in the background
    (`agentplane_runtime.buffer.BufferedWriter`).

    `enabled=False` records nothing (measuring what auditing costs; not for production)."""

    what = "audit events"

    def __init__(
        self,
        engine: AsyncEngine,
        buffer: Buffer[AuditEvent],
        *,
        batch_size: int = 500,
        flush_seconds: float = 0.5,
        enabled: bool = True,
    ) -> None:
        super().__init__(buffer, batch_size=batch_size, flush_seconds=flush_seconds)
        self.engine = engine
        self.enabled = enabled
        self.lost_count = 0
        """Events that could be neither buffered nor written (logged as errors)."""

    async def record(self, item: AuditEvent) -> None:
        """Buffer one event. Never raises: an event no buffer takes is logged and counted."""
        if self.enabled:
            await super().record(item)

    def lost(self, item: AuditEvent, problem: BaseException) -> None:
        self.lost_count += 1
        log.error(
            "audit event lost: no buffer takes it (%s)",
            type(problem).__name__,
            extra={"audit_action": str(item.action), "audit_tenant": item.tenant},
        )

    async def write(self, items: Sequence[AuditEvent]) -> None:
        """Append `items` to their chains in one transaction."""
        if items:
            async with self.engine.begin() as connection:
                await connection.run_sync(append, items)


__all__ = [
    "ARGUMENTS_LIMIT",
    "AUDIT_GROUP",
    "Actor",
    "AuditLog",
    "audit_event",
    "decode_event",
    "encode_event",
    "quota_refusal_event",
    "tool_call_event",
]
