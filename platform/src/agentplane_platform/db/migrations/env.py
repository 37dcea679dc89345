"""Alembic environment: runs on the connection `agentplane_platform.db.migrate` passes in."""

from alembic import context

from agentplane_platform.db.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
