"""The platform's relational schema (PostgreSQL in production, SQLite for `agentplane up`).

Every change to these models comes with an Alembic migration in `migrations/versions/`;
`tests` compare the migrated schema with the models.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, Index, Numeric, String, func
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
