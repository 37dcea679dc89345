"""A tenant's LLM quota limits: what the operator writes and the runtime enforces.

The live limits are a Redis hash at `quota_limits_key(tenant)`; the durable copy is the
`tenant_quotas` table (`agentplane_platform.db.TenantQuota`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from agentplane_platform.api.v1alpha1 import Tenant
from agentplane_platform.config import quota_limits_key


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """One tenant's LLM limits."""

    tenant: str
    tokens_per_minute: int
    requests_per_minute: int
    monthly_budget_usd: float

    @classmethod
    def of(cls, tenant: Tenant) -> QuotaLimits:
        llm = tenant.spec.quotas.llm
        return cls(
            tenant=tenant.name,
            tokens_per_minute=llm.tokens_per_minute,
            requests_per_minute=llm.requests_per_minute,
            monthly_budget_usd=llm.monthly_budget_usd,
        )

    @property
    def redis_key(self) -> str:
        return quota_limits_key(self.tenant)

    def redis_fields(self) -> dict[str, str]:
        """The Redis hash fields, as strings (what `HSET` stores and `HGETALL` returns)."""
        return {k: str(v) for k, v in asdict(self).items() if k != "tenant"}

    @classmethod
    def from_redis(cls, tenant: str, fields: dict[str, str]) -> QuotaLimits:
        return cls(
            tenant=tenant,
            tokens_per_minute=int(fields["tokens_per_minute"]),
            requests_per_minute=int(fields["requests_per_minute"]),
            monthly_budget_usd=float(fields["monthly_budget_usd"]),
        )
