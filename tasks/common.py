"""What every stage shares: the Prefect task policy and the typed references stages hand each other.

Stages exchange references, never local paths: a data version is its DVC hash plus the
MLflow artifact URI holding the splits; a model is the MLflow run that logged it. A stage
turns a reference into a local folder through ``tasks.store``, so it runs the same on the
machine that produced its input or on any other worker.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from frugal.errors import FrugalError
from tasks.caching import stage_policy

SPLITS = ("train", "val", "test")


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures only: a user error fails the same way every time."""
    try:
        state.result()
    except FrugalError:
        return False
    except Exception:
        return True
    return True


def stage(*, name: str, retries: int = 0, retry_delay_seconds: float = 5, cached: tuple[str, ...] | None = None) -> Any:
    """The Prefect task decorator every stage uses.

    `cached` names the modules whose source is the stage's code version: such a stage's result
    is persisted (JSON) and reused by any later run with the same cache key (tasks/caching.py).
    Stages without it are cheap or record into the current run, and always run.
    """
    if cached is None:
        return task(name=name, retries=retries, retry_delay_seconds=retry_delay_seconds,
                    retry_condition_fn=_retry_unless_user_error, cache_policy=NO_CACHE, persist_result=False)  # fmt: skip
    return task(
        name=name,
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        retry_condition_fn=_retry_unless_user_error,
        cache_policy=stage_policy(cached),
        persist_result=True,
        result_serializer="json",  # results are references: readable, and loading them unpickles nothing
    )


class Ref(BaseModel):
    model_config = ConfigDict(frozen=True)


class DataRef(Ref):
    """A data version: the DVC hash of the prepared splits and the MLflow artifact URI that holds them."""

    md5: str
    uri: str
    rows: dict[str, int]


class ModelRef(Ref):
    """A model: the MLflow run that produced it (its artifact `model`), and the compute time that made it."""

    run_id: str
    seconds: float = 0.0

    @property
    def uri(self) -> str:
        return f"runs:/{self.run_id}/model"


class Variant(Ref):
    """One model the pipeline compares: the fine-tuned `baseline` or a compressed variant."""

    name: str
    model: ModelRef | None
    steps: tuple[str, ...] = ()  # run ids of the step runs that made it, the baseline first
    status: Literal["ok", "skipped", "failed"] = "ok"
    reason: str | None = None

    @property
    def train_seconds(self) -> float:
        return self.model.seconds if self.model else 0.0


class Scores(Ref):
    """A variant's measured quality and cost (the DESIGN.md metric names), logged on its variant run."""

    variant: str
    run_id: str
    metrics: dict[str, float]
