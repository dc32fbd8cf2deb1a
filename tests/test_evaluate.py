from __future__ import annotations

import pytest
from conftest import Built, LocalSplits
from helpers import COST, QUALITY

from frugal.config import RunConfig
from frugal.hardware import machine_fingerprint
from frugal.paths import ProjectPaths
from frugal.pricing import usd_per_1m
from ml.quality import quality
from tasks.evaluate import evaluate
from tasks.plumbing.refs import Scores, Variant
from tasks.plumbing.tracking import mlflow_client


def test_usd_per_1m_is_price_over_predictions_per_hour() -> None:
    assert usd_per_1m(throughput_per_s=100, usd_per_hour=0.36) == pytest.approx(1.0)


def test_quality_metrics() -> None:
    metrics = quality(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    assert metrics["accuracy"] == 0.75
    assert metrics["f1_a"] == pytest.approx(2 / 3) and metrics["f1_b"] == pytest.approx(0.8)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_evaluate_logs_every_metric_name(
    baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    from tasks.evaluate import measure_model

    variant = Variant(name="baseline", model=baseline.ref, steps=(baseline.run_id,))
    scores = evaluate.fn(variant, None, smoke_splits.ref, smoke_cfg, store, parent_run, measure=measure_model.fn)
    assert QUALITY | COST <= set(scores.metrics)
    run = mlflow_client().get_run(scores.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "variant" and run.data.tags["model_uri"] == baseline.ref.uri
    assert QUALITY | COST <= set(run.data.metrics)
    assert run.data.params["eval_threads"] == str(smoke_cfg.evaluate.threads)
    assert run.data.params["hardware_profile"] == smoke_cfg.evaluate.instance
    # Where it was measured: this machine's fingerprint and its readable fields, on the run and on the scores register compares.
    here = machine_fingerprint(smoke_cfg.evaluate.threads)
    assert scores.machine == here["machine_fingerprint"] and here.items() <= run.data.params.items()
    assert scores.metrics["latency_p95_ms"] >= scores.metrics["latency_p50_ms"] > 0
    assert 100 < scores.metrics["peak_rss_mb"] < 4000  # a fresh process per variant, not the test runner's
    assert any(a.path == "confusion_matrix.png" for a in mlflow_client().list_artifacts(scores.run_id))


def test_skipped_variant_is_recorded_not_measured(
    baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    skipped = Variant(name="x", model=None, status="skipped", reason="no GPU")
    base = Scores(variant="baseline", run_id="r", metrics={"macro_f1": 1.0, "usd_per_1m": 1.0, "throughput_per_s": 1.0})
    assert evaluate.fn(skipped, base, smoke_splits.ref, smoke_cfg, store, parent_run) is None
    experiment = mlflow_client().get_run(parent_run).info.experiment_id
    (run,) = mlflow_client().search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_run}' and tags.variant = 'x'")
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "skipped" and run.data.tags["skip_reason"] == "no GPU"
