"""What every stage shares: the Prefect task decorator policy and the typed hand-offs between stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from frugal.errors import FrugalError

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


def stage(*, retries: int = 0, retry_delay_seconds: float = 5, name: str | None = None) -> Any:
    """The Prefect task decorator every stage uses. No result caching: reruns recompute (checkpoints resume)."""
    return task(
        name=name,
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        retry_condition_fn=_retry_unless_user_error,
        cache_policy=NO_CACHE,
        persist_result=False,
    )


@dataclass(frozen=True)
class Splits:
    """Prepared train/val/test Parquet files. `md5` is the DVC hash once the data is versioned."""

    dir: Path
    rows: dict[str, int]
    md5: str | None = None

    def path(self, split: str) -> Path:
        return self.dir / f"{split}.parquet"


@dataclass(frozen=True)
class Variant:
    """One model the pipeline produced: the fine-tuned baseline or a compressed variant."""

    name: str
    run_id: str
    model_dir: Path | None
    status: Literal["ok", "skipped", "failed"] = "ok"
    reason: str | None = None
    parents: tuple[str, ...] = ()
    train_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        return f"runs:/{self.run_id}/model"


@dataclass(frozen=True)
class Scores:
    """A variant's measured quality and cost (the DESIGN.md metric names)."""

    variant: str
    run_id: str
    metrics: dict[str, float]
