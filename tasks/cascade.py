"""cascade: `{cascade: [cheap, strong]}` variants, which route each text to the cheap variant when it is sure, else the strong one.

Built after the step chains, in the parent flow (a cascade only reads two finished models and
runs them over the val split: light work, no pool needed). The threshold is calibrated on the
val split (ml/cascade.py); a cascade whose calibration finds no worthwhile threshold is recorded
as *skipped* with the figures. A `threshold` in the config is used as given.

The cascade is then measured on the test split like every variant (tasks/evaluate.py), its
measured deferral share reported as `deferred_share` (the cascade format's extra_metrics).
Task generate runs its own body in the same stage (tasks/cascade_generate.py: routed by the cheap part's mean log-prob).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from frugal.config import CascadeConfig, RunConfig
from frugal.errors import SkipVariant
from frugal.paths import ProjectPaths
from ml.cascade import at_threshold, calibrate, macro_f1, val_proba, write_cascade
from tasks.cascade_generate import GenerateCascadeSettings, generative_cascade
from tasks.plumbing import store, tracking
from tasks.plumbing.locks import serialised
from tasks.plumbing.refs import DataRef, ModelRef, Ref, Variant
from tasks.plumbing.stage import stage

log = logging.getLogger(__name__)


class CascadeSettings(Ref):
    """The config a cascade build reads (part of its cache key)."""

    labels: list[str]
    tolerance: float
    threads: int
    batch_size: int
    device: str
    generate: GenerateCascadeSettings | None = None  # task generate: how its val prompts are answered and scored

    @classmethod
    def of(cls, cfg: RunConfig) -> CascadeSettings:
        e = cfg.evaluate
        generate = GenerateCascadeSettings.of(cfg) if cfg.task == "generate" else None
        return cls(labels=cfg.data.labels, tolerance=cfg.select.tolerance, threads=e.threads, batch_size=e.batch_size, device=e.device,
                   generate=generate)  # fmt: skip


@stage(name="cascade", cached=True)
def cascade_model(
    cheap: ModelRef, strong: ModelRef, baseline: ModelRef, spec: CascadeConfig, data: DataRef, settings: CascadeSettings,
    paths: ProjectPaths, parent_run: str,
) -> ModelRef:  # fmt: skip
    """Calibrate the threshold on val, write the cascade folder and log it on a `cascade` step run."""
    if settings.generate is not None:
        return generative_cascade(cheap, strong, baseline, spec, data, settings.generate, paths, parent_run)
    started = time.perf_counter()
    val = pd.read_parquet(store.data_dir(data, paths) / "val.parquet")
    texts, truth = list(val["text"]), np.array([settings.labels.index(label) for label in val["label"]])
    models = {ref.run_id: ref for ref in (cheap, strong, baseline)}  # the baseline is often a part: predict it once
    proba = {run: val_proba(store.model_dir(ref, paths), texts, settings.threads, settings.device, settings.batch_size)
             for run, ref in models.items()}  # fmt: skip
    floor = macro_f1(proba[baseline.run_id], truth) - settings.tolerance
    if spec.threshold is None:
        found = calibrate(proba[cheap.run_id], proba[strong.run_id], truth, floor)
    else:
        found = at_threshold(proba[cheap.run_id], proba[strong.run_id], truth, spec.threshold, floor)
    tags = {"kind": "step", "step": "cascade", "source_run": cheap.run_id, "strong_run": strong.run_id}
    with tracking.nested_run(parent_run, "cascade", tags) as run_id, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        notes = {"cheap": spec.cheap, "strong": spec.strong, **found.model_dump()}
        write_cascade(store.model_dir(cheap, paths), store.model_dir(strong, paths), out, notes)
        seconds = time.perf_counter() - started
        tracking.log_params(run_id, {"method": "cascade", "cheap": spec.cheap, "strong": spec.strong, "threshold": found.threshold,
                                     "threshold_source": found.source, "tolerance": settings.tolerance})  # fmt: skip
        tracking.log_metrics(run_id, {"deferred_share_val": found.deferred_share_val, "val_macro_f1": found.val_macro_f1,
                                      "val_floor": found.floor, "step_seconds": seconds})  # fmt: skip
        tracking.log_dir(run_id, out, "model")
    log.info("Cascade %s -> %s: threshold %.4f defers %.1f%% of val", spec.cheap, spec.strong, found.threshold,
             100 * found.deferred_share_val)  # fmt: skip
    return ModelRef(run_id=run_id, seconds=seconds)


def build_cascade(
    name: str, spec: CascadeConfig, variants: list[Variant], data: DataRef, cfg: RunConfig, paths: ProjectPaths, parent_run: str,
    run_step: Callable[..., ModelRef] | None = None,
) -> Variant:  # fmt: skip
    """The cascade variant over two built variants (the baseline is `variants`' "baseline"); never raises, like build_variant."""
    by_name = {v.name: v for v in variants}
    parts = [by_name[spec.cheap], by_name[spec.strong]]
    for part in parts:
        if part.status != "ok" or part.model is None:
            reason = f"its part {part.name!r} was {part.status}: {part.reason}"
            log.warning("Variant %s skipped: %s", name, reason)
            return Variant(name=name, model=None, status="skipped", reason=reason)
    if run_step is None:
        run_step = serialised(cascade_model, paths, cfg.locks)
    baseline = by_name["baseline"]
    try:
        model = run_step(cheap=parts[0].model, strong=parts[1].model, baseline=baseline.model, spec=spec, data=data,
                         settings=CascadeSettings.of(cfg), paths=paths, parent_run=parent_run)  # fmt: skip
    except SkipVariant as skip:
        log.warning("Variant %s skipped: %s", name, skip.reason)
        return Variant(name=name, model=None, status="skipped", reason=skip.reason)
    except Exception as exc:  # a broken cascade must not sink the other variants
        log.error("Variant %s failed: %s: %s", name, type(exc).__name__, exc)
        return Variant(name=name, model=None, status="failed", reason=f"{type(exc).__name__}: {exc}")
    # Made from the fine-tuned model like every variant: the parts' own steps, not the shared fine-tuning, plus the calibration.
    seconds = sum(p.train_seconds for p in parts if p.name != "baseline") + model.seconds
    steps = tuple(dict.fromkeys((baseline.steps[0], *parts[0].steps[1:], *parts[1].steps[1:], model.run_id)))
    return Variant(name=name, model=model.model_copy(update={"seconds": seconds}), steps=steps)


def build_cascades(cfg: RunConfig, variants: list[Variant], data: DataRef, paths: ProjectPaths, parent_run: str) -> list[Variant]:
    """Every cascade of the config, over the variants already built."""
    return [build_cascade(name, spec, variants, data, cfg, paths, parent_run) for name, spec in cfg.compress.cascades().items()]
