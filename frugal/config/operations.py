"""Config sections for running the pipeline: MLflow tracking, Prefect work pools, step locks, the retraining schedule."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

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
    crash_retries: int = Field(
        ge=0, description="A step whose worker died (heartbeats stopped) is submitted again this often (another worker takes it)."
    )


REDIS_SCHEMES = ("redis://", "rediss://", "redis+sentinel://", "rediss+sentinel://", "unix://")


def redis_url(value: str) -> str:
    """A Redis URL prefect-redis can connect to; anything else is refused here rather than at the first step."""
    if not value.startswith(REDIS_SCHEMES):
        raise ValueError(f"{value!r} is not a Redis URL: it must start with one of {', '.join(REDIS_SCHEMES)}")
    return value


class LocksConfig(Strict):
    """Who may compute a cached step: one run at a time per cache key (tasks/plumbing/locks.py)."""

    url: str | None = Field(
        description="null = OS file locks in .frugal/locks (the processes of one machine); a Redis URL (redis://host:6379/0) = "
        "one lock for every machine sharing the result storage. FRUGAL_LOCK_URL wins over it."
    )
    expire_seconds: float = Field(
        ge=1, description="A Redis lock its holder stops renewing (killed, cut off) is free after at most this; renewed every third."
    )

    @field_validator("url")
    @classmethod
    def _redis_without_password(cls, value: str | None) -> str | None:
        if value is None:
            return value
        # The resolved config is logged to MLflow and passed to workers as a flow parameter: no password in it.
        if re.match(r"[^:/]+://[^/@]*:[^/@]*@", value):
            raise ValueError("a password in the URL would be logged with the config; give the whole URL in FRUGAL_LOCK_URL instead")
        return redis_url(value)


class ScheduleConfig(Strict):
    cron: str | None = Field(description="Cron schedule of the retraining deployment (`frugal deploy`); null = no schedule.")
    timezone: str = Field(description="Time zone the cron is read in.")
