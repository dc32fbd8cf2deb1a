"""Adaptive batching (frugal/serve/batcher.py): concurrent requests share a batch and each gets exactly its own answers."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from frugal.serve.batcher import Batcher, BatchStats


class Model:
    """A model whose answer names its text and which run answered it; each run takes `seconds`."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds, self.runs = seconds, 0
        self.lock = threading.Lock()

    def __call__(self, texts: list[str]) -> list[tuple[str, int]]:
        with self.lock:
            self.runs += 1
            run = self.runs
        time.sleep(self.seconds)
        return [(text.upper(), run) for text in texts]


@pytest.fixture
def stats() -> list[BatchStats]:
    return []


def started(max_batch: int, max_wait_ms: float, stats: list[BatchStats]) -> Batcher:
    batcher = Batcher(max_batch, max_wait_ms, stats.append)
    batcher.start()
    return batcher


@pytest.mark.parametrize("max_wait_ms", [0, 20])
def test_concurrent_requests_of_different_sizes_get_their_own_answers_in_order(max_wait_ms: float, stats: list[BatchStats]) -> None:
    batcher, model = started(64, max_wait_ms, stats), Model()
    requests = [[f"r{r}-t{t}" for t in range(1 + r % 7)] for r in range(40)]
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda texts: batcher.run(model, texts), requests))
    finally:
        batcher.stop()
    for texts, answer in zip(requests, answers, strict=True):
        assert [text for text, _ in answer] == [t.upper() for t in texts]  # its own texts, in its order
        assert len({run for _, run in answer}) == 1  # one request is never split across runs
    assert model.runs < len(requests) and max(s.requests for s in stats) > 1  # they did share batches
    assert sum(s.items for s in stats) == sum(map(len, requests))


def test_a_batch_stops_collecting_at_max_batch(stats: list[BatchStats]) -> None:
    batcher, model = started(8, 200, stats), Model(0.05)
    try:
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(lambda i: batcher.run(model, [f"t{i}"] * 4), range(12)))
    finally:
        batcher.stop()
    assert max(s.items for s in stats) == 8  # two requests of 4, never three


def test_a_request_waits_at_most_max_wait_ms_plus_one_batch(stats: list[BatchStats]) -> None:
    """Alone, a request waits max_wait_ms for company; under load, also for the batch running when it came."""
    max_wait_ms, model = 100, Model(0.05)
    batcher = started(1000, max_wait_ms, stats)
    try:
        begun = time.monotonic()
        batcher.run(model, ["alone"])
        alone = time.monotonic() - begun
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: (time.sleep(i * 0.03), batcher.run(model, [f"t{i}"])), range(24)))
    finally:
        batcher.stop()
    assert max_wait_ms / 1000 <= alone < max_wait_ms / 1000 + 0.05 + 0.5  # its wait, one run, and slack for a busy machine
    longest_run = max(s.run_s for s in stats)
    assert all(s.waited_s <= max_wait_ms / 1000 + longest_run + 0.25 for s in stats), stats


def test_max_wait_zero_runs_what_is_queued_without_waiting(stats: list[BatchStats]) -> None:
    batcher, model = started(64, 0, stats), Model(0.0)
    try:
        begun = time.monotonic()
        batcher.run(model, ["alone"])
        assert time.monotonic() - begun < 0.5
    finally:
        batcher.stop()


def test_a_failing_model_fails_its_requests_and_the_batcher_carries_on(stats: list[BatchStats]) -> None:
    def broken(texts: list[str]) -> list[str]:
        raise RuntimeError("model fell over")

    batcher = started(64, 0, stats)
    try:
        with pytest.raises(RuntimeError, match="fell over"):
            batcher.run(broken, ["a"])
        assert batcher.run(Model(0), ["b"]) == [("B", 1)]
    finally:
        batcher.stop()


def test_a_short_answer_or_a_failing_hook_fails_the_batch_not_the_batcher() -> None:
    def short(texts: list[str]) -> list[str]:
        return texts[:-1]

    def broken_hook(stats: BatchStats) -> None:
        raise ValueError("metrics fell over")

    batcher: Batcher = Batcher(64, 0, broken_hook)
    batcher.start()
    try:
        with pytest.raises(RuntimeError, match="answered 1 of 2 items"):
            batcher.run(short, ["a", "b"])
        assert batcher.run(Model(0), ["c"]) == [("C", 1)]  # answered before the hook failed; the thread lives on
        assert batcher.run(Model(0), ["d"]) == [("D", 1)]
    finally:
        batcher.stop()


def test_requests_for_two_model_versions_in_one_batch_each_run_on_their_own(stats: list[BatchStats]) -> None:
    old, new = Model(0.05), Model(0.05)
    batcher = started(64, 100, stats)
    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: batcher.run(old if i % 2 else new, [f"t{i}"]), range(6)))
    finally:
        batcher.stop()
    assert [a[0][0] for a in answers] == [f"T{i}" for i in range(6)]
    assert old.runs >= 1 and new.runs >= 1 and old.runs + new.runs < 6  # batched, but never across versions


def test_stop_answers_what_is_queued() -> None:
    batcher: Batcher = Batcher(64, 1000)
    futures = [batcher.submit(Model(0), [f"t{i}"]) for i in range(3)]  # queued before the thread even starts
    batcher.start()
    batcher.stop()
    assert [f.result(timeout=5)[0][0] for f in futures] == ["T0", "T1", "T2"]
