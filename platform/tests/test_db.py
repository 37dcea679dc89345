"""The migrations build exactly the models' schema, on PostgreSQL and on SQLite, and re-run as no-ops."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text

from agentplane_platform.db import Base, async_url, create_engine, migrate
from support.services import Server, create_database


def _diff(connection: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def _migrate_and_diff(url: str) -> tuple[list[Any], str]:
    engine = create_engine(url)
    try:
        await migrate(engine)
        await migrate(engine)  # a second run (another replica starting) changes nothing
        async with engine.connect() as connection:
            diff = await connection.run_sync(_diff)
            version = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        return diff, version
    finally:
        await engine.dispose()


def _head() -> str:
    versions = Path(__file__).parents[1] / "src/agentplane_platform/db/migrations/versions"
    return sorted(p.name for p in versions.glob("[0-9]*.py"))[-1].split("_")[0]


@pytest.mark.postgres
def test_migrations_match_the_models_on_postgres(postgres: Server) -> None:
    url = create_database(postgres, "migrations")
    diff, version = asyncio.run(_migrate_and_diff(url))
    assert diff == []
    assert version == _head()


def test_migrations_match_the_models_on_sqlite(tmp_path: Path) -> None:
    diff, version = asyncio.run(_migrate_and_diff(f"sqlite:///{tmp_path / 'usage.db'}"))
    assert diff == []
    assert version == _head()


def test_plain_urls_get_the_async_driver() -> None:
    assert async_url("postgresql://u:p@db:5432/agentplane") == "postgresql+asyncpg://u:p@db:5432/agentplane"
    assert async_url("sqlite:///x/usage.db") == "sqlite+aiosqlite:///x/usage.db"
    assert async_url("postgresql+asyncpg://db/x") == "postgresql+asyncpg://db/x"
