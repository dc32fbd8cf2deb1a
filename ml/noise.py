"""Label noise: which training rows look mislabelled, found with cleanlab on a cheap learner's out-of-fold probabilities.

Out-of-fold class probabilities of the cheap learner (ml/features.py) on the rows fine-tuning will
train on, then cleanlab's `find_label_issues`: a row is flagged when its given label is unlikely for
it, measured against the per-class noise rates cleanlab estimates from those same probabilities.
`effect` measures what keeping, dropping or down-weighting the flagged rows is worth with the same
cheap learner (a fine-tune per action would cost ~15 min each on a CPU); `treated` applies an action.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from frugal.config import DataConfig
from frugal.errors import DataError
from ml.data import label_ids, load_source, normalise_text
from ml.features import fit_score, learner

log = logging.getLogger(__name__)
Action = Literal["keep", "drop", "downweight"]


def out_of_fold(x: Any, y: np.ndarray, folds: int, c: float, seed: int) -> np.ndarray:
    """Class probabilities of each row from a model that never saw it (what cleanlab needs to judge its label)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    smallest = int(np.bincount(y).min())
    if smallest < folds:
        raise DataError(
            f"A class has only {smallest} training rows, fewer than annotation.noise.folds={folds}: no stratified folds exist.",
            f"Lower annotation.noise.folds to at most {max(2, smallest)}, or give more rows of every class.",
        )
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(learner(c, seed), x, y, cv=cv, method="predict_proba")


def find_issues(y: np.ndarray, pred_probs: np.ndarray, filter_by: str) -> np.ndarray:
    """Indices of the rows cleanlab flags, most suspect (lowest self-confidence in the given label) first."""
    from cleanlab.filter import find_label_issues

    # n_jobs=1: cleanlab's default forks a process pool, whose workers' shutdown trips the runs' SIGTERM handler (and 2 cores gain nothing)
    return find_label_issues(y, pred_probs, filter_by=filter_by, return_indices_ranked_by="self_confidence", n_jobs=1)


def flagged_rows(train: pd.DataFrame, pred_probs: np.ndarray, issues: np.ndarray, labels: list[str], confidence: pd.Series) -> pd.DataFrame:
    """One row per flagged training row, most suspect first: its text, given and suggested label, scores, annotator confidence."""
    given = label_ids(train, labels)[issues]
    return pd.DataFrame({
        "text": train["text"].to_numpy()[issues],
        "given": [labels[i] for i in given],
        "suggested": [labels[i] for i in pred_probs[issues].argmax(axis=1)],
        "p_given": pred_probs[issues, given].round(4),  # cleanlab's self-confidence: the rank
        "annotator_confidence": confidence.to_numpy()[issues],
    })  # fmt: skip


def source_confidence(data_cfg: DataConfig, column: str | None, train: pd.DataFrame, root: Path) -> pd.Series:
    """Each training row's annotator confidence from the source (NaN where unknown), matched by cleaned text.

    The prepared splits hold text and label only (adding a column would change every data version's hash), so the
    column is read here with prepare's own loader, `column` in place of the label, and its text normalised as clean() does.
    """
    missing = pd.Series(np.nan, index=train.index)
    if column is None:
        return missing
    try:
        raw = load_source(data_cfg.model_copy(update={"label_column": column}), root).dropna(subset=["text"])
    except DataError as exc:  # no such column, or the source is gone (a restored version): the report says "unknown"
        log.warning("Annotator confidence not available: %s", exc.problem)
        return missing
    values = pd.Series(pd.to_numeric(raw["label"], errors="coerce").to_numpy(), index=normalise_text(raw["text"].astype(str)))
    first = values[~values.index.duplicated(keep="first")]  # clean() keeps a duplicated text's first row
    return pd.Series(train["text"].map(first).to_numpy(dtype=float), index=train.index)


def effect(x: Any, y: np.ndarray, x_test: Any, y_test: np.ndarray, hit: np.ndarray, weight: float, classes: int, c: float,
           seed: int) -> dict[str, float]:  # fmt: skip
    """Test macro-F1 of the cheap learner trained with the flagged rows kept, dropped, and down-weighted."""
    kept = np.flatnonzero(~hit)
    return {
        "keep": fit_score(x, y, x_test, y_test, classes, c, seed),
        "drop": fit_score(x[kept], y[kept], x_test, y_test, classes, c, seed),
        "downweight": fit_score(x, y, x_test, y_test, classes, c, seed, weights=np.where(hit, weight, 1.0)),
    }


def treated(train: pd.DataFrame, flagged: set[str], action: Action, weight: float) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The rows fine-tuning trains on and their loss weights (None: all 1) after `action` on the flagged rows."""
    hit = train["text"].isin(flagged).to_numpy()
    if action == "drop":
        return train[~hit].reset_index(drop=True), None
    if action == "downweight":
        return train, np.where(hit, weight, 1.0).astype(np.float32)
    return train, None


def weighted_cross_entropy(weights: np.ndarray):  # -> ml.training.LossFn
    """Cross-entropy with each row's loss times its weight (the batch mean over rows, so unflagged rows keep their scale)."""
    import torch

    table = torch.from_numpy(weights)

    def loss(logits: torch.Tensor, targets: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        per_row = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        return (per_row * table[torch.from_numpy(np.asarray(idx))].to(per_row.device)).mean()

    return loss
