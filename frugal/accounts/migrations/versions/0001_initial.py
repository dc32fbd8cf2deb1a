"""API keys, monthly usage, per-minute request counts, served texts, feedback.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _key() -> sa.Column:
    return sa.Column("key_id", sa.String(16), sa.ForeignKey("api_keys.key_id"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(16), primary_key=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("plan", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "monthly_usage",
        sa.Column("key_id", sa.String(16), sa.ForeignKey("api_keys.key_id"), primary_key=True),
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("texts", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Double, nullable=False),
        sa.Column("billed_usd", sa.Double, nullable=False),
    )
    op.create_table(
        "minute_requests",
        sa.Column("key_id", sa.String(16), sa.ForeignKey("api_keys.key_id"), primary_key=True),
        sa.Column("minute", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("requests", sa.Integer, nullable=False),
    )
    op.create_table(
        "served_texts",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("index", sa.Integer, primary_key=True, autoincrement=False),
        _key(),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _key(),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("index", sa.Integer, nullable=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for table in ("feedback", "served_texts", "minute_requests", "monthly_usage", "api_keys"):
        op.drop_table(table)
