"""Step locks on a Redis server, shared by every machine: prefect-redis's lock manager, plus renewal.

prefect-redis's `RedisLockManager` holds a lock with the expiry Prefect passes as `hold_timeout`, and
Prefect's transactions pass none: a lock whose holder was SIGKILLed would then never be freed. A
fixed expiry is no better: longer than the longest step (hours of fine-tuning) leaves a killed
worker's step blocked that long, shorter lets a second machine start a step the first is still
computing. So each lock here expires `expire_s` after it was last renewed, and a thread of the
holder renews it every `expire_s / 3` while the process lives: a killed (or cut-off) holder's lock
is free at most `expire_s` after its death (+ the waiters' 0.1 s poll), a live one keeps it for as
long as its step runs.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import anyio.to_thread
from prefect_redis import RedisLockManager
from prefect_redis.connection import redis_from_url
from redis.exceptions import LockNotOwnedError, RedisError
from redis.lock import Lock

log = logging.getLogger(__name__)


class RenewedRedisLockManager(RedisLockManager):
    """Prefect's LockManager protocol on Redis; a held lock lives `expire_s` past its holder's last renewal."""

    def __init__(self, url: str, expire_s: float) -> None:
        self.expire_s = expire_s
        self._renewals: dict[str, tuple[threading.Event, threading.Thread]] = {}
        super().__init__(connection_url=url)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "expire_s": self.expire_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._renewals = {}
        super().__setstate__(state)

    def _init_clients(self) -> None:
        # A renewal must fail and retry, not hang, while Redis is unreachable: bounded socket waits (the URL's options win).
        timeouts = {"socket_timeout": self.expire_s / 3, "socket_connect_timeout": self.expire_s / 3}
        self.client = redis_from_url(self.connection_url, **timeouts)
        self.async_client = redis_from_url(self.connection_url, asynchronous=True, **timeouts)

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None) -> bool:
        if not super().acquire_lock(key, holder, acquire_timeout, self.expire_s):
            return False
        name = self._lock_name_for_key(key)
        if name not in self._renewals:
            stop = threading.Event()
            renewer = threading.Thread(target=self._renew, args=(self._locks[name], stop), name=f"renew-{name}", daemon=True)
            self._renewals[name] = (stop, renewer)
            renewer.start()
        return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None) -> bool:
        # The sync lock in a thread: prefect-redis's async lock cannot be released by Prefect's sync `release_lock`.
        return await anyio.to_thread.run_sync(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        name = self._lock_name_for_key(key)
        if name in self._renewals:  # stopped first, so that no renewal races the release
            stop, renewer = self._renewals.pop(name)
            stop.set()
            renewer.join()
        try:
            super().release_lock(key, holder)
        except LockNotOwnedError:  # it expired while held (warned by the renewer): nothing of ours is left to release
            self._locks.pop(name, None)

    def _renew(self, lock: Lock, stop: threading.Event) -> None:
        while not stop.wait(self.expire_s / 3):
            try:
                lock.reacquire()
            except LockNotOwnedError:
                log.warning("Lost the lock %s: not renewed for %.0f s (Redis unreachable, or this process stalled); another "
                            "run may now compute the same step", lock.name, self.expire_s)  # fmt: skip
                return
            except RedisError as exc:  # unreachable for now: try again next time, the lock may still be ours
                log.warning("Could not renew the lock %s (%s: %s); retrying", lock.name, type(exc).__name__, exc)
