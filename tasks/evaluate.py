"""evaluate: every variant, the baseline included, on the test split, on this machine, the same way.

Quality and cost come from one measuring process per variant (frugal/measure.py), run one
after another so no two variants compete for the CPU.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from frugal.config import RunConfig, load_hardware
from frugal.modelio import Manifest, model_size_mb
from tasks import tracking
from tasks.common import Scores, Splits, Variant, stage
from tasks.finetune import train_usd

log = logging.getLogger(__name__)


def run_measurement(model_dir: Path, test_parquet: Path, cfg: RunConfig) -> dict:
    request = {
        "model_dir": str(model_dir),
        "test_parquet": str(test_parquet),
        "batch_size": cfg.evaluate.batch_size,
        "threads": cfg.evaluate.threads,
        "warmup_batches": cfg.evaluate.warmup_batches,
        "latency_samples": cfg.evaluate.latency_samples,
        "device": cfg.evaluate.device,
    }
    threads = str(cfg.evaluate.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.run(
            [sys.executable, "-m", "frugal.measure", str(out)], input=json.dumps(request), env=env, capture_output=True, text=True
        )
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"measuring {model_dir} failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def quality(truth: list[str], predicted: list[str], labels: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    per_label = f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(np.mean(per_label)),
        **{f"f1_{label}": float(score) for label, score in zip(labels, per_label, strict=True)},
    }


def usd_per_1m(throughput_per_s: float, usd_per_hour: float) -> float:
    """Instance $/hour divided by predictions per hour, times a million."""
    return usd_per_hour / (throughput_per_s * 3600) * 1e6


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


def score(variant: Variant, data: Splits, cfg: RunConfig) -> dict[str, float]:
    """All DESIGN.md metric names except the ones relative to the baseline."""
    assert variant.model_dir is not None
    manifest = Manifest.load(variant.model_dir)
    result = run_measurement(variant.model_dir, data.path("test"), cfg)
    truth = list(pd.read_parquet(data.path("test"))["label"])
    predicted = [manifest.labels[i] for i in result["predicted"]]
    price = load_hardware()[cfg.evaluate.instance].usd_per_hour
    metrics = {
        **quality(truth, predicted, cfg.data.labels),
        **result["metrics"],
        "model_size_mb": model_size_mb(variant.model_dir),
        "params_m": manifest.params / 1e6,
        "usd_per_1m": usd_per_1m(result["metrics"]["throughput_per_s"], price),
        "train_seconds": variant.train_seconds,
        "train_usd": train_usd(variant.train_seconds, cfg.finetune),
    }
    trained = tracking.mlflow_client().get_run(variant.run_id).data.metrics.get("trainable_share")
    if trained is not None:  # set by training steps (fine-tuning, LoRA, distillation, pruning recovery)
        metrics["trainable_share"] = trained
    with tempfile.TemporaryDirectory() as tmp:
        png = confusion_png(truth, predicted, cfg.data.labels, f"{variant.name}: test split", Path(tmp) / "confusion_matrix.png")
        tracking.log_file(variant.run_id, png)
    return metrics


@stage(name="evaluate")
def evaluate(variant: Variant, data: Splits, cfg: RunConfig) -> Scores | None:
    """Measure one variant and log its metrics on its nested run; None if it was skipped or failed."""
    if variant.status != "ok":
        return None
    tracking.log_params(
        variant.run_id,
        {
            "eval_threads": cfg.evaluate.threads,
            "eval_batch_size": cfg.evaluate.batch_size,
            "hardware_profile": cfg.evaluate.instance,
            "eval_device": cfg.evaluate.device,
            "test_rows": data.rows["test"],
        },
    )
    try:
        metrics = score(variant, data, cfg)
    except Exception as exc:
        if variant.name == "baseline":
            raise
        log.error("Evaluating %s failed: %s", variant.name, exc)
        tracking.set_tags(variant.run_id, {"status": "failed", "error": f"evaluate: {exc}"[:5000]})
        tracking.end_run(variant.run_id, "FAILED")
        return None
    tracking.log_metrics(variant.run_id, metrics)
    log.info(
        "%s: macro-F1 %.4f, p50 %.1f ms, %.0f texts/s, %.1f MB, $%.4f per 1M",
        variant.name,
        metrics["macro_f1"],
        metrics["latency_p50_ms"],
        metrics["throughput_per_s"],
        metrics["model_size_mb"],
        metrics["usd_per_1m"],
    )
    return Scores(variant.name, variant.run_id, metrics)
