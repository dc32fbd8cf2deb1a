"""One run at a time per cache key: Prefect's SERIALIZABLE cache isolation, with locks a killed process gives back.

Two runs that need the same step at the same moment (two retrains, two users) would both
compute it and write the same checkpoint folder. With `serialised(task, paths, locks)` the second
waits for the first's lock on the step's cache key, then finds its result in the cache.

Which locks (`lock_url`): FRUGAL_LOCK_URL as set, else the config's `locks.url`, else none.
- No URL, the embedded default: OS file locks in the project's `.frugal/locks`, released by the
  kernel the moment their holder dies (Prefect's FileSystemLockManager keeps a SIGKILLed holder's
  lock until it expires: never, by default). They serialise the processes of one machine.
- A Redis URL: one lock per key on that server for every machine sharing the result storage
  (tasks/plumbing/redis_locks.py). A live holder renews it; a killed one's is free after at most
  `locks.expire_seconds` (30 s by default).
"""

from __future__ import annotations

import os
import threading
from functools import cache
from pathlib import Path
from typing import Any

import anyio.to_thread
from filelock import FileLock, Timeout
from redis.exceptions import RedisError

from frugal.config import LocksConfig
from frugal.config.operations import REDIS_SCHEMES, redis_url
from frugal.errors import ConfigError
from frugal.paths import ProjectPaths
from tasks.plumbing.redis_locks import RenewedRedisLockManager

LOCK_URL_ENV = "FRUGAL_LOCK_URL"


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


def lock_url(locks: LocksConfig) -> str | None:
    """The one rule: FRUGAL_LOCK_URL as set (a team stack's machines share it), else the config's `locks.url`; None = file locks."""
    url = os.environ.get(LOCK_URL_ENV) or locks.url
    if url is None:
        return None
    try:
        return redis_url(url)
    except ValueError:  # only the environment's can be wrong here (the schema checked locks.url); not echoed: it may hold a password
        raise ConfigError(f"{LOCK_URL_ENV} is not a Redis URL: it must start with one of {', '.join(REDIS_SCHEMES)}",
                          f"set {LOCK_URL_ENV} to redis://HOST:6379/0, or unset it for file locks (one machine)") from None  # fmt: skip


@cache
def redis_locks(url: str, expire_s: float) -> RenewedRedisLockManager:
    """One manager (its connections, its renewal threads) per URL in a process, checked reachable when first made."""
    try:
        manager = RenewedRedisLockManager(url, expire_s)
        manager.client.ping()
    except (RedisError, ValueError) as exc:  # neither redis-py's nor prefect-redis's messages print the URL (and its password)
        where = f"{LOCK_URL_ENV} or locks.url"
        raise ConfigError(f"The lock server ({where}) does not answer: {type(exc).__name__}: {exc}",
                          f"start the Redis server, correct {where}, or unset both for file locks (one machine)") from None  # fmt: skip
    return manager


def serialised(task: Any, paths: ProjectPaths, locks: LocksConfig) -> Any:
    """The cached stage task, run under a lock on its cache key (see the module docstring)."""
    url = lock_url(locks)
    manager = ProcessLockManager(paths.work / "locks") if url is None else redis_locks(url, locks.expire_seconds)
    policy = task.cache_policy.configure(isolation_level="SERIALIZABLE", lock_manager=manager)
    return task.with_options(cache_policy=policy)
