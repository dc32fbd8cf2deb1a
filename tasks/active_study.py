"""One active-learning study as an MLflow run: every strategy's learning curve, its plot, and labels (and $) to the target.

The target is the full-data quality minus `select.tolerance`: the same bar a compressed variant must
clear against the baseline. Nothing is written, and no run is opened, before the budget is checked.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from frugal.config import RunConfig
from frugal.paths import ProjectPaths
from ml.active import Curve, check_budget, run_strategy
from ml.data import label_ids, labelled_rows
from ml.features import featurize, fit_score
from ml.prepare import prepared
from tasks.plumbing import tracking
from tasks.plumbing.refs import Ref
from tasks.version import read_version

log = logging.getLogger(__name__)
ARTIFACTS = "active_learning"


class StudyResult(Ref):
    run_id: str
    full_macro_f1: float
    target_macro_f1: float
    labels_to_target: dict[str, int | None]  # None: not reached within the budget
    table_md: str


def study(cfg: RunConfig, paths: ProjectPaths) -> StudyResult:
    """Check the budget against the pool, then run every configured strategy from one shared seed set and log the run."""
    a, labels = cfg.annotation, cfg.data.labels
    pool, test = pool_and_test(cfg, paths)
    check_budget(a.active, len(pool), len(labels))  # before any run exists or any file is written
    tags = {"kind": "active_learning", "learner": f"logistic regression on {a.features} computed once for the pool (not fine-tuning)",
            "data_restored": cfg.data.version or "no (prepared from the source)"}  # fmt: skip
    with tracking.parent_run(cfg, paths, run_name="active-learning") as run_id:
        tracking.set_tags(run_id, tags)
        started = time.perf_counter()
        x_pool, x_test = featurize(a.features, list(pool["text"]), list(test["text"]), cfg.model, cfg.finetune.threads, paths)
        hidden, y_test = label_ids(pool, labels), label_ids(test, labels)
        full = fit_score(x_pool, hidden, x_test, y_test, len(labels), a.c, cfg.seed)  # the learner on every pool label
        seed_rows = np.random.default_rng(cfg.seed).choice(len(pool), size=a.active.seed_size, replace=False)
        curves = [
            run_strategy(s, x_pool, hidden, x_test, y_test, seed_rows, a.active, len(labels), a.c, cfg.seed)[0] for s in a.active.strategies
        ]
        result = log_study(run_id, curves, full, cfg, len(pool), time.perf_counter() - started)
    log.info("Active learning (run %s):\n%s", run_id, result.table_md)
    return result


def pool_and_test(cfg: RunConfig, paths: ProjectPaths) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The train split (capped as annotation.active.pool_rows says) and the test split: of the recorded version `data.version`
    when the config names one (as `frugal run` would train on), else prepared in memory from the source as `prepare` does."""
    splits = read_version(cfg.data.version, paths, cfg.data.remote) if cfg.data.version else prepared(cfg, paths.root)[0]
    return labelled_rows(splits["train"], cfg.annotation.active.pool_rows, cfg.seed).reset_index(drop=True), splits["test"]


def curve_frame(curves: list[Curve], usd_per_label: float) -> pd.DataFrame:
    rows = [(c.strategy, i, n, n * usd_per_label, f1) for c in curves for i, (n, f1) in enumerate(zip(c.labels, c.macro_f1, strict=True))]
    return pd.DataFrame(rows, columns=["strategy", "round", "labels", "usd", "macro_f1"])


def summary_md(curves: list[Curve], full: float, target: float, usd_per_label: float, pool_rows: int) -> str:
    lines = [
        f"Full-data quality ({pool_rows} labels, ${pool_rows * usd_per_label:,.2f}): test macro-F1 {full:.4f}; "
        f"target = full - select.tolerance = {target:.4f}.",
        "",
        "| strategy | labels to target | $ to target | share of the pool | final macro-F1 (labels) |",
        "|---|---|---|---|---|",
    ]
    for c in curves:
        n = c.labels_to(target)
        reached = f"{n} | ${n * usd_per_label:,.2f} | {n / pool_rows:.1%}" if n is not None else "not reached | | "
        lines.append(f"| {c.strategy} | {reached} | {c.macro_f1[-1]:.4f} ({c.labels[-1]}) |")
    return "\n".join(lines) + "\n"


def curve_png(curves: list[Curve], full: float, target: float, usd_per_label: float, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in curves:
        ax.plot(c.labels, c.macro_f1, marker="o", ms=3, label=c.strategy)
    ax.axhline(full, c="black", lw=0.8, label="all pool labels")
    ax.axhline(target, c="tab:red", lw=0.8, ls=":", label="target (full - tolerance)")
    ax.set_xlabel("labels bought")
    ax.set_ylabel("macro-F1 (test, cheap learner)")
    if usd_per_label > 0:  # the same axis in money: cost is labels x price
        top = ax.secondary_xaxis("top", functions=(lambda n: n * usd_per_label, lambda usd: usd / usd_per_label))
        top.set_xlabel(f"annotation \\$ (at \\${usd_per_label:g} per label)")  # \\$: a bare $ starts matplotlib's math text
    low = min(min(c.macro_f1) for c in curves)
    ax.set_ylim(low - 0.01, max(full, *(max(c.macro_f1) for c in curves)) + 0.01)  # the full-data line stays inside the frame
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def log_study(run_id: str, curves: list[Curve], full: float, cfg: RunConfig, pool_rows: int, seconds: float) -> StudyResult:
    price, target = cfg.annotation.usd_per_label, full - cfg.select.tolerance
    reached = {c.strategy: c.labels_to(target) for c in curves}
    metrics = {"full_data_macro_f1": full, "target_macro_f1": target, "pool_rows": pool_rows, "seconds": seconds}
    for c in curves:
        metrics[f"{c.strategy}_final_macro_f1"] = c.macro_f1[-1]
        if reached[c.strategy] is not None:
            metrics |= {f"{c.strategy}_labels_to_target": reached[c.strategy], f"{c.strategy}_usd_to_target": reached[c.strategy] * price}
    tracking.log_metrics(run_id, metrics)
    points = [{"step": n, f"{c.strategy}_macro_f1": f1} for c in curves for n, f1 in zip(c.labels, c.macro_f1, strict=True)]
    tracking.log_history(run_id, points)  # the curves in MLflow's chart view: step = labels bought
    md = summary_md(curves, full, target, price, pool_rows)
    tracking.log_text(run_id, md, f"{ARTIFACTS}/report.md")
    tracking.log_text(run_id, curve_frame(curves, price).to_csv(index=False), f"{ARTIFACTS}/curve.csv")
    with tempfile.TemporaryDirectory() as tmp:
        tracking.log_file(run_id, curve_png(curves, full, target, price, Path(tmp) / "learning_curve.png"), ARTIFACTS)
    return StudyResult(run_id=run_id, full_macro_f1=full, target_macro_f1=target, labels_to_target=reached, table_md=md)
