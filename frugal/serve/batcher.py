"""Adaptive batching: the texts of requests that arrive together are answered by one length-ordered batch.

The mechanism of Triton's dynamic batcher (or Ray Serve's `@serve.batch`), in one thread: a request's
texts join a queue; the batch thread takes the first waiting request, keeps collecting until it holds
`max_batch` texts or `max_wait_ms` have passed since that first request arrived, runs the whole lot
through the model (which sorts it by length into `batch_size` runs), and hands each request its own
rows back, in its order. One thread runs the model, so its `threads` are never shared by two batches
at once; requests that arrive while a batch runs wait for the next one (the "plus one batch" of the
latency bound). `max_wait_ms: 0` batches whatever is queued, without waiting for more.

Nothing here is about texts: the server's admissions go through a second Batcher, whose "model" is the
accounts store's `admit_many` (one transaction for the requests that arrive together: a group commit).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
Item = TypeVar("Item")  # a text for the model; an admission (key, texts) for the accounts store
Answer = TypeVar("Answer")
Model = Callable[[list[Item]], Sequence[Answer]]


@dataclass
class _Job(Generic[Item, Answer]):
    model: Model[Item, Answer]
    items: list[Item]
    future: Future[list[Answer]] = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchStats:
    """One batch, for metrics and the latency-bound test: how many requests and items, the longest wait, the run time."""

    requests: int
    items: int
    waited_s: float  # the first request's time in the queue before its batch started
    run_s: float


class Batcher(Generic[Item, Answer]):
    def __init__(self, max_batch: int, max_wait_ms: float, on_batch: Callable[[BatchStats], None] | None = None) -> None:
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[_Job[Item, Answer] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="frugal-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, model: Model[Item, Answer], items: list[Item]) -> Future[list[Answer]]:
        """Queue `items` for `model` (the version the request took: a reload mid-queue does not change its answer)."""
        job: _Job[Item, Answer] = _Job(model, list(items))
        self._queue.put(job)
        return job.future

    def run(self, model: Model[Item, Answer], items: list[Item]) -> list[Answer]:
        return self.submit(model, items).result()

    def stop(self) -> None:
        """Answer everything queued, then end the thread."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stopping = self._collect(first)
            self._answer_all(jobs)
            if stopping:
                self._answer_all(self._drain())
                return

    def _answer_all(self, jobs: list[_Job[Item, Answer]]) -> None:
        if not jobs:
            return
        try:
            self._answer(jobs)
        except Exception as exc:  # a bug past the model call must fail these requests, never hang every later one
            log.exception("Batch of %d request(s) failed", len(jobs))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)

    def _collect(self, first: _Job[Item, Answer]) -> tuple[list[_Job[Item, Answer]], bool]:
        """The first job and whatever joins it before the batch is full or the first job's wait is up."""
        jobs, size, deadline = [first], len(first.items), first.arrived + self.max_wait_s
        while size < self.max_batch:
            try:
                job = self._queue.get(timeout=max(deadline - time.monotonic(), 0)) if self.max_wait_s else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            size += len(job.items)
        return jobs, False

    def _drain(self) -> list[_Job[Item, Answer]]:
        """What was queued after the stop: answered too, so no request waits forever."""
        jobs = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)

    def _answer(self, jobs: list[_Job[Item, Answer]]) -> None:
        started = time.monotonic()
        for model in dict.fromkeys(job.model for job in jobs):  # one run per model version (a reload may split a batch)
            group = [job for job in jobs if job.model == model]  # == : bound methods of one object are equal, not identical
            items = [item for job in group for item in job.items]
            try:
                answers = list(model(items))
                if len(answers) != len(items):
                    raise RuntimeError(f"the model answered {len(answers)} of {len(items)} items")
            except Exception as exc:  # each request gets the error; the batch thread lives on
                for job in group:
                    job.future.set_exception(exc)
                continue
            offset = 0
            for job in group:
                job.future.set_result(answers[offset : offset + len(job.items)])
                offset += len(job.items)
        if self.on_batch is not None:
            stats = BatchStats(len(jobs), sum(len(j.items) for j in jobs), started - jobs[0].arrived, time.monotonic() - started)
            self.on_batch(stats)
