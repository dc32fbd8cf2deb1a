"""The metering writer (frugal/serve/meter.py) and `record_many`, on SQLite and PostgreSQL: batched bills add up to the
same usage as one write per request, a flush failure keeps the rows, and a stop writes everything."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import MARCH
from sqlalchemy import text

from frugal.accounts.store import Accounts, Served
from frugal.serve.meter import Meter


def served(key, n: int, request: str, cost: float = 0.001) -> Served:
    return Served(key, request, [f"{request} text {i}" for i in range(n)], ["positive"] * n, "7", cost, MARCH)


def test_record_many_bills_the_same_as_record_one_by_one(accounts: Accounts) -> None:
    _, one = accounts.create_key("one-by-one", "small")
    _, many = accounts.create_key("batched", "small")
    requests = [(3, "a"), (1, "b"), (5, "c")]
    for n, request in requests:
        accounts.record(one, f"one-{request}", [f"t{i}" for i in range(n)], ["positive"] * n, "7", 0.001 * n, now=MARCH)
    accounts.record_many([served(many, n, f"many-{request}", 0.001 * n) for n, request in requests])
    by_key = {row.key_id: row for row in accounts.usage("2025-03")}
    first, second = by_key[one.key_id], by_key[many.key_id]
    assert (second.cost_usd, second.billed_usd) == pytest.approx((first.cost_usd, first.billed_usd))
    assert second.billed_usd == pytest.approx(9 * 2.0 / 1000)
    accounts.add_feedback(many, "neutral", request_id="many-c", index=4)  # the served texts are there to cite
    assert accounts.feedback_rows()[-1].text == "many-c text 4"


def test_the_meter_writes_within_its_flush_interval_and_stop_writes_the_rest(accounts: Accounts) -> None:
    _, key = accounts.create_key("metered", "big")
    meter = Meter(accounts, flush_ms=100)
    meter.start()
    meter.add(served(key, 2, "r1"))
    deadline = time.monotonic() + 5
    while not accounts.usage("2025-03") and time.monotonic() < deadline:  # written by the meter's own thread
        time.sleep(0.02)
    assert meter.pending == 0 and accounts.usage("2025-03")[0].cost_usd == pytest.approx(0.001)
    meter.add(served(key, 1, "r2"))
    meter.stop()  # what a SIGTERM's shutdown does
    assert accounts.usage("2025-03")[0].cost_usd == pytest.approx(0.002)


def test_a_failed_write_keeps_the_rows_for_the_next_flush(accounts: Accounts) -> None:
    _, key = accounts.create_key("patient", "big")
    meter = Meter(accounts, flush_ms=60_000)  # flushed by hand here
    meter.add(served(key, 2, "r1"))
    with accounts.engine.begin() as conn:
        conn.execute(text("ALTER TABLE served_texts RENAME TO served_texts_away"))
    try:
        with pytest.raises(Exception, match="served_texts"):
            meter.flush()
        assert meter.pending == 1 and accounts.usage("2025-03") == []  # nothing half-written: no bill without its rows
    finally:
        with accounts.engine.begin() as conn:
            conn.execute(text("ALTER TABLE served_texts_away RENAME TO served_texts"))
    meter.add(served(key, 1, "r2"))
    meter.flush()
    assert meter.pending == 0 and accounts.usage("2025-03")[0].billed_usd == pytest.approx(3 * 0.05 / 1000)


def test_writers_and_admits_of_the_same_keys_at_once_never_deadlock(accounts: Accounts) -> None:
    """Two writers (two server processes) billing the same keys while admits lock them: every write lands."""
    keys = [accounts.create_key(f"k{i}", "big")[1] for i in range(3)]
    stop = threading.Event()

    def admit_loop() -> None:
        while not stop.is_set():
            for key in keys:
                accounts.admit(key, 1, now=MARCH)

    def write(batch: int) -> None:
        accounts.record_many([served(keys[(batch + i) % 3], 1, f"b{batch}-{i}") for i in range(6)])

    admitting = threading.Thread(target=admit_loop)
    admitting.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(write, range(40)))
    finally:
        stop.set()
        admitting.join()
    assert sum(row.cost_usd for row in accounts.usage("2025-03")) == pytest.approx(40 * 6 * 0.001)
