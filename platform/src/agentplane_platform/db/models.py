"""The platform's relational schema (PostgreSQL in production, SQLite for `agentplane up`).

Every change to these models comes with an Alembic migration in `migrations/versions/`;
`tests` compare the migrated schema with the models.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Numeric, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class TenantQuota(Base):
    """The durable copy of a tenant's LLM limits, written by the operator."""

    __tablename__ = "tenant_quotas"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    tokens_per_minute: Mapped[int]
    requests_per_minute: Mapped[int]
    monthly_budget_usd: Mapped[float] = mapped_column(Numeric(14, 4, asdecimal=False))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class ApiKey(Base):
    """A tenant API key. Only a hash of its secret is stored; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """The key's public id, part of the key (`ap_<id>_<secret>`)."""
    tenant: Mapped[str] = mapped_column(String(63), index=True)
    name: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(256))
    """Whom the key acts for: owner of the documents it uploads, matched by `shared_with`."""
    secret_hash: Mapped[str] = mapped_column(String(64))
    """sha256 of the secret part, hex."""
    agents: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    """Agents the key may call; every agent of the tenant when null."""
    roles: Mapped[list[str]] = mapped_column(JSON)
    tokens_per_minute: Mapped[int | None]
    """Per-key limit on top of the tenant's; none when null."""
    requests_per_minute: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UsageRecord(Base):
    """One chat request as metered by the runtime."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_tenant_created_at", "tenant", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """Unique per record (the runtime's own id; writing a record twice is a no-op)."""
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    """The request id the client saw (its `X-Request-ID`, when it sent one)."""
    tenant: Mapped[str] = mapped_column(String(63))
    agent: Mapped[str] = mapped_column(String(63))
    api_key_id: Mapped[str | None] = mapped_column(String(32))
    subject: Mapped[str | None] = mapped_column(String(256))
    model: Mapped[str | None] = mapped_column(String(256))
    """The model that answered (a fallback when the primary failed); null when none did."""
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    cost_usd: Mapped[float] = mapped_column(Numeric(18, 8, asdecimal=False))
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    """Time to the first streamed token; null when nothing was streamed."""
    status: Mapped[str] = mapped_column(String(32))
    http_status: Mapped[int]
    error_type: Mapped[str | None] = mapped_column(String(64))
    stream: Mapped[bool]
    tool_calls: Mapped[int]
    llm_calls: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRecord(Base):
    """One audited action (`agentplane_platform.audit`): appended, never updated; chained per tenant,
    each record carrying the SHA-256 of the one before it."""

    __tablename__ = "audit_records"
    __table_args__ = (Index("ix_audit_records_tenant_recorded_at", "tenant", "recorded_at"),)

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    """Position in the tenant's chain, from 1 without gaps (until older records are pruned)."""
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    """When it happened (UTC)."""
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    """When it was appended (UTC): later than `at` when the writer buffered it."""
    actor_subject: Mapped[str | None] = mapped_column(String(256))
    actor_key_id: Mapped[str | None] = mapped_column(String(32))
    actor_auth: Mapped[str | None] = mapped_column(String(32))
    """How the actor authenticated (`api-key`, `oidc`, …); null when it did not."""
    source: Mapped[str | None] = mapped_column(String(64))
    """The client's address."""
    action: Mapped[str] = mapped_column(String(32))
    """An `agentplane_platform.audit.AuditAction`."""
    agent: Mapped[str | None] = mapped_column(String(63))
    target: Mapped[str | None] = mapped_column(String(512))
    """What was acted on, `kind:id` (`key:…`, `document:…`, `tool:…`)."""
    request_id: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))
    """An `agentplane_platform.audit.AuditOutcome`."""
    details: Mapped[dict[str, object]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """Where each tenant's audit chain ends (and, once older records are pruned, where it starts)."""

    __tablename__ = "audit_heads"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
    start_after_seq: Mapped[int] = mapped_column(BigInteger)
    """The chain's first record is `start_after_seq + 1`, chained to `start_after_hash` (0 and the
    genesis value until records are pruned)."""
    start_after_hash: Mapped[str] = mapped_column(String(64))
