"""API keys, plans, metered usage and feedback for `frugal serve`, in SQLite or PostgreSQL (SQLAlchemy + Alembic)."""
