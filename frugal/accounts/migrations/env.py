"""Alembic environment for the accounts tables; run through `Accounts.migrate()`, which passes its open connection.

A schema change: edit models.py, add versions/000N_<what>.py by hand (0001 shows the shape; `down_revision` names the
previous one). tests/test_accounts.py fails while the models and the migrations disagree.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from frugal.accounts.models import VERSION_TABLE, Base

# Any constant works; it only has to be the same in every process migrating this database.
PG_LOCK_ID = 0x66727567616C


def run_online() -> None:
    connection = context.config.attributes["connection"]
    if connection.dialect.name == "postgresql":
        # Two servers starting at once: the second waits here, then finds the version table at head. The lock ends
        # with the caller's transaction. SQLite needs nothing: the caller's BEGIN IMMEDIATE already serialises writers.
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": PG_LOCK_ID})
    context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


run_online()
