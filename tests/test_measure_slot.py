"""One timed measurement at a time (tasks/plumbing/measure_slot.py): the project's file lock always, and with a
Prefect server one slot of the global limit `frugal-measure`, which `frugal deploy` and the measure task create.

(That `frugal deploy` creates it against a real server: tests/test_workers.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from frugal.paths import ProjectPaths
from tasks.plumbing import measure_slot
from tasks.plumbing.measure_slot import MEASURE_LIMIT, measurement_slot


def held_by_another_process(paths: ProjectPaths) -> bool:
    """Whether the measuring file lock is taken (a fresh FileLock object contends like another process's)."""
    try:
        FileLock(str(paths.work / "locks" / "measure.lock"), is_singleton=False).acquire(timeout=0)
    except Timeout:
        return True
    return False


def test_without_a_prefect_server_the_file_lock_alone_serialises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = ProjectPaths.resolve(tmp_path)
    monkeypatch.setattr(measure_slot, "prefect_server", lambda: False)  # `frugal run` without PREFECT_API_URL
    monkeypatch.setattr(measure_slot, "ensure_limit", lambda name: pytest.fail("no server: no global limit"))
    with measurement_slot(paths):
        assert held_by_another_process(paths)
    assert not held_by_another_process(paths)


def test_with_a_prefect_server_a_measurement_holds_the_one_slot_of_the_global_limit(prefect_server: None, tmp_path: Path) -> None:
    from prefect import get_client

    assert measure_slot.prefect_server()  # the test harness's server sets PREFECT_API_URL, as a real one does

    def limit() -> tuple[int, int]:
        with get_client(sync_client=True) as client:
            found = client.read_global_concurrency_limit_by_name(MEASURE_LIMIT)
        return found.limit, found.active_slots

    paths = ProjectPaths.resolve(tmp_path)
    with measurement_slot(paths):  # creates the limit where `frugal deploy` has not
        assert limit() == (1, 1) and held_by_another_process(paths)
    assert limit() == (1, 0) and not held_by_another_process(paths)
