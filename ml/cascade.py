"""A confidence cascade's calibration: the lowest threshold on the cheap part's confidence that keeps the quality bar.

The threshold is calibrated on the val split, never on test: the **lowest** threshold (the least
deferral, so the cheapest) whose val macro-F1 is >= the baseline's val macro-F1 - `select.tolerance`.
When the cheap part alone meets that bar (the threshold would be 0), when only deferring every text
meets it, or when nothing does, the cascade is skipped with the figures (SkipVariant): a cascade that
never defers is the cheap part plus a second model to load, one that defers everything costs more
than the strong part alone. The `cascade` format itself (how it predicts) is frugal/runtime/formats/cascade.py.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from frugal.errors import SkipVariant
from frugal.runtime.formats.cascade import CHEAP, STRONG, combine, deferred
from frugal.runtime.manifest import TOKENIZER_DIR, Manifest
from frugal.runtime.registry import load_predictor

F1_SLACK = 1e-12  # float rounding: a cascade equal to the baseline on val meets a zero tolerance


class Calibration(BaseModel):
    """A threshold and what it gives on the val split."""

    model_config = ConfigDict(frozen=True)

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
    """The lowest threshold > 0 whose val macro-F1 is >= floor (`lowest_cut`)."""
    confidence, f1 = macro_f1_by_deferral(cheap, strong, truth, cheap.shape[1])
    threshold, k = lowest_cut(confidence, dict(enumerate(f1.tolist())), floor, "macro-F1", "text")
    return Calibration(threshold=threshold, deferred_share_val=k / len(confidence), val_macro_f1=float(f1[k]), floor=floor,
                       source="calibrated")  # fmt: skip


def lowest_cut(ranked: np.ndarray, scores: Mapping[int, float], floor: float, metric: str, noun: str) -> tuple[float, int]:
    """The lowest threshold whose val score is >= floor, and how many val rows it defers (a classifier's or a generator's).

    `ranked`: the cheap part's confidences sorted ascending; `scores[k]`: the val score with the k least confident rows
    deferred, for k = 0, n and every k where a threshold can cut (rows of equal confidence are deferred together).
    SkipVariant when the cheap part alone (deferring nothing) meets the floor, when only deferring everything does (k = n
    is not a candidate: the strong part alone is cheaper), or nothing does. Candidates sit between consecutive distinct
    confidences, at the midpoint, so a test row a little less sure than the least sure one the cheap part answers on val
    is deferred too.
    """
    n = len(ranked)
    if scores[0] >= floor - F1_SLACK:  # the threshold would be 0: a cascade that never defers is the cheap part plus a load
        raise SkipVariant(f"the cheap part alone keeps val {metric} >= {floor:.4f} ({scores[0]:.4f}): the cascade would defer nothing")
    cuts = [k for k in range(1, n) if ranked[k - 1] < ranked[k]]
    for k in cuts:
        if scores[k] >= floor - F1_SLACK:
            middle = (ranked[k - 1] + ranked[k]) / 2
            return float(middle if middle > ranked[k - 1] else ranked[k]), k  # adjacent floats: no midpoint
    best = max([0, *cuts], key=lambda k: scores[k])
    figures = f"best below that: {scores[best]:.4f} deferring {best / n:.0%}; strong part alone {scores.get(n, math.nan):.4f}"
    if scores.get(n, -math.inf) >= floor - F1_SLACK:
        raise SkipVariant(f"only deferring every val {noun} keeps {metric} >= {floor:.4f} ({figures}): the strong part alone is cheaper")
    raise SkipVariant(f"no threshold keeps val {metric} >= {floor:.4f} (baseline val {metric} - select.tolerance; {figures})")


def at_threshold(cheap: np.ndarray, strong: np.ndarray, truth: np.ndarray, threshold: float, floor: float) -> Calibration:
    """The val figures of a threshold fixed in the config."""
    share, f1 = float(deferred(cheap, threshold).mean()), macro_f1(combine(cheap, strong, threshold), truth)
    return Calibration(threshold=threshold, deferred_share_val=share, val_macro_f1=f1, floor=floor, source="config")


def val_proba(model_dir: Path, texts: list[str], threads: int, device: str, batch_size: int) -> np.ndarray:
    return load_predictor(model_dir, threads=threads, device=device).predict_proba(texts, batch_size)


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
