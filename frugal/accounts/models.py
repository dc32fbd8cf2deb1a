"""The accounts tables (SQLAlchemy 2.0 declarative). A change here needs a new file in migrations/versions/."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Double, ForeignKey, Integer, String, Text, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Alembic's version table for these tables: database_url may name a PostgreSQL database MLflow (Alembic too) already uses.
VERSION_TABLE = "frugal_accounts_version"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend: SQLite hands back naive values, PostgreSQL the session's time zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC time")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """One API key. Only the SHA-256 of the secret is kept: the secret is 32 random bytes, so a slow hash buys nothing."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)  # fk_<8 hex>: safe to show, log and revoke by
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class MonthlyUsage(Base):
    """What one key used in one calendar month (UTC): the quota reads `texts`, `frugal usage` reads all of it."""

    __tablename__ = "monthly_usage"

    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.key_id"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # YYYY-MM
    requests: Mapped[int] = mapped_column(Integer, default=0)
    texts: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Double, default=0.0)  # our compute cost of serving them
    billed_usd: Mapped[float] = mapped_column(Double, default=0.0)  # plan price x texts / 1000 (+ tokens x $ per 1M tokens / 1e6)
    # A generative model's quota counter: prompt + max_tokens are taken at admission, the unused part given back once answered.
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)  # what was answered (the bill), written with the cost
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)


class MinuteRequests(Base):
    """Requests per key per UTC minute, in the database so the rate limit holds across restarts and processes."""

    __tablename__ = "minute_requests"

    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.key_id"), primary_key=True)
    minute: Mapped[int] = mapped_column(Integer, primary_key=True)  # Unix time // 60
    requests: Mapped[int] = mapped_column(Integer, default=0)


class ServedText(Base):
    """Each text a request was answered for, so feedback can cite (request_id, index) instead of resending the text."""

    __tablename__ = "served_texts"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.key_id"))
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Feedback(Base):
    """A correct label sent by a customer, or for a generative model (task "generate") a corrected response (label) for a
    prompt (text): the raw material for the next training set."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.key_id"))
    request_id: Mapped[str | None] = mapped_column(String(64))
    index: Mapped[int | None] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(Text)  # Text, not String(200): a corrected response is a text
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    task: Mapped[str] = mapped_column(String(16), default="classify")
