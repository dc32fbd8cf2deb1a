"""Step locks (tasks/plumbing/locks.py): two processes needing the same cached step compute it once, with the
embedded file locks and with a Redis server of our own (tools/redis_server.py; skipped, with the reason, where
redis-server is not installed); a SIGKILLed holder's Redis lock is free within `locks.expire_seconds`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import prefect.settings
import pytest
from prefect import task
from prefect.cache_policies import INPUTS

from frugal.config import LocksConfig, load_config
from frugal.errors import ConfigError
from frugal.paths import ProjectPaths
from tasks.plumbing.locks import LOCK_URL_ENV, ProcessLockManager, lock_url, redis_locks, serialised
from tasks.plumbing.redis_locks import RenewedRedisLockManager
from tools import redis_server  # on the path by conftest.py

# One process's run of a cached step through `serialised`: both wait at a barrier, then call the step at once.
STEP = """
import os, sys, time
from pathlib import Path
from prefect import task
from prefect.cache_policies import INPUTS
from frugal.config import LocksConfig
from frugal.paths import ProjectPaths
from tasks.plumbing.locks import serialised

out, url = Path(sys.argv[1]), sys.argv[2] or None

@task(cache_policy=INPUTS, persist_result=True, result_storage=out / "results")
def step(x: int) -> int:
    with open(out / "computed", "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(1.5)  # long enough that the other process asks while this one computes
    return 2 * x

run = serialised(step, ProjectPaths(out), LocksConfig(url=url, expire_seconds=30))
(out / f"ready-{os.getpid()}").touch()
while len(list(out.glob("ready-*"))) < 2:
    time.sleep(0.01)
print("result", run(x=21))
"""

# A process that takes the lock on `key` and holds it (renewed) until it is killed.
HOLD = """
import sys, time
from tasks.plumbing.redis_locks import RenewedRedisLockManager
manager = RenewedRedisLockManager(sys.argv[1], float(sys.argv[2]))
assert manager.acquire_lock("key", "holder-1")
print("held", flush=True)
time.sleep(600)
"""


@task(cache_policy=INPUTS)
def _noop() -> None:
    """A cached task, only to see which lock manager `serialised` gives it."""


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    try:
        with redis_server.server() as url:
            yield url
    except redis_server.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_two_processes_needing_the_same_cached_step_compute_it_once(
    backend: str, prefect_server: None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("redis_url") if backend == "redis" else ""
    env = {**os.environ, "PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value())}
    env.pop(LOCK_URL_ENV, None)
    procs = [subprocess.Popen([sys.executable, "-c", STEP, str(tmp_path), url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert [out.split()[-1] for out, _ in outs] == ["42", "42"]
    assert len((tmp_path / "computed").read_text().split()) == 1  # the second waited for the lock, then read the cache


def test_a_killed_holders_redis_lock_is_free_within_expire_seconds(redis_url: str) -> None:
    expire_s = 1.0  # the schema's smallest: the test's cost
    holder = subprocess.Popen([sys.executable, "-c", HOLD, redis_url, str(expire_s)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        other = RenewedRedisLockManager(redis_url, expire_s)
        # Renewed while its holder lives: still held well past one expiry.
        assert not other.acquire_lock("key", "holder-2", acquire_timeout=expire_s * 1.5)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        killed = time.monotonic()
        assert other.acquire_lock("key", "holder-2", acquire_timeout=expire_s * 3)
        handed_over = time.monotonic() - killed
        other.release_lock("key", "holder-2")
    finally:
        holder.kill()
        holder.wait()
    assert handed_over <= expire_s + 0.5, f"the lock was free {handed_over:.2f} s after its holder was killed"


def test_a_live_holder_keeps_the_lock_and_gives_it_back(redis_url: str) -> None:
    a, b = RenewedRedisLockManager(redis_url, 1.0), RenewedRedisLockManager(redis_url, 1.0)
    assert a.acquire_lock("k2", "a")
    assert a.acquire_lock("k2", "a")  # re-entrant for its holder
    assert not b.acquire_lock("k2", "b", acquire_timeout=1.5)
    a.release_lock("k2", "a")
    assert b.acquire_lock("k2", "b", acquire_timeout=0.5)
    b.release_lock("k2", "b")
    assert not b.is_locked("k2")


def test_which_locks_the_environment_wins_over_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(LOCK_URL_ENV, raising=False)
    default = load_config("smoke").locks
    assert lock_url(default) is None  # the embedded default: file locks
    assert lock_url(LocksConfig(url="redis://cfg:6379/0", expire_seconds=30)) == "redis://cfg:6379/0"
    monkeypatch.setenv(LOCK_URL_ENV, "redis://:secret@stack-redis:6379/0")
    assert lock_url(default) == "redis://:secret@stack-redis:6379/0"
    monkeypatch.setenv(LOCK_URL_ENV, "http://:secret@stack-redis:6379")
    with pytest.raises(ConfigError, match=f"{LOCK_URL_ENV} is not a Redis URL") as err:
        lock_url(default)
    assert "secret" not in str(err.value)
    monkeypatch.delenv(LOCK_URL_ENV)
    assert isinstance(serialised(_noop, ProjectPaths(tmp_path), default).cache_policy.lock_manager, ProcessLockManager)


def test_a_bad_locks_setting_is_one_message() -> None:
    with pytest.raises(ConfigError, match="give the whole URL in FRUGAL_LOCK_URL"):
        load_config("smoke", ["locks.url=redis://:secret@redis:6379/0"])
    with pytest.raises(ConfigError, match="is not a Redis URL"):
        load_config("smoke", ["locks.url=localhost:6379"])
    port = redis_server.free_port()
    with pytest.raises(ConfigError, match="does not answer") as err:
        redis_locks(f"redis://127.0.0.1:{port}/0", 3.0)
    assert "Fix: start the Redis server" in str(err.value)
