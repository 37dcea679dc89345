"""The usage/metadata database: SQLAlchemy models, async engines and Alembic migrations."""

from agentplane_platform.db._engine import async_url, create_engine, migrate
from agentplane_platform.db.models import ApiKey, Base, TenantQuota, UsageRecord

__all__ = ["ApiKey", "Base", "TenantQuota", "UsageRecord", "async_url", "create_engine", "migrate"]
