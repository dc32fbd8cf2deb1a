"""The accounts store: the one interface the serving app and the CLI use.

INTERFACE CONTRACT (the serving app codes against exactly this):

    store = Accounts(url, plans)      # url: SQLAlchemy URL; plans: dict[str, frugal.config.serve.Plan]
    store.migrate()                   # alembic upgrade head (idempotent; safe from two processes)
    plaintext, key = store.create_key(name="acme", plan="starter")   # plaintext shown once; only a hash is stored
    store.list_keys() -> list[KeyInfo]
    store.revoke(key_id) -> KeyInfo                       # unknown key_id -> AccountsError
    store.authenticate(plaintext) -> KeyInfo | None       # None for unknown or revoked keys
    store.admit(key, n_texts, now=None) -> Admission      # rate (per minute) and monthly quota; counts the request if admitted
    store.admit_many([(key, n_texts), ...], now=None) -> list[Admission]   # the same for many, in order, one transaction
    store.record(key, request_id, texts, labels, model_version, cost_usd, now=None)  # usage + what was served (for feedback by id)
    store.record_many([Served(...), ...])                 # the same for many requests, one transaction
    store.admit_many([(key, 0, n_tokens)])               # a generation: prompt + max_tokens against the monthly token quota
    store.record_many([Served(..., tokens=TokenUse(prompt, completion, reserved))])  # bills tokens, gives back the unused
    store.add_feedback(key, label, text=None, request_id=None, index=0, task="classify") -> int  # unknown request id -> AccountsError
    store.feedback_rows(task=None) -> list[FeedbackRow]   # (text, label, created_at, key_id); task "generate": prompt, response
    store.usage(month="YYYY-MM" | None) -> list[UsageRow] # per key and month: requests, texts, cost_usd, billed_usd, margin_usd

    KeyInfo(key_id: str, name: str, plan: str, created_at: datetime, revoked_at: datetime | None)
    Admission(ok: bool, status: int, retry_after: int | None, reason: str | None)   # status 200 or 429
        (also 401 for a key revoked since it authenticated, 403 for a key whose plan left configs/serve.yaml)

Who counts what: `admit` counts the request and its texts (so concurrent requests cannot overrun the quota between
check and count); `record` adds the money (cost_usd, billed_usd = plan price x texts / 1000) and keeps the served texts.
A generation is admitted for its prompt tokens + max_tokens; its record bills prompt and completion tokens at the plan's
$ per 1M, gives back the tokens it did not use, and keeps its prompt as the served text (label "") for feedback by id.
Every `now` is an aware datetime (UTC or not); None means the current time.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.orm import sessionmaker

from frugal.accounts import db
from frugal.accounts.admission import Admission, Request, admit_many
from frugal.accounts.billing import BILL, TokenUse, bill_of
from frugal.accounts.clock import month_of, utc
from frugal.accounts.models import ApiKey, Feedback, MonthlyUsage, ServedText
from frugal.config.serve import Plan, ServeSettings, database_url, load_settings
from frugal.errors import FrugalError
from frugal.paths import ProjectPaths

DATABASE_URL_ENV = "FRUGAL_DATABASE_URL"


class AccountsError(FrugalError):
    """A key, plan, request id or database the accounts store cannot use."""


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    name: str
    plan: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class Served:
    """One answered request, as `record` takes it: `at` is an aware UTC time. A generation has `tokens`, its prompt as
    the one text and "" as its label, and is billed per token, not per text."""

    key: KeyInfo
    request_id: str
    texts: list[str]
    labels: list[str]
    model_version: str
    cost_usd: float
    at: datetime
    tokens: TokenUse | None = None


@dataclass(frozen=True)
class FeedbackRow:
    text: str
    label: str
    created_at: datetime
    key_id: str


@dataclass(frozen=True)
class UsageRow:
    key_id: str
    name: str
    plan: str
    month: str
    requests: int
    texts: int
    cost_usd: float  # our compute cost
    billed_usd: float  # what the plan charges
    margin_usd: float  # billed - cost
    prompt_tokens: int = 0  # a generative model's
    completion_tokens: int = 0


def url_for(settings: ServeSettings, project_root: Path) -> str:
    """The one rule `frugal serve` and the CLI share: FRUGAL_DATABASE_URL, else serve.yaml's database_url, else <project>/serve.db."""
    return os.environ.get(DATABASE_URL_ENV) or database_url(settings, project_root)


def open_accounts(serve_config: str | Path = "serve", project_dir: str | Path | None = None) -> Accounts:
    """The store as the CLI opens it: plans from the serve config, the URL by `url_for`, the schema at head."""
    settings = load_settings(serve_config)
    store = Accounts(url_for(settings, ProjectPaths.resolve(project_dir).root), settings.plans)
    store.migrate()
    return store


class Accounts:
    """API keys, plans, metered usage and feedback in one SQLite file or PostgreSQL database."""

    def __init__(self, url: str, plans: Mapping[str, Plan]) -> None:
        self.url = db.parse_url(url, AccountsError)
        self.plans = dict(plans)
        self.engine = db.make_engine(self.url, AccountsError)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time, and a writer that finds the lock taken sleeps and retries with growing
        # sleeps (up to 100 ms): under many threads some lose again and again. This process's writers queue here instead;
        # other processes still meet at SQLite's lock. PostgreSQL queues the row locks itself.
        self._writer: AbstractContextManager[object] = threading.Lock() if self.url.get_backend_name() == "sqlite" else nullcontext()
        self._reads = sessionmaker(self.engine.execution_options(**{db.READ_ONLY: True}), expire_on_commit=False)  # no write lock

    def migrate(self) -> None:
        db.migrate(self.engine, self.url, AccountsError)

    def close(self) -> None:
        self.engine.dispose()

    def create_key(self, name: str, plan: str, now: datetime | None = None) -> tuple[str, KeyInfo]:
        if plan not in self.plans:
            known = ", ".join(sorted(self.plans))
            raise AccountsError(f"Unknown plan {plan!r}.", f"Use one of {known}, or add the plan to the serve config (configs/serve.yaml).")
        plaintext = secrets.token_urlsafe(32)
        # 32 bits of key_id: a clash (about one in a billion at 100 keys) fails on the primary key, never overwrites.
        row = ApiKey(key_id=f"fk_{secrets.token_hex(4)}", secret_sha256=secret_digest(plaintext), name=name, plan=plan, created_at=utc(now))
        with self._sessions.begin() as session:
            session.add(row)
        return plaintext, _info(row)

    def list_keys(self) -> list[KeyInfo]:
        with self._reads() as session:
            return [_info(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.key_id))]

    def revoke(self, key_id: str, now: datetime | None = None) -> KeyInfo:
        """Revoke a key; revoking it again keeps the first revocation time."""
        with self._sessions.begin() as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                raise AccountsError(f"No API key {key_id!r}.", "Run `frugal keys list` for the key ids (fk_...).")
            if row.revoked_at is None:
                row.revoked_at = utc(now)
            return _info(row)

    def authenticate(self, plaintext: str) -> KeyInfo | None:
        query = select(ApiKey).where(ApiKey.secret_sha256 == secret_digest(plaintext), ApiKey.revoked_at.is_(None))
        with self._reads() as session:
            row = session.scalars(query).first()
            return _info(row) if row else None

    def admit(self, key: KeyInfo, n_texts: int, now: datetime | None = None) -> Admission:
        """May this request run now? If so it is counted: one request this minute, one request and n_texts this month."""
        return self.admit_many([(key, n_texts)], now)[0]

    def admit_many(self, requests: Sequence[Request], now: datetime | None = None) -> list[Admission]:
        """`admit` for many requests, in their order, in one transaction (frugal/accounts/admission.py)."""
        with self._writer, self._sessions.begin() as session:
            return admit_many(session, self.plans, requests, utc(now))

    def record(
        self, key: KeyInfo, request_id: str, texts: Sequence[str], labels: Sequence[str], model_version: str, cost_usd: float,
        now: datetime | None = None,
    ) -> None:  # fmt: skip
        """After a request is answered: its cost and price go on the month's bill, its texts are kept for feedback by id."""
        self.record_many([Served(key, request_id, list(texts), list(labels), model_version, cost_usd, utc(now))])

    def record_many(self, answered: Sequence[Served]) -> None:
        """`record` for many requests in one transaction (the server's background writer): one upsert per key and month."""
        if not answered:
            return
        bills: dict[tuple[str, str], dict[str, float]] = {}
        rows = []
        for served in answered:
            bill = bills.setdefault((served.key.key_id, month_of(served.at)), dict.fromkeys(BILL, 0))
            for column, amount in bill_of(served.cost_usd, len(served.texts), served.tokens, self.plans.get(served.key.plan)).items():
                bill[column] += amount
            rows += [_served_text(served, i, text, label) for i, (text, label) in enumerate(zip(served.texts, served.labels, strict=True))]
        with self._writer, self._sessions.begin() as session:
            # Rows first, counters in key order: two writers, or a writer and `admit`, never wait on each other in a cycle.
            session.execute(insert(ServedText), rows)  # one executemany, not an ORM object per text
            for (key_id, month), bill in sorted(bills.items()):
                db.increment(session, MonthlyUsage, {"key_id": key_id, "month": month}, **bill)

    def add_feedback(
        self, key: KeyInfo, label: str, text: str | None = None, request_id: str | None = None, index: int = 0, now: datetime | None = None,
        task: str = "classify",
    ) -> int:  # fmt: skip
        """Store a correct label for a text, given as is or as (request_id, index) of a request this key made; returns its id.
        task "generate": the label is a corrected response, the text its prompt."""
        with self._sessions.begin() as session:
            if request_id is not None:
                served = session.get(ServedText, (request_id, index))
                if served is None or served.key_id != key.key_id:  # another key's request is as unknown as a made-up one
                    raise AccountsError(f"No text {index} in a request {request_id!r} made with key {key.key_id}.",
                                        "Cite a request_id (and index) this key got back, or send the text itself.")  # fmt: skip
                text = served.text
            elif text is None:
                raise AccountsError("Feedback names neither a text nor a request_id.", "Send the text, or the request_id (and index).")
            row = Feedback(key_id=key.key_id, request_id=request_id, index=index if request_id is not None else None, text=text,
                           label=label, created_at=utc(now), task=task)  # fmt: skip
            session.add(row)
            session.flush()
            return row.id

    def feedback_rows(self, task: str | None = None) -> list[FeedbackRow]:
        """Every feedback row, or those of one task ("classify": labels; "generate": prompt and corrected response)."""
        query = select(Feedback).order_by(Feedback.id)
        with self._reads() as session:
            rows = session.scalars(query.where(Feedback.task == task) if task is not None else query)
            return [FeedbackRow(r.text, r.label, r.created_at, r.key_id) for r in rows]

    def usage(self, month: str | None = None) -> list[UsageRow]:
        """Per key and month (every month when None), by month then key."""
        query = (
            select(MonthlyUsage, ApiKey.name, ApiKey.plan)
            .join(ApiKey, ApiKey.key_id == MonthlyUsage.key_id)
            .order_by(MonthlyUsage.month, MonthlyUsage.key_id)
        )
        if month is not None:
            query = query.where(MonthlyUsage.month == _check_month(month))
        with self._reads() as session:
            return [
                UsageRow(
                    u.key_id,
                    name,
                    plan,
                    u.month,
                    u.requests,
                    u.texts,
                    u.cost_usd,
                    u.billed_usd,
                    u.billed_usd - u.cost_usd,
                    u.prompt_tokens,
                    u.completion_tokens,
                )  # fmt: skip
                for u, name, plan in session.execute(query)
            ]


def secret_digest(plaintext: str) -> str:
    """What is stored of a key's secret, and what a key check (or the server's cache of known keys) looks up."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def _served_text(served: Served, index: int, text: str, label: str) -> dict[str, object]:
    key_id, version = served.key.key_id, served.model_version
    return {"request_id": served.request_id, "index": index, "key_id": key_id, "text": text, "label": label, "model_version": version,
            "created_at": served.at}  # fmt: skip


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.key_id, row.name, row.plan, row.created_at, row.revoked_at)


def current_month(now: datetime | None = None) -> str:
    return month_of(utc(now))


def _check_month(month: str) -> str:
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise AccountsError(f"Month {month!r} is not YYYY-MM.", "Give a month like 2025-03.")
    return month
