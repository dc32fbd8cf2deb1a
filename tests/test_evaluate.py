from __future__ import annotations

import pytest
from helpers import COST, QUALITY

from frugal.config import RunConfig
from tasks.common import Splits, Variant
from tasks.evaluate import evaluate, quality, usd_per_1m
from tasks.tracking import mlflow_client


def test_usd_per_1m_is_price_over_predictions_per_hour() -> None:
    assert usd_per_1m(throughput_per_s=100, usd_per_hour=0.36) == pytest.approx(1.0)


def test_quality_metrics() -> None:
    metrics = quality(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    assert metrics["accuracy"] == 0.75
    assert metrics["f1_a"] == pytest.approx(2 / 3) and metrics["f1_b"] == pytest.approx(0.8)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_evaluate_logs_every_metric_name(baseline: Variant, smoke_splits: Splits, smoke_cfg: RunConfig) -> None:
    scores = evaluate.fn(baseline, smoke_splits, smoke_cfg)
    assert QUALITY | COST <= set(scores.metrics)
    run = mlflow_client().get_run(baseline.run_id)
    assert QUALITY | COST <= set(run.data.metrics)
    assert run.data.params["eval_threads"] == str(smoke_cfg.evaluate.threads)
    assert run.data.params["hardware_profile"] == smoke_cfg.evaluate.instance
    assert scores.metrics["latency_p95_ms"] >= scores.metrics["latency_p50_ms"] > 0
    assert 100 < scores.metrics["peak_rss_mb"] < 4000  # a fresh process per variant, not the test runner's
    assert any(a.path == "confusion_matrix.png" for a in mlflow_client().list_artifacts(baseline.run_id))


def test_skipped_variant_is_not_measured(smoke_splits: Splits, smoke_cfg: RunConfig) -> None:
    assert evaluate.fn(Variant("x", "r", None, status="skipped", reason="no GPU"), smoke_splits, smoke_cfg) is None
