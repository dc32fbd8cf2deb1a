"""Config sections for running the pipeline: MLflow tracking, Prefect work pools, the retraining schedule."""

from __future__ import annotations

from pydantic import Field

from frugal.config._base import Strict


class TrackingConfig(Strict):
    tracking_uri: str | None = Field(description="MLflow tracking URI; null = SQLite file in the project (MLFLOW_TRACKING_URI wins).")
    experiment: str | None = Field(description="MLflow experiment; null = the config name.")
    registered_model: str | None = Field(description="Registry model name; null = frugal-<config name>.")


class WorkersConfig(Strict):
    """Which Prefect work pool runs which step in `execution: workers` (null = in the parent flow)."""

    finetune: str | None = Field(description="Pool for fine-tuning (a GPU pool).")
    heavy_steps: str | None = Field(description="Pool for compression steps that train or need a GPU (distill, prune, lora, nf4, half).")
    light_steps: str | None = Field(description="Pool for the other compression steps (quantization, export); null = parent flow.")
    measure: str | None = Field(description="Pool whose hardware matches evaluate.instance: where variants are measured.")
    pipeline: str = Field(description="Pool that runs the scheduled retraining flow (and so the light steps) after `frugal deploy`.")
    heartbeat_seconds: int = Field(
        ge=30, description="Flow runs on workers beat this often (Prefect's minimum: 30); 2.5 beats of silence = the step crashed."
    )
    start_timeout_seconds: int = Field(
        gt=0, description="Longest a step may wait for a worker of its pool to pick it up; then it is cancelled and the run fails."
    )
    timeout_seconds: int = Field(gt=0, description="Longest a step may wait on a worker, queueing included.")


class ScheduleConfig(Strict):
    cron: str | None = Field(description="Cron schedule of the retraining deployment (`frugal deploy`); null = no schedule.")
    timezone: str = Field(description="Time zone the cron is read in.")
