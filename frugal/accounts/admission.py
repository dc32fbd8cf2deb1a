"""Admission: may these requests run now? The rate (requests per UTC minute) and the monthly text quota, checked and
counted in one transaction for any number of requests, in their order (one request is `Accounts.admit`; the server's
admission thread passes every request that arrived together: a group commit, one write for all of them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from frugal.accounts import db
from frugal.accounts.clock import minute_of, month_of, next_month, seconds_until
from frugal.accounts.models import ApiKey, MinuteRequests, MonthlyUsage

if TYPE_CHECKING:
    from frugal.accounts.store import KeyInfo
    from frugal.config.serve import Plan


@dataclass(frozen=True)
class Admission:
    ok: bool
    status: int
    retry_after: int | None  # seconds, for the Retry-After header of a 429
    reason: str | None


@dataclass
class _Counts:
    """One key in one transaction: usable or not, what the database held, what this transaction admitted on top."""

    usable: bool
    minute_requests: int
    month_texts: int
    admitted_requests: int = 0
    admitted_texts: int = 0


def admit_many(session: Session, plans: Mapping[str, Plan], requests: Sequence[tuple[KeyInfo, int]], now: datetime) -> list[Admission]:
    """Decide and count every request in order; `now` is aware UTC. The caller owns the transaction."""
    minute, month = minute_of(now), month_of(now)
    # Every key's row is locked first, in key order, so concurrent admits of a key queue, check-then-count is one step,
    # and two groups never lock the same keys in opposite orders (PostgreSQL: SELECT ... FOR NO KEY UPDATE, which still
    # lets a writer's foreign-key checks through; SQLite ignores it, its BEGIN IMMEDIATE already lets one writer in).
    counts = {key_id: _read(session, key_id, minute, month) for key_id in sorted({key.key_id for key, _ in requests})}
    answers = [_decide(plans.get(key.plan), key, n_texts, counts[key.key_id], minute, month, now) for key, n_texts in requests]
    for key_id, count in counts.items():
        if count.admitted_requests:
            db.increment(session, MinuteRequests, {"key_id": key_id, "minute": minute}, requests=count.admitted_requests)
            db.increment(session, MonthlyUsage, {"key_id": key_id, "month": month}, requests=count.admitted_requests,
                         texts=count.admitted_texts)  # fmt: skip
            # Earlier minutes are never read again.
            session.execute(delete(MinuteRequests).where(MinuteRequests.key_id == key_id, MinuteRequests.minute < minute))
    return answers


def _read(session: Session, key_id: str, minute: int, month: str) -> _Counts:
    row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id).with_for_update(key_share=True)).first()
    this_minute = session.scalar(select(MinuteRequests.requests).filter_by(key_id=key_id, minute=minute)) or 0
    this_month = session.scalar(select(MonthlyUsage.texts).filter_by(key_id=key_id, month=month)) or 0
    return _Counts(row is not None and row.revoked_at is None, this_minute, this_month)


def _decide(plan: Plan | None, key: KeyInfo, n_texts: int, count: _Counts, minute: int, month: str, now: datetime) -> Admission:
    if plan is None:
        return Admission(False, 403, None, f"Key {key.key_id} is on plan {key.plan!r}, which no longer exists; ask for a new key.")
    if not count.usable:
        return Admission(False, 401, None, f"Key {key.key_id} has been revoked.")
    if count.minute_requests + count.admitted_requests >= plan.requests_per_minute:
        reason = f"Rate limit: {plan.requests_per_minute} requests per minute on plan {key.plan!r}."
        return Admission(False, 429, seconds_until((minute + 1) * 60, now), reason)
    used = count.month_texts + count.admitted_texts
    if used + n_texts > plan.texts_per_month:
        reason = (f"Monthly quota: {used} of {plan.texts_per_month} texts used in {month} on plan {key.plan!r}; "
                  f"this request has {n_texts}.")  # fmt: skip
        return Admission(False, 429, seconds_until(next_month(now).timestamp(), now), reason)
    count.admitted_requests += 1
    count.admitted_texts += n_texts
    return Admission(True, 200, None, None)
