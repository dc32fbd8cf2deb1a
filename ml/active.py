"""Active learning: how many labels (and annotation $) a strategy needs to come within `select.tolerance` of all of them.

The pool is the train split (capped at annotation.active.pool_rows) with its labels hidden: an
`Annotator` reveals a row's label when a strategy asks for it, and refuses a row asked for before.
Every strategy starts from the same seeded random seed set, then repeatedly retrains the cheap learner
(ml/features.py: features computed once for the pool) and asks for the `batch_size` rows it is least
sure of: smallest margin between its top two classes, or highest entropy; `random` is the control.
Each model is scored on the test split; "full-data quality" is the same learner on every pool label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from frugal.config import ActiveConfig
from frugal.errors import ConfigError, DataError
from ml.features import heldout_macro_f1, learner

Strategy = Literal["margin", "entropy", "random"]


class Annotator:
    """The pool's hidden labels: revealed only for rows asked for, each at most once (asking twice would pay twice)."""

    def __init__(self, hidden: np.ndarray) -> None:
        self._hidden = hidden
        self.asked: list[int] = []
        self._seen: set[int] = set()

    def label(self, rows: np.ndarray) -> np.ndarray:
        rows = [int(r) for r in rows]
        again = sorted(self._seen.intersection(rows)) or sorted({r for r in rows if rows.count(r) > 1})
        if again:
            raise RuntimeError(f"rows {again[:5]} were asked for twice")  # a strategy bug, not a user error
        self.asked += rows
        self._seen.update(rows)
        return self._hidden[rows]


@dataclass
class Curve:
    """One strategy's learning curve: labels bought and test macro-F1 after each retraining (seed first)."""

    strategy: str
    labels: list[int] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)

    def labels_to(self, target: float) -> int | None:
        """The fewest labels at which this strategy reached `target`, or None when it never did."""
        return next((n for n, f1 in zip(self.labels, self.macro_f1, strict=True) if f1 >= target), None)


def check_budget(active: ActiveConfig, pool_rows: int, classes: int) -> None:
    """One ConfigError, before anything is run or written, for a budget the pool cannot fill or a seed too small to learn from."""
    if active.budget > pool_rows:
        cap = f" (annotation.active.pool_rows={active.pool_rows})" if active.pool_rows else ""
        raise ConfigError(
            f"The active-learning budget, seed_size + rounds x batch_size = {active.seed_size} + {active.rounds} x {active.batch_size} "
            f"= {active.budget} labels, is larger than the unlabelled pool of {pool_rows} rows{cap}.",
            f"Lower annotation.active.rounds, batch_size or seed_size so that the total is at most {pool_rows}"
            + (", or raise annotation.active.pool_rows." if active.pool_rows else "."),
        )
    if active.seed_size < classes:
        raise ConfigError(
            f"annotation.active.seed_size={active.seed_size} is smaller than the {classes} classes: the first model cannot learn them.",
            f"Set annotation.active.seed_size to at least {classes} (a few dozen per class is typical).",
        )


def uncertainty(probs: np.ndarray, strategy: Strategy) -> np.ndarray:
    """How unsure the model is of each row (higher = ask first)."""
    if strategy == "margin":
        top2 = np.sort(probs, axis=1)[:, -2:]
        return -(top2[:, 1] - top2[:, 0])
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)  # entropy


def pick(probs: np.ndarray | None, unlabelled: np.ndarray, strategy: Strategy, batch: int, rng: np.random.Generator) -> np.ndarray:
    """The next `batch` pool rows to label, out of `unlabelled` (`probs`: the model's probabilities for those rows)."""
    if strategy == "random" or probs is None:
        return rng.choice(unlabelled, size=batch, replace=False)
    return unlabelled[np.argsort(-uncertainty(probs, strategy), kind="stable")[:batch]]


def _probs(model: Any, x: Any, classes: int) -> np.ndarray:
    """Probabilities over every class (a class no labelled row has yet gets 0)."""
    out = np.zeros((x.shape[0], classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


def run_strategy(
    strategy: Strategy, x_pool: Any, hidden: np.ndarray, x_test: Any, y_test: np.ndarray, seed_rows: np.ndarray, active: ActiveConfig,
    classes: int, c: float, seed: int,
) -> tuple[Curve, Annotator]:  # fmt: skip
    """Seed, then `rounds` times: retrain, score, ask the annotator for the next batch. The curve has seed + rounds points."""
    annotator, rng, curve = Annotator(hidden), np.random.default_rng(seed), Curve(strategy)
    labelled, y = list(seed_rows), list(annotator.label(seed_rows))
    for round_ in range(active.rounds + 1):
        if len(set(y)) < 2:
            raise DataError(f"The {len(y)} seed labels are all one class.", "Raise annotation.active.seed_size.")
        model = learner(c, seed).fit(x_pool[labelled], np.asarray(y))
        curve.labels.append(len(labelled))
        curve.macro_f1.append(heldout_macro_f1(model, x_test, y_test, classes))
        if round_ == active.rounds:
            break
        unlabelled = np.setdiff1d(np.arange(len(hidden)), labelled)
        probs = None if strategy == "random" else _probs(model, x_pool[unlabelled], classes)
        asked = pick(probs, unlabelled, strategy, active.batch_size, rng)
        labelled += [int(r) for r in asked]
        y += list(annotator.label(asked))
    return curve, annotator
