"""Alembic migrations for the accounts tables (run by `Accounts.migrate()`; no alembic.ini needed)."""
