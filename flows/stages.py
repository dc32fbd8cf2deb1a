"""The steps that may leave the parent flow, as flows a worker runs (`execution: workers`).

`frugal deploy` registers each of them once per work pool that config gives it
(flows/deploy.py); `tasks.dispatch` starts them with `run_deployment`. Each one only
connects to the parent's MLflow store and result storage and calls the same cached task
that local mode calls, so both modes share cache keys, MLflow runs and metric names.
The worker's own project folder (FRUGAL_PROJECT_DIR, else the code's folder) holds its
model cache and checkpoints; it never needs the parent's files.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from frugal.config import EvaluateConfig, FinetuneConfig, GenerateConfig, LocksConfig, ModelConfig, StepConfig
from frugal.logs import quiet_user_errors
from frugal.paths import ProjectPaths
from tasks.compress import StepSettings, compress_step
from tasks.dispatch import STAGES, storage_block
from tasks.evaluate import Measurement, measure_model
from tasks.finetune import finetune
from tasks.label_noise import NoiseRef
from tasks.plumbing import tracking
from tasks.plumbing.locks import serialised
from tasks.plumbing.refs import DataRef, ModelRef


def _on_worker(task: Any, tracking_uri: str, result_storage: str, locks: LocksConfig) -> tuple[Any, ProjectPaths]:
    """The task bound to the parent's result storage and locks, with this process connected to the parent's MLflow store."""
    quiet_user_errors()
    paths = ProjectPaths.resolve(None)
    tracking.connect(tracking_uri)
    return serialised(task, paths, locks).with_options(result_storage=storage_block(result_storage, paths)), paths


@flow(name=STAGES["finetune"].flow, log_prints=True)
def finetune_stage(
    data: DataRef, model: ModelConfig, train_cfg: FinetuneConfig, labels: list[str], seed: int, parent_run: str,
    tracking_uri: str, result_storage: str, locks: LocksConfig, noise: NoiseRef | None = None, generate_cfg: GenerateConfig | None = None,
) -> ModelRef:  # fmt: skip
    step, paths = _on_worker(finetune, tracking_uri, result_storage, locks)
    task = {"generate_cfg": generate_cfg} if generate_cfg is not None else {}  # task generate: the same cache key as in-process
    return step(data=data, model=model, train_cfg=train_cfg, labels=labels, seed=seed, paths=paths, parent_run=parent_run, noise=noise,
                **task)  # fmt: skip


@flow(name=STAGES["compress_step"].flow, log_prints=True)
def compress_step_stage(
    src: ModelRef, step: StepConfig, data: DataRef, settings: StepSettings, parent_run: str, tracking_uri: str, result_storage: str,
    locks: LocksConfig,
) -> ModelRef:  # fmt: skip
    run_step, paths = _on_worker(compress_step, tracking_uri, result_storage, locks)
    return run_step(src=src, step=step, data=data, settings=settings, paths=paths, parent_run=parent_run)


@flow(name=STAGES["measure"].flow, log_prints=True)
def measure_stage(
    model_uri: str, data: DataRef, evaluate_cfg: EvaluateConfig, tracking_uri: str, result_storage: str, locks: LocksConfig,
    generate_cfg: GenerateConfig | None = None,
) -> Measurement:  # fmt: skip
    measure, paths = _on_worker(measure_model, tracking_uri, result_storage, locks)
    task = {"generate_cfg": generate_cfg} if generate_cfg is not None else {}  # task generate (tasks/evaluate.py measure_inputs)
    return measure(model_uri=model_uri, data=data, evaluate_cfg=evaluate_cfg, paths=paths, **task)
