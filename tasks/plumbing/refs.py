"""The typed references stages hand each other, never local paths.

A data version is its DVC hash plus the MLflow artifact URI holding the splits; a model is the
MLflow run that logged it. A stage turns a reference into a local folder through
``tasks.plumbing.store``, so it runs the same on the machine that produced its input or on any worker.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


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
    machine: str | None = None  # the fingerprint of the machine its cost was measured on (frugal/hardware.py)
