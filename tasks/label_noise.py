"""label_noise: flag training rows whose label looks wrong (ml/noise.py), before fine-tuning, and record the report.

The stage's own MLflow run holds the flagged rows, the report (how many, which, their annotator
confidence; ml/noise_report.py) and the measured effect on test macro-F1 of keep / drop / downweight.
Fine-tuning receives the run as a NoiseRef and applies `annotation.noise.action` (ml.noise.treated).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from frugal.config import DataConfig, ModelConfig, NoiseConfig, RunConfig
from frugal.paths import ProjectPaths
from ml.data import label_ids, labelled_rows, read_split
from ml.features import Features, featurize
from ml.noise import Action, effect, find_issues, flagged_rows, out_of_fold, source_confidence
from ml.noise_report import band_table, bands_png, metrics, report_md
from tasks.plumbing import store, tracking
from tasks.plumbing.refs import DataRef, Ref
from tasks.plumbing.stage import stage

log = logging.getLogger(__name__)
FLAGGED_ARTIFACT = "label_noise/flagged.json"
REPORT_ARTIFACT = "label_noise/report.md"


class NoiseRef(Ref):
    """The label_noise run whose `label_noise/flagged.json` lists the flagged rows, and what fine-tuning does with them."""

    run_id: str
    action: Action
    weight: float
    flagged: int
    rows: int


@stage(name="label_noise", cached=True)
def label_noise(
    data: DataRef, data_cfg: DataConfig, model: ModelConfig, noise_cfg: NoiseConfig, features: Features, c: float,
    max_rows: int | None, seed: int, threads: int, paths: ProjectPaths, parent_run: str,
) -> NoiseRef:  # fmt: skip
    """Flag suspect rows among the rows fine-tuning trains on (finetune.max_rows, same sample); report them on a step run."""
    splits = store.data_dir(data, paths)
    train, test = labelled_rows(read_split(splits, "train"), max_rows, seed).reset_index(drop=True), read_split(splits, "test")
    labels = data_cfg.labels
    tags = {"kind": "step", "step": "label_noise", "learner": f"logistic regression on {features} (not the fine-tuned model)"}
    with tracking.nested_run(parent_run, "label_noise", tags) as run_id:
        x, x_test = featurize(features, list(train["text"]), list(test["text"]), model, threads, paths)
        y, y_test = label_ids(train, labels), label_ids(test, labels)
        probs = out_of_fold(x, y, noise_cfg.folds, c, seed)
        issues = find_issues(y, probs, noise_cfg.filter_by)
        confidence = source_confidence(data_cfg, noise_cfg.confidence_column, train, paths.root)
        rows = flagged_rows(train, probs, issues, labels, confidence)
        hit = np.zeros(len(train), dtype=bool)
        hit[issues] = True
        scores = effect(x, y, x_test, y_test, hit, noise_cfg.weight, len(labels), c, seed)
        log_report(run_id, rows, train, confidence, hit, scores, noise_cfg)
    log.info("label_noise: %d of %d training rows flagged (%.1f%%)", len(issues), len(train), 100 * len(issues) / max(1, len(train)))
    return NoiseRef(run_id=run_id, action=noise_cfg.action, weight=noise_cfg.weight, flagged=len(issues), rows=len(train))


def detect_label_noise(data: DataRef, cfg: RunConfig, paths: ProjectPaths, parent_run: str) -> NoiseRef | None:
    """The label_noise stage on the config's sections it reads (its cache key), or None when annotation.noise.detect is off."""
    a = cfg.annotation
    if not a.noise.detect:
        return None
    return label_noise(
        data, cfg.data, cfg.model, a.noise, a.features, a.c, cfg.finetune.max_rows, cfg.seed, cfg.finetune.threads, paths, parent_run
    )


def for_finetune(noise: NoiseRef | None) -> NoiseRef | None:
    """What fine-tuning gets: nothing for action=keep (a report only), so its cache key and rows stay those of a run without."""
    return noise if noise is not None and noise.action != "keep" else None


def flagged_texts(noise: NoiseRef) -> set[str]:
    """The texts of the rows the label_noise run flagged (read from its run: the stage may have run on another machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        return {row["text"] for row in json.loads(tracking.download(noise.run_id, FLAGGED_ARTIFACT, Path(tmp)).read_text())}


def log_report(
    run_id: str, flagged: pd.DataFrame, train: pd.DataFrame, confidence: pd.Series, hit: np.ndarray, scores: dict[str, float],
    cfg: NoiseConfig,
) -> None:  # fmt: skip
    table = band_table(confidence, hit)
    tracking.log_params(run_id, {"action": cfg.action, "weight": cfg.weight, "folds": cfg.folds, "filter_by": cfg.filter_by})
    tracking.log_metrics(run_id, metrics(len(train), hit, table, scores))
    records = flagged.astype(object).where(flagged.notna(), None).to_dict("records")  # NaN is not JSON: unknown confidence is null
    tracking.log_json(run_id, records, FLAGGED_ARTIFACT)
    tracking.log_text(run_id, report_md(flagged, train, table, scores, cfg), REPORT_ARTIFACT)
    if not table.empty:
        with tempfile.TemporaryDirectory() as tmp:
            tracking.log_file(run_id, bands_png(table, Path(tmp) / "confidence_bands.png"), "label_noise")
