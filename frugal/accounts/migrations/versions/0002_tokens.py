"""Generative models: token counters on the monthly bill, and feedback that is a corrected response.

monthly_usage gains `tokens` (the quota counter: prompt + max_tokens taken at admission, the unused part given back when
answered), `prompt_tokens` and `completion_tokens` (what was answered). feedback gains `task` ("classify" or "generate")
and its `label` becomes Text (a corrected response is no short label).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TOKEN_COLUMNS = ("tokens", "prompt_tokens", "completion_tokens")


def upgrade() -> None:
    # server_default: the rows already there get 0 (SQLite cannot add a NOT NULL column without a default).
    for column in TOKEN_COLUMNS:
        op.add_column("monthly_usage", sa.Column(column, sa.Integer, nullable=False, server_default="0"))
    # batch mode: SQLite cannot change a column's type in place, so Alembic copies the table (PostgreSQL: ALTER TABLE).
    with op.batch_alter_table("feedback") as batch:
        batch.alter_column("label", type_=sa.Text, existing_type=sa.String(200), existing_nullable=False)
        batch.add_column(sa.Column("task", sa.String(16), nullable=False, server_default="classify"))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("task")
        batch.alter_column("label", type_=sa.String(200), existing_type=sa.Text, existing_nullable=False)
    for column in TOKEN_COLUMNS:
        op.drop_column("monthly_usage", column)
