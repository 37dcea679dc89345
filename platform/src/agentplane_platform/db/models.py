"""The platform's relational schema (PostgreSQL in production, SQLite for `agentplane up`).

Every change to these models comes with an Alembic migration in `migrations/versions/`;
`tests` compare the migrated schema with the models.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Numeric, String, func
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
