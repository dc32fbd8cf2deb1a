"""The accounts store's clock: UTC minutes and calendar months, the units of the rate limit and the quota."""

from __future__ import annotations

from datetime import UTC, datetime
from math import ceil


def utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: pass an aware time, e.g. datetime.now(UTC)")
    return now.astimezone(UTC)


def minute_of(now: datetime) -> int:
    return int(now.timestamp()) // 60


def month_of(now: datetime) -> str:
    return now.strftime("%Y-%m")


def next_month(now: datetime) -> datetime:
    return datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)


def seconds_until(then: float, now: datetime) -> int:
    return max(1, ceil(then - now.timestamp()))
