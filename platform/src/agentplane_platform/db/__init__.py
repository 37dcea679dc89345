"""The usage/metadata database: SQLAlchemy models, async engines and Alembic migrations."""

from agentplane_platform.db._engine import async_url, create_engine, migrate
from agentplane_platform.db.models import Base, TenantQuota

__all__ = ["Base", "TenantQuota", "async_url", "create_engine", "migrate"]
