"""A classifier's quality on labelled texts: the DESIGN.md metric names (accuracy, macro_f1, f1_<label>), and its confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def quality(truth: list[str], predicted: list[str], labels: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    per_label = f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(np.mean(per_label)),
        **{f"f1_{label}": float(score) for label, score in zip(labels, per_label, strict=True)},
    }


def confusion_png(truth: list[str], predicted: list[str], labels: list[str], title: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(truth, predicted, labels=labels, ax=ax, colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
