"""The Prefect task decorator every stage uses: its retry policy and, for a cached stage, its cache policy."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE, CachePolicy

from frugal.errors import FrugalError
from tasks.plumbing.caching import CodeOf, stage_policy


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures only: a user error fails the same way every time."""
    try:
        state.result()
    except FrugalError:
        return False
    except Exception:
        return True
    return True


def stage(
    *, name: str, retries: int = 0, retry_delay_seconds: float = 5, cached: bool = False, code_of: CodeOf | None = None,
    keyed_also: CachePolicy | None = None,
) -> Any:  # fmt: skip
    """The Prefect task decorator every stage uses.

    A `cached` stage's result is persisted (JSON) and reused by any later run with the same cache key
    (tasks/plumbing/caching.py: its inputs, and the code its module can run, plus `code_of(inputs)`,
    plus `keyed_also`, e.g. the measuring machine). Stages without it are cheap or record into the current run, and always run.
    """

    def decorate(fn: Any) -> Any:
        if not cached:
            return task(fn, name=name, retries=retries, retry_delay_seconds=retry_delay_seconds,
                        retry_condition_fn=_retry_unless_user_error, cache_policy=NO_CACHE, persist_result=False)  # fmt: skip
        return task(
            fn,
            name=name,
            retries=retries,
            retry_delay_seconds=retry_delay_seconds,
            retry_condition_fn=_retry_unless_user_error,
            cache_policy=stage_policy(fn.__module__, code_of, keyed_also),
            persist_result=True,
            result_serializer="json",  # results are references: readable, and loading them unpickles nothing
        )

    return decorate
