"""The metering writer: answered requests go on the bill in batches, off the request's path.

Admission (the rate and the monthly text quota) stays a short write before the model runs (one per
group of requests that arrive together), so limits are exact across restarts and processes. What happens after the answer (its
cost and price on the month's bill, its texts kept for feedback by id) is queued here and written
by one thread every `flush_ms`, many requests per transaction. The bound: a SIGKILL loses at most
the requests answered in the last `flush_ms` plus one write (their texts were already counted
against the quota at admission, so no key gets more than its quota); a SIGTERM loses nothing, since
shutdown flushes. A failed write (database down) keeps the rows and tries again at the next flush.
"""

from __future__ import annotations

import logging
import threading

from frugal.accounts.store import Accounts, Served

log = logging.getLogger(__name__)


class Meter:
    def __init__(self, store: Accounts, flush_ms: float) -> None:
        self.store, self.flush_s = store, flush_ms / 1000
        self._pending: list[Served] = []
        self._lock = threading.Lock()  # guards _pending
        self._write_lock = threading.Lock()  # one write at a time: the thread's, or a caller's flush()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="frugal-meter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, served: Served) -> None:
        with self._lock:
            self._pending.append(served)

    def flush(self) -> None:
        """Write everything queued now (feedback citing a request just answered; shutdown)."""
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                self.store.record_many(batch)
            except Exception:
                with self._lock:  # keep them, oldest first, for the next try
                    self._pending[:0] = batch
                raise

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def stop(self) -> None:
        """Stop the thread and write what is left (the server's shutdown: a SIGTERM loses nothing)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except Exception as exc:
                log.error("Metering write failed, %d request(s) kept for the next try: %s", self.pending, exc)
