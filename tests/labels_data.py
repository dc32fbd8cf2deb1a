"""A small synthetic labelled text set for the label-noise and active-learning tests: each class has its own words."""

from __future__ import annotations

import numpy as np
import pandas as pd

LABELS = ["negative", "neutral", "positive"]
VOCAB = {
    "negative": "awful terrible hate broken worst sad angry useless".split(),
    "neutral": "table monday report meeting paper schedule tuesday office".split(),
    "positive": "love great wonderful happy best amazing enjoy brilliant".split(),
}
SHARED = "the a car today it is this my road drive".split()


def synthetic(rows: int, seed: int) -> pd.DataFrame:
    """`rows` texts, classes balanced: two words of the class, one word of another class (so rows are not trivially clean), filler."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(rows):
        label = LABELS[i % 3]
        other = LABELS[(i + 1 + rng.integers(2)) % 3]
        words = [*rng.choice(VOCAB[label], 2, replace=False), rng.choice(VOCAB[other]), *rng.choice(SHARED, 3), f"id{i}"]
        out.append((" ".join(rng.permutation(words)), label))
    return pd.DataFrame(out, columns=["text", "label"])


def flip(frame: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A copy with `share` of the rows given a wrong label (another class, at random), and the flipped row indices."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(frame), size=int(share * len(frame)), replace=False))
    noisy = frame.copy()
    for row in rows:
        noisy.loc[row, "label"] = rng.choice([lab for lab in LABELS if lab != frame.loc[row, "label"]])
    return noisy, rows
