"""Cascade variants: `{cascade: [cheap, strong]}` routes each text to the cheap variant when it is sure, else to the strong one.

Built after the step chains, in the parent flow (a cascade only reads two finished models and
runs them over the val split: light work, no pool needed). The threshold is calibrated on the
val split, never on test: the **lowest** threshold (the least deferral, so the cheapest) whose
val macro-F1 is >= the baseline's val macro-F1 - `select.tolerance`. When the cheap part alone
meets that bar (the threshold would be 0), when only deferring every text meets it, or when nothing
does, the cascade is recorded as *skipped* with the figures: a cascade that never defers is the
cheap part plus a second model to load, one that defers everything costs more than the strong
part alone, so neither could be worth measuring. A `threshold` in the config is used as given.

The cascade is then measured on the test split like every variant (tasks/evaluate.py), its
measured deferral share reported as `deferred_share` (frugal.cascade.CascadePredictor.extra_metrics).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from frugal.cascade import CHEAP, STRONG
from frugal.config import CascadeConfig, RunConfig
from frugal.errors import SkipVariant
from frugal.modelio import TOKENIZER_DIR, Manifest
from frugal.paths import ProjectPaths
from tasks import store, tracking
from tasks.common import DataRef, ModelRef, Ref, Variant, stage

log = logging.getLogger(__name__)
CODE = ("tasks.cascade", "frugal.cascade", "frugal.runtime", "frugal.modelio")
F1_SLACK = 1e-12  # float rounding: a cascade equal to the baseline on val meets a zero tolerance


class CascadeSettings(Ref):
    """The config a cascade build reads (part of its cache key)."""

    labels: list[str]
    tolerance: float
    threads: int
    batch_size: int
    device: str

    @classmethod
    def of(cls, cfg: RunConfig) -> CascadeSettings:
        e = cfg.evaluate
        return cls(labels=cfg.data.labels, tolerance=cfg.select.tolerance, threads=e.threads, batch_size=e.batch_size, device=e.device)


class Calibration(Ref):
    """A threshold and what it gives on the val split."""

    threshold: float
    deferred_share_val: float
    val_macro_f1: float
    floor: float  # the baseline's val macro-F1 - select.tolerance
    source: str  # "calibrated" or "config"


def macro_f1_by_deferral(cheap: np.ndarray, strong: np.ndarray, truth: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Val macro-F1 for every number k of deferred rows (the k least confident of the cheap part), k = 0..n, in one pass.

    Returns (the cheap part's top probabilities sorted ascending, macro-F1 by k). Per class, F1 = 2 tp / (predicted + true),
    0 when both are 0: what tasks.evaluate.quality computes, so the figure is the one evaluation reports.
    """
    order = np.argsort(cheap.max(axis=1), kind="stable")
    confidence = cheap.max(axis=1)[order]
    by_cheap, by_strong, y = cheap.argmax(axis=1)[order], strong.argmax(axis=1)[order], truth[order]
    scores = np.zeros((len(y) + 1, n_labels))
    for c in range(n_labels):
        true = np.sum(y == c)
        # prefix sums with a leading 0: rows [0, k) answered by the strong part, rows [k, n) by the cheap part
        strong_pred, cheap_pred = _prefix(by_strong == c), _prefix(by_cheap == c)
        strong_tp, cheap_tp = _prefix((by_strong == c) & (y == c)), _prefix((by_cheap == c) & (y == c))
        tp = strong_tp + cheap_tp[-1] - cheap_tp
        predicted = strong_pred + cheap_pred[-1] - cheap_pred
        denominator = predicted + true
        scores[:, c] = np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)
    return confidence, scores.mean(axis=1)


def _prefix(mask: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])


def macro_f1(proba: np.ndarray, truth: np.ndarray) -> float:
    """One model's macro-F1 (the sweep's k = 0 point, so every figure here is computed one way)."""
    return float(macro_f1_by_deferral(proba, proba, truth, proba.shape[1])[1][0])


def calibrate(cheap: np.ndarray, strong: np.ndarray, truth: np.ndarray, floor: float) -> Calibration:
    """The lowest threshold > 0 whose val macro-F1 is >= floor.

    SkipVariant when the cheap part alone (deferring nothing) meets it, when only deferring everything does, or nothing does.

    Candidates sit between consecutive distinct confidences (rows of equal confidence are deferred together), at the
    midpoint, so a test text a little less sure than the least sure one the cheap part answers on val is deferred too.
    """
    confidence, f1 = macro_f1_by_deferral(cheap, strong, truth, cheap.shape[1])
    n = len(confidence)
    cuts = [0] + [k for k in range(1, n) if confidence[k - 1] < confidence[k]]  # k = n (defer every row) is not a candidate
    if f1[0] >= floor - F1_SLACK:  # the threshold would be 0: a cascade that never defers is the cheap part plus a load
        raise SkipVariant(f"the cheap part alone keeps val macro-F1 >= {floor:.4f} ({f1[0]:.4f}): the cascade would defer nothing")
    for k in cuts:
        if f1[k] >= floor - F1_SLACK:
            middle = (confidence[k - 1] + confidence[k]) / 2 if k else 0.0
            threshold = float(middle if not k or middle > confidence[k - 1] else confidence[k])  # adjacent floats: no midpoint
            return Calibration(threshold=threshold, deferred_share_val=k / n, val_macro_f1=float(f1[k]), floor=floor, source="calibrated")
    best = max(cuts, key=lambda k: f1[k])
    figures = f"best below that: {f1[best]:.4f} deferring {best / n:.0%}; strong part alone {f1[n]:.4f}"
    if f1[n] >= floor - F1_SLACK:
        raise SkipVariant(f"only deferring every val text keeps macro-F1 >= {floor:.4f} ({figures}): the strong part alone is cheaper")
    raise SkipVariant(f"no threshold keeps val macro-F1 >= {floor:.4f} (baseline val macro-F1 - select.tolerance; {figures})")


def at_threshold(cheap: np.ndarray, strong: np.ndarray, truth: np.ndarray, threshold: float, floor: float) -> Calibration:
    """The val figures of a threshold fixed in the config."""
    from frugal.cascade import combine, deferred

    share, f1 = float(deferred(cheap, threshold).mean()), macro_f1(combine(cheap, strong, threshold), truth)
    return Calibration(threshold=threshold, deferred_share_val=share, val_macro_f1=f1, floor=floor, source="config")


def val_proba(model_dir: Path, texts: list[str], settings: CascadeSettings) -> np.ndarray:
    from frugal.runtime import load_predictor

    return load_predictor(model_dir, threads=settings.threads, device=settings.device).predict_proba(texts, settings.batch_size)


def write_cascade(cheap_dir: Path, strong_dir: Path, out: Path, notes: dict) -> Manifest:
    """A `cascade` model folder (frugal/modelio.py): both parts copied whole, the cheap part's tokenizer at the top."""
    cheap, strong = Manifest.load(cheap_dir), Manifest.load(strong_dir)
    if cheap.labels != strong.labels:
        raise ValueError(f"the cascade's parts have different labels: {cheap.labels} and {strong.labels}")
    for part, src in ((CHEAP, cheap_dir), (STRONG, strong_dir)):
        shutil.copytree(src, out / part)
    shutil.copytree(cheap_dir / TOKENIZER_DIR, out / TOKENIZER_DIR)
    manifest = Manifest(
        format="cascade", labels=cheap.labels, max_length=min(cheap.max_length, strong.max_length), params=cheap.params + strong.params,
        dtype=cheap.dtype if cheap.dtype == strong.dtype else f"{cheap.dtype}+{strong.dtype}", lineage=["cascade"],
        notes={**notes, "parts": {CHEAP: {"format": cheap.format, "lineage": cheap.lineage},
                                  STRONG: {"format": strong.format, "lineage": strong.lineage}}},
    )  # fmt: skip
    manifest.save(out)
    return manifest


@stage(name="cascade", cached=CODE)
def cascade_model(
    cheap: ModelRef, strong: ModelRef, baseline: ModelRef, spec: CascadeConfig, data: DataRef, settings: CascadeSettings,
    paths: ProjectPaths, parent_run: str,
) -> ModelRef:  # fmt: skip
    """Calibrate the threshold on val, write the cascade folder and log it on a `cascade` step run."""
    started = time.perf_counter()
    val = pd.read_parquet(store.data_dir(data, paths) / "val.parquet")
    texts, truth = list(val["text"]), np.array([settings.labels.index(label) for label in val["label"]])
    models = {ref.run_id: ref for ref in (cheap, strong, baseline)}  # the baseline is often a part: predict it once
    proba = {run: val_proba(store.model_dir(ref, paths), texts, settings) for run, ref in models.items()}
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
        from tasks.locks import serialised

        run_step = serialised(cascade_model, paths)
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
