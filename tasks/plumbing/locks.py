"""One run at a time per cache key: Prefect's SERIALIZABLE cache isolation, with locks a killed process gives back.

Two runs that need the same step at the same moment (two retrains, two users) would both
compute it and write the same checkpoint folder. With `serialised(task, paths)` the second
waits for the first's lock on the step's cache key, then finds its result in the cache.
Prefect's FileSystemLockManager keeps a lock whose holder was SIGKILLed until it expires
(never, by default); these are OS file locks, released by the kernel when the holder dies.
Locks live in the project's `.frugal/locks`, so they serialise the processes of one
machine; a multi-machine stack needs a shared lock manager (e.g. prefect-redis).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio.to_thread
from filelock import FileLock, Timeout

from frugal.paths import ProjectPaths


class ProcessLockManager:
    """Prefect's LockManager protocol over `filelock` (flock: per open file, released on process exit)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._held: dict[str, tuple[str, FileLock]] = {}
        self._guard = threading.Lock()

    def _lock(self, key: str) -> FileLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.directory / f"{key}.lock"), thread_local=False, is_singleton=False)

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None) -> bool:
        with self._guard:
            if key in self._held and self._held[key][0] == holder:
                return True
        lock = self._lock(key)
        try:
            lock.acquire(timeout=-1 if acquire_timeout is None else acquire_timeout)
        except Timeout:
            return False
        with self._guard:
            self._held[key] = (holder, lock)
        return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None) -> bool:
        return await anyio.to_thread.run_sync(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        with self._guard:
            if key not in self._held or self._held[key][0] != holder:
                raise ValueError(f"No lock held by {holder} for transaction with key {key}")
            _, lock = self._held.pop(key)
        lock.release()

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        if key in self._held:
            return True
        probe = self._lock(key)
        try:
            probe.acquire(timeout=0)
        except Timeout:
            return True
        probe.release()
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        return key in self._held and self._held[key][0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        if key in self._held:
            return False
        probe = self._lock(key)
        try:
            probe.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            return False
        probe.release()
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)


def serialised(task: Any, paths: ProjectPaths) -> Any:
    """The cached stage task, run under a lock on its cache key (see the module docstring)."""
    policy = task.cache_policy.configure(isolation_level="SERIALIZABLE", lock_manager=ProcessLockManager(paths.work / "locks"))
    return task.with_options(cache_policy=policy)
