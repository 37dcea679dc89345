"""Which of a tenant's Agents its `quotas.maxAgents` admits: one rule for the operator, `agentplane
validate` and `agentplane up`.

The first `maxAgents` Agents of the tenant's namespace are admitted, the others refused, in one order:
oldest first by `metadata.creationTimestamp`, then by name. Objects of a spec tree have no timestamp
and are ordered by name alone; in a mixed set, one without a timestamp (not created yet) comes after
every one that has it. The refusal's message is what the operator writes in the Agent's condition,
`validate` reports at the Agent and `up` prints for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from agentplane_platform.api.v1alpha1 import Tenant

REASON = "QuotaExceeded"
"""The condition reason of an Agent beyond its Tenant's `maxAgents`."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One Agent of the tenant's namespace, as far as admission looks at it."""

    name: str
    created: datetime | None = None
    """`metadata.creationTimestamp`; None for an object not created yet (a spec tree)."""

    @classmethod
    def of(cls, name: str, created: str | None) -> Candidate:
        """From the metadata as the API server writes it (`2026-12-01T02:30:00Z`)."""
        return cls(name, datetime.fromisoformat(created) if created else None)


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on a tenant's Agents."""

    admitted: list[str] = field(default_factory=list)
    """Names of the admitted Agents, in admission order."""
    refused: dict[str, str] = field(default_factory=dict)
    """Why each refused Agent is refused, by name (in admission order)."""


def order_key(candidate: Candidate) -> tuple[bool, float, str]:
    """The admission order: oldest first, then by name; without a timestamp after those with one."""
    created = candidate.created
    return (created is None, created.timestamp() if created is not None else 0.0, candidate.name)


def refusal(tenant: Tenant) -> str:
    """Why an Agent beyond the tenant's limit is not admitted."""
    limit = tenant.spec.quotas.max_agents
    return (
        f"Tenant {tenant.name!r} allows {limit} agent(s); this one is beyond it "
        "(agents are admitted oldest first, then by name; raise quotas.maxAgents or remove an agent)"
    )


def admit(tenant: Tenant, agents: Iterable[Candidate]) -> Admission:
    """Which of `agents` (the tenant's, each name once) the tenant's `quotas.maxAgents` admits."""
    limit = tenant.spec.quotas.max_agents
    ordered = sorted(agents, key=order_key)
    why = refusal(tenant)
    return Admission(
        admitted=[c.name for c in ordered[:limit]],
        refused={c.name: why for c in ordered[limit:]},
    )


__all__ = ["REASON", "Admission", "Candidate", "admit", "order_key", "refusal"]
