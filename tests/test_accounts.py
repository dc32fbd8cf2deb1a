"""The accounts store on a SQLite file and on a PostgreSQL server started here (one database per test), and the CLI."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import MARCH, PLANS  # the accounts fixtures' plans (conftest.py, shared with test_meter.py)
from sqlalchemy import MetaData, select, text

from frugal.accounts.models import VERSION_TABLE, Base
from frugal.accounts.store import Accounts, AccountsError, KeyInfo
from frugal.config.serve import load_settings
from tools import postgres  # on the path by conftest.py

HEAD = "0002"  # the last revision in frugal/accounts/migrations/versions


def _all_values(store: Accounts) -> list[str]:
    meta = MetaData()
    meta.reflect(store.engine)
    with store.engine.connect() as conn:
        return [str(v) for table in meta.sorted_tables for row in conn.execute(select(table)) for v in row]


def test_only_a_hash_of_the_key_is_stored(accounts: Accounts, url: str) -> None:
    plaintext, key = accounts.create_key("acme", "small")
    assert re.fullmatch(r"fk_[0-9a-f]{8}", key.key_id) and len(plaintext) >= 43
    values = _all_values(accounts)
    assert hashlib.sha256(plaintext.encode()).hexdigest() in values and not any(plaintext in v for v in values)
    if url.startswith("sqlite"):
        assert plaintext.encode() not in Path(url.removeprefix("sqlite:///")).read_bytes()
    [listed] = accounts.list_keys()
    assert listed == key and listed.created_at.tzinfo == UTC and listed.revoked_at is None


def test_authenticate_and_revoke(accounts: Accounts) -> None:
    plaintext, key = accounts.create_key("acme", "small")
    other, _ = accounts.create_key("other", "big")
    assert accounts.authenticate(plaintext) == key
    assert accounts.authenticate(plaintext + "x") is None
    revoked = accounts.revoke(key.key_id, now=MARCH)
    assert revoked.revoked_at == MARCH and accounts.revoke(key.key_id).revoked_at == MARCH  # again: the first time stays
    assert accounts.authenticate(plaintext) is None and accounts.authenticate(other) is not None
    assert accounts.admit(key, 1, now=MARCH).status == 401  # authenticated before the revocation, admitted after it: no
    assert [k.revoked_at for k in accounts.list_keys()] == [MARCH, None]
    with pytest.raises(AccountsError, match="No API key 'fk_00000000'"):
        accounts.revoke("fk_00000000")


def test_rate_limit_per_minute(accounts: Accounts) -> None:
    _, key = accounts.create_key("acme", "small")
    assert all(accounts.admit(key, 1, now=MARCH).ok for _ in range(5))
    refused = accounts.admit(key, 1, now=MARCH)
    assert (refused.ok, refused.status, refused.retry_after) == (False, 429, 45) and "5 requests per minute" in refused.reason
    assert accounts.admit(key, 1, now=MARCH.replace(second=59, microsecond=500_000)).retry_after == 1
    assert accounts.admit(key, 1, now=MARCH.replace(minute=1, second=0)).ok  # the next minute starts afresh
    [row] = accounts.usage("2025-03")
    assert (row.requests, row.texts) == (6, 6)  # refused requests are not counted


def test_monthly_quota_and_its_reset(accounts: Accounts) -> None:
    _, key = accounts.create_key("acme", "small")
    assert accounts.admit(key, 60, now=MARCH).ok and accounts.admit(key, 40, now=MARCH.replace(day=11)).ok
    refused = accounts.admit(key, 1, now=MARCH.replace(day=12))
    assert refused.status == 429 and "100 of 100 texts" in refused.reason
    assert refused.retry_after == int((datetime(2025, 4, 1, tzinfo=UTC) - MARCH.replace(day=12)).total_seconds())
    assert accounts.admit(key, 100, now=datetime(2025, 4, 1, tzinfo=UTC)).ok
    assert accounts.admit(key, 101, now=datetime(2025, 5, 1, tzinfo=UTC)).status == 429  # one request over the whole quota
    december = accounts.admit(key, 101, now=datetime(2025, 12, 31, 23, 59, 30, tzinfo=UTC))
    assert december.retry_after == 30  # next month is next year's January


def test_limits_hold_across_a_restart(accounts: Accounts, url: str) -> None:
    _, fast = accounts.create_key("fast", "small")
    _, heavy = accounts.create_key("heavy", "small")
    assert all(accounts.admit(fast, 1, now=MARCH).ok for _ in range(5)) and accounts.admit(heavy, 100, now=MARCH).ok
    accounts.close()
    again = Accounts(url, PLANS)
    again.migrate()
    assert again.admit(fast, 1, now=MARCH).status == 429 and again.admit(heavy, 1, now=MARCH.replace(day=20)).status == 429
    again.close()


def test_usage_cost_billed_and_margin(accounts: Accounts) -> None:
    _, small = accounts.create_key("acme", "small")
    _, big = accounts.create_key("bigco", "big")
    for key, n, cost, request in ((small, 3, 0.001, "r1"), (small, 7, 0.002, "r2"), (big, 4000, 0.05, "r3")):
        assert accounts.admit(key, n, now=MARCH).ok
        accounts.record(key, request, [f"text {i}" for i in range(n)], ["positive"] * n, "7", cost, now=MARCH)
    assert accounts.admit(small, 1, now=datetime(2025, 4, 2, tzinfo=UTC)).ok
    rows = {r.key_id: r for r in accounts.usage("2025-03")}
    s, b = rows[small.key_id], rows[big.key_id]
    assert (s.name, s.plan, s.month, s.requests, s.texts) == ("acme", "small", "2025-03", 2, 10)
    assert (s.cost_usd, s.billed_usd, s.margin_usd) == pytest.approx((0.003, 2.0 * 10 / 1000, 0.02 - 0.003))
    assert (b.requests, b.texts, b.billed_usd, b.margin_usd) == (1, 4000, pytest.approx(0.2), pytest.approx(0.15))
    assert [(r.month, r.requests) for r in accounts.usage() if r.key_id == small.key_id] == [("2025-03", 2), ("2025-04", 1)]
    with pytest.raises(AccountsError, match="not YYYY-MM"):
        accounts.usage("2025-3")


def test_feedback_by_text_and_by_request_id(accounts: Accounts) -> None:
    _, key = accounts.create_key("acme", "small")
    _, stranger = accounts.create_key("stranger", "small")
    accounts.record(key, "req-1", ["good day", "bad day"], ["positive", "positive"], "3", 0.0, now=MARCH)
    first = accounts.add_feedback(key, "neutral", text="so so", now=MARCH)
    second = accounts.add_feedback(key, "negative", request_id="req-1", index=1, now=MARCH)
    assert second > first
    rows = accounts.feedback_rows()
    assert [(r.text, r.label, r.key_id, r.created_at) for r in rows] == [
        ("so so", "neutral", key.key_id, MARCH),
        ("bad day", "negative", key.key_id, MARCH),
    ]
    for owner, request_id, index in ((key, "req-404", 0), (key, "req-1", 2), (stranger, "req-1", 0)):
        with pytest.raises(AccountsError, match="No text"):
            accounts.add_feedback(owner, "negative", request_id=request_id, index=index)
    with pytest.raises(AccountsError, match="neither a text nor a request_id"):
        accounts.add_feedback(key, "negative")
    assert len(accounts.feedback_rows()) == 2


def test_unknown_and_vanished_plans(accounts: Accounts, url: str) -> None:
    with pytest.raises(AccountsError, match="Unknown plan 'gold'") as caught:
        accounts.create_key("acme", "gold")
    assert "big, small" in caught.value.fix
    plaintext, key = accounts.create_key("acme", "small")
    fewer = Accounts(url, {"big": PLANS["big"]})  # "small" was removed from the config
    assert fewer.authenticate(plaintext) == key
    refused = fewer.admit(key, 1, now=MARCH)
    assert (refused.ok, refused.status) == (False, 403) and "'small'" in refused.reason
    fewer.close()


def test_migrate_twice_is_a_no_op_and_matches_the_models(accounts: Accounts) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    _, key = accounts.create_key("acme", "small")
    accounts.migrate()
    assert accounts.list_keys() == [key]
    with accounts.engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == [HEAD]
        context = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []  # models.py and migrations/ describe the same tables


MIGRATE = """
import sys, time
import alembic.command, alembic.config  # imported before the start line, so both really migrate at the same moment
from frugal.accounts.store import Accounts
store = Accounts(sys.argv[1], {})
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
store.migrate()
"""


@pytest.mark.slow
def test_two_processes_migrate_a_fresh_database_at_once(url: str) -> None:
    start_at = str(time.time() + 4)  # both have imported everything by then
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE, url, start_at], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    store = Accounts(url, PLANS)
    with store.engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == [HEAD]
    assert store.create_key("acme", "small")[1] in store.list_keys()
    store.close()


def test_a_group_of_admissions_is_decided_in_order_as_one_by_one(accounts: Accounts) -> None:
    """One transaction for many requests (the server's group commit) decides exactly what the same requests one by one would."""
    _, small = accounts.create_key("small", "small")  # 5 requests a minute, 100 texts a month
    _, big = accounts.create_key("big", "big")
    _, gone = accounts.create_key("gone", "big")
    accounts.revoke(gone.key_id)
    ghost = KeyInfo("fk_ghost", "ghost", "platinum", MARCH, None)  # a plan no longer in the config
    requests = [(small, 60), (big, 1), (small, 30), (small, 20), (gone, 1), (small, 10), (ghost, 1), (small, 0), (small, 0), (small, 0)]
    statuses = [a.status for a in accounts.admit_many(requests, now=MARCH)]
    # small: 60 ok, 30 ok (90), 20 over the quota (not counted), 10 ok (100), 0 and 0 ok (5 this minute), the 6th over the rate
    assert statuses == [200, 200, 200, 429, 401, 200, 403, 200, 200, 429]
    usage = {row.key_id: (row.requests, row.texts) for row in accounts.usage("2025-03")}
    assert usage == {small.key_id: (5, 100), big.key_id: (1, 1)}
    assert accounts.admit(small, 0, now=MARCH).status == 429  # the group's counts are in the database for the next one


def test_concurrent_admits_never_exceed_the_rate(accounts: Accounts) -> None:
    _, key = accounts.create_key("busy", "small")
    barrier = threading.Barrier(20)

    def one(_: int) -> int:
        barrier.wait()
        return accounts.admit(key, 1, now=MARCH).status

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(one, range(20)))
    assert sorted(statuses) == [200] * 5 + [429] * 15
    [row] = accounts.usage("2025-03")
    assert (row.requests, row.texts) == (5, 5)


def test_unusable_database_urls() -> None:
    for bad, message in (("not a url", "not a database URL"), ("mysql://u@h/db", "only SQLite and PostgreSQL")):
        with pytest.raises(AccountsError, match=message):
            Accounts(bad, PLANS)
    down = Accounts(f"postgresql://frugal:secret@127.0.0.1:{postgres.free_port()}/db", PLANS)
    with pytest.raises(AccountsError, match="Cannot open the accounts database") as caught:
        down.migrate()
    assert "secret" not in str(caught.value)


def _frugal(*args: str, project: Path, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FRUGAL_DATABASE_URL", "FRUGAL_PROJECT_DIR")}
    if database_url:
        env["FRUGAL_DATABASE_URL"] = database_url
    command = [sys.executable, "-m", "frugal.cli", *args, "--project-dir", str(project)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def _created(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """(key_id, plaintext) from the output of `frugal keys create`."""
    assert result.returncode == 0, result.stderr
    key_id = re.search(r"Created key (fk_[0-9a-f]{8})", result.stdout).group(1)
    return key_id, result.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_cli_keys_and_usage(tmp_path: Path) -> None:
    key_id, plaintext = _created(_frugal("keys", "create", "--name", "acme", "--plan", "starter", project=tmp_path))
    store = Accounts(f"sqlite:///{tmp_path / 'serve.db'}", load_settings("serve").plans)  # the default: serve.db in the project
    key = store.authenticate(plaintext)
    assert key is not None and (key.key_id, key.name, key.plan) == (key_id, "acme", "starter")
    listed = _frugal("keys", "list", project=tmp_path)
    assert listed.returncode == 0 and re.search(rf"{key_id}\s+acme\s+starter\s+\d{{4}}-\d\d-\d\d \d\d:\d\d\s+-", listed.stdout)

    assert store.admit(key, 3000, now=MARCH).ok  # starter: $0.05 per 1k texts
    store.record(key, "r1", ["t"] * 3000, ["positive"] * 3000, "1", 0.04, now=MARCH)
    usage = _frugal("usage", "--month", "2025-03", project=tmp_path)
    assert usage.returncode == 0, usage.stderr
    assert re.search(rf"{key_id}\s+acme\s+starter\s+1\s+3000\s+0\.040000\s+0\.150000\s+0\.110000", usage.stdout), usage.stdout
    [row] = store.usage("2025-03")
    assert (row.cost_usd, row.billed_usd, row.margin_usd) == pytest.approx((0.04, 0.15, 0.11))
    assert "No usage in 2025-02" in _frugal("usage", "--month", "2025-02", project=tmp_path).stdout

    revoked = _frugal("keys", "revoke", key_id, project=tmp_path)
    assert revoked.returncode == 0 and f"Revoked key {key_id}" in revoked.stdout
    assert store.authenticate(plaintext) is None and store.list_keys()[0].revoked_at is not None
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, problem",
    [
        (("keys", "create", "--name", "acme", "--plan", "gold"), "Unknown plan 'gold'"),
        (("keys", "revoke", "fk_00000000"), "No API key 'fk_00000000'"),
        (("usage", "--month", "March"), "Month 'March' is not YYYY-MM"),
        (("serve", "--workers", "0"), "workers: Input should be greater than 0"),
        (("serve", "-s", "max_wait_ms=-1"), "max_wait_ms: Input should be greater than or equal to 0"),
    ],
)
def test_cli_errors_are_one_message(tmp_path: Path, args: tuple[str, ...], problem: str) -> None:
    result = _frugal(*args, project=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("frugal: error:")]
    assert len(errors) == 1 and problem in errors[0], result.stderr


@pytest.mark.slow
def test_cli_database_url_from_the_environment(url: str, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    key_id, plaintext = _created(_frugal("keys", "create", "--name", "acme", "--plan", "pro", project=project, database_url=url))
    assert not (project / "serve.db").exists()
    store = Accounts(url, load_settings("serve").plans)
    assert store.authenticate(plaintext).key_id == key_id
    store.close()
    assert key_id in _frugal("keys", "list", project=project, database_url=url).stdout
