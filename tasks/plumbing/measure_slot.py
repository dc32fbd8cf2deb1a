"""One timed measurement at a time: what two measurements sharing a machine's cores would both get wrong.

Two measurements at once each see some of the other's load, and differ by more than the 5 %
promotion margin. The slot is taken around the timed process only (tasks/evaluate.py), not
around a cached lookup or the model's download, and it is two locks, always in this order:

- a file lock in the project (`.frugal/locks/measure.lock`): the processes sharing the project
  folder, a local run and a worker on one machine; the kernel frees it when its holder dies.
- with a Prefect server (PREFECT_API_URL), one slot of the global concurrency limit
  `frugal-measure` (created with 1 slot, by `frugal deploy` too): every measurement of the
  measure pool, on every worker and machine. A leased slot, not a work-queue limit: a killed
  worker's lease stops being renewed and the server's repossessor frees the slot within
  LEASE_SECONDS, where a work-queue slot stays taken by a flow run left RUNNING until someone
  ends it (and a run queued behind a work-queue limit looks to the parent like a run no worker
  picked up). Without a server it is skipped: Prefect's temporary server runs no repossessor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from filelock import FileLock

from frugal.paths import ProjectPaths
from tasks.plumbing.limits import ensure_limit

MEASURE_LIMIT = "frugal-measure"
LEASE_SECONDS = 120  # renewed every 90 s while the holder lives; a dead holder's slot is free again after this
WAIT_SECONDS = 3600  # a queue of other runs' measurements; past this the measurement fails rather than hang


def prefect_server() -> bool:
    """Whether Prefect talks to a server of its own (PREFECT_API_URL), not the temporary one it starts without it."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


@contextlib.contextmanager
def measurement_slot(paths: ProjectPaths) -> Iterator[None]:
    """Hold the machine's and the pool's one measuring slot (see the module docstring)."""
    (paths.work / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(paths.work / "locks" / "measure.lock")):  # first, in every process: no two wait on each other
        if not prefect_server():
            yield
            return
        from prefect.concurrency.sync import concurrency

        ensure_limit(MEASURE_LIMIT)
        with concurrency(MEASURE_LIMIT, occupy=1, lease_duration=LEASE_SECONDS, timeout_seconds=WAIT_SECONDS):
            yield
