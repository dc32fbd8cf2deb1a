"""compress: build each variant from the baseline by applying its step, or its chain of steps.

The chains come planned (ml/compress/plan.py: methods looked up, options and formats checked).
Every step is one cached Prefect task (`compress_step`) keyed by its source model, its
options, the data version, the config sections it reads and the code of its own method: chains
that share a prefix, and reruns after a crash, reuse what is done through the same mechanism. Each step logs its
model on a step run of its own. A method that raises marks its variant failed and the other
variants go on; a method the hardware cannot run marks it skipped, with the reason.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from frugal.config import FinetuneConfig, GenerateConfig, ModelConfig, RunConfig, StepConfig
from frugal.errors import SkipVariant
from frugal.paths import ProjectPaths
from ml.checkpoints import checkpoint_dir
from ml.compress import CompressContext, method_module
from ml.compress.base import StepReport
from ml.compress.common import check_training_precision
from ml.compress.plan import Step, instance
from tasks.plumbing import store, tracking
from tasks.plumbing.refs import DataRef, ModelRef, Ref, Variant
from tasks.plumbing.stage import stage

log = logging.getLogger(__name__)
METHODS = "ml.compress.methods"  # discovered by the registry; a step runs its own method only


def step_code(inputs: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a step runs besides this module's closure: its method's module (and not the other methods)."""
    return (method_module(inputs["step"].method),), (METHODS,)


class StepSettings(Ref):
    """The config sections a compression step reads (part of its cache key)."""

    labels: list[str]
    seed: int
    train: FinetuneConfig  # template for recovery and distillation training
    model: ModelConfig  # the pretrained model (LoRA starts from it)
    serve_device: str
    serve_threads: int
    serve_batch_size: int
    tolerance: float  # select.tolerance: a method choosing between candidates (int8's race) keeps to it
    generate: GenerateConfig | None = None  # task generate only: prompt format and decoding (not in a classifier step's key)
    baseline: ModelRef | None = None  # task generate only: the fine-tuned model (speculative decoding's target)

    @classmethod
    def of(cls, cfg: RunConfig, baseline: ModelRef | None = None) -> StepSettings:
        e, generative = cfg.evaluate, cfg.task == "generate"
        return cls(
            labels=cfg.data.labels, seed=cfg.seed, train=cfg.finetune, model=cfg.model, serve_device=e.device, serve_threads=e.threads,
            serve_batch_size=e.batch_size, tolerance=cfg.select.tolerance, generate=cfg.generate if generative else None,
            baseline=baseline if generative else None,
        )  # fmt: skip


def context(settings: StepSettings, data_dir: Path, paths: ProjectPaths, checkpoint: Path | None = None) -> CompressContext:
    return CompressContext(
        data=data_dir, labels=settings.labels, seed=settings.seed, train=settings.train, model=settings.model,
        serve_device=settings.serve_device, serve_threads=settings.serve_threads, serve_batch_size=settings.serve_batch_size,
        tolerance=settings.tolerance, scratch=paths.work / "scratch", checkpoint=checkpoint, generate=settings.generate,
        baseline=store.model_dir(settings.baseline, paths) if settings.baseline else None,
    )  # fmt: skip


@stage(name="compress_step", cached=True, code_of=step_code)
def compress_step(src: ModelRef, step: StepConfig, data: DataRef, settings: StepSettings, paths: ProjectPaths, parent_run: str) -> ModelRef:
    """Apply one method to the model `src`; log its options, report and model on a step run."""
    method = instance(step)
    check_training_precision(method.options, settings.train)  # on the machine that trains, before a step run exists
    ckpt = checkpoint_dir(paths, step.method, src, step, data.md5, settings) if method.heavy else None
    ctx = context(settings, store.data_dir(data, paths), paths, ckpt)
    tags = {"kind": "step", "step": step.method, "source_run": src.run_id}
    with tracking.nested_run(parent_run, step.method, tags) as run_id, tempfile.TemporaryDirectory() as tmp:
        options = {f"option.{k}": v for k, v in method.options.model_dump().items()}
        tracking.log_params(run_id, {"method": step.method, **options})
        started = time.perf_counter()
        report = method.apply(store.model_dir(src, paths), Path(tmp) / "model", ctx) or StepReport()
        seconds = time.perf_counter() - started
        tracking.log_params(run_id, report.params)
        tracking.log_metrics(run_id, {**report.metrics, "step_seconds": seconds})
        tracking.log_history(run_id, report.history)
        if report.notes:
            tracking.set_tags(run_id, {"notes": " ".join(report.notes)})
        tracking.log_dir(run_id, Path(tmp) / "model", "model")
    if ckpt is not None:
        shutil.rmtree(ckpt, ignore_errors=True)
    return ModelRef(run_id=run_id, seconds=seconds)


StepRunner = Callable[..., ModelRef]


def build_variant(
    name: str, steps: list[Step], baseline: ModelRef, data: DataRef, cfg: RunConfig, paths: ProjectPaths, parent_run: str,
    run_step: StepRunner = compress_step,
) -> Variant:  # fmt: skip
    """Run a variant's planned steps in order; never raises for a method's own failure (see module docstring)."""
    settings = StepSettings.of(cfg, baseline)
    for step in steps:
        reason = step.method.unsupported(cfg.evaluate.device)
        if reason:
            log.warning("Variant %s skipped: %s", name, reason)
            return Variant(name=name, model=None, status="skipped", reason=reason)
    model, runs, seconds = baseline, [baseline.run_id], 0.0
    try:
        for step in steps:
            model = run_step(src=model, step=step.config, data=data, settings=settings, paths=paths, parent_run=parent_run)
            runs.append(model.run_id)
            seconds += model.seconds
    except SkipVariant as skip:
        log.warning("Variant %s skipped: %s", name, skip.reason)
        return Variant(name=name, model=None, steps=tuple(runs), status="skipped", reason=skip.reason)
    except Exception as exc:  # a broken method must not sink the other variants
        log.error("Variant %s failed: %s: %s", name, type(exc).__name__, exc)
        return Variant(name=name, model=None, steps=tuple(runs), status="failed", reason=f"{type(exc).__name__}: {exc}")
    return Variant(name=name, model=model.model_copy(update={"seconds": seconds}), steps=tuple(runs))
