"""Admission: may these requests run now? The rate (requests per UTC minute) and the monthly text and token quotas, checked
and counted in one transaction for any number of requests, in their order (one request is `Accounts.admit`; the server's
admission thread passes every request that arrived together: a group commit, one write for all of them).

A request is (key, texts) or (key, texts, tokens): a generation asks for its prompt's tokens plus its max_tokens, all taken
here, before the model runs, so no key can go over its token quota; the answer gives back what it did not use (store.py)."""

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
    month_tokens: int
    admitted_requests: int = 0
    admitted_texts: int = 0
    admitted_tokens: int = 0


Request = tuple["KeyInfo", int] | tuple["KeyInfo", int, int]  # (key, texts) or (key, texts, tokens)


def admit_many(session: Session, plans: Mapping[str, Plan], requests: Sequence[Request], now: datetime) -> list[Admission]:
    """Decide and count every request in order; `now` is aware UTC. The caller owns the transaction."""
    minute, month = minute_of(now), month_of(now)
    # Every key's row is locked first, in key order, so concurrent admits of a key queue, check-then-count is one step,
    # and two groups never lock the same keys in opposite orders (PostgreSQL: SELECT ... FOR NO KEY UPDATE, which still
    # lets a writer's foreign-key checks through; SQLite ignores it, its BEGIN IMMEDIATE already lets one writer in).
    counts = {key_id: _read(session, key_id, minute, month) for key_id in sorted({request[0].key_id for request in requests})}
    answers = [_decide(plans.get(r[0].plan), r[0], r[1], _tokens(r), counts[r[0].key_id], minute, month, now) for r in requests]
    for key_id, count in counts.items():
        if count.admitted_requests:
            db.increment(session, MinuteRequests, {"key_id": key_id, "minute": minute}, requests=count.admitted_requests)
            db.increment(session, MonthlyUsage, {"key_id": key_id, "month": month}, requests=count.admitted_requests,
                         texts=count.admitted_texts, tokens=count.admitted_tokens)  # fmt: skip
            # Earlier minutes are never read again.
            session.execute(delete(MinuteRequests).where(MinuteRequests.key_id == key_id, MinuteRequests.minute < minute))
    return answers


def _read(session: Session, key_id: str, minute: int, month: str) -> _Counts:
    row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id).with_for_update(key_share=True)).first()
    this_minute = session.scalar(select(MinuteRequests.requests).filter_by(key_id=key_id, minute=minute)) or 0
    texts, tokens = session.execute(select(MonthlyUsage.texts, MonthlyUsage.tokens).filter_by(key_id=key_id, month=month)).first() or (0, 0)
    return _Counts(row is not None and row.revoked_at is None, this_minute, texts, tokens)


def _tokens(request: Request) -> int:
    return request[2] if len(request) == 3 else 0


def _decide(plan: Plan | None, key: KeyInfo, n_texts: int, n_tokens: int, count: _Counts, minute: int, month: str,
            now: datetime) -> Admission:  # fmt: skip
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
    if n_tokens and not plan.tokens_per_month:
        return Admission(False, 403, None, f"Plan {key.plan!r} of key {key.key_id} does not include generation (tokens_per_month: 0).")
    tokens = count.month_tokens + count.admitted_tokens
    if n_tokens and tokens + n_tokens > plan.tokens_per_month:
        reason = (f"Monthly token quota: {tokens} of {plan.tokens_per_month} tokens used in {month} on plan {key.plan!r}; "
                  f"this request may use {n_tokens} (its prompt plus max_tokens).")  # fmt: skip
        return Admission(False, 429, seconds_until(next_month(now).timestamp(), now), reason)
    count.admitted_requests += 1
    count.admitted_texts += n_texts
    count.admitted_tokens += n_tokens
    return Admission(True, 200, None, None)
