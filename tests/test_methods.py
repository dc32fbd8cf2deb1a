"""Every compression method on the smoke baseline: reload fidelity, real size reduction, honest skips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import sample_texts

from frugal.config import RunConfig, StepConfig
from frugal.errors import SkipVariant
from frugal.modelio import Manifest, count_params, load_torch, model_size_mb
from frugal.paths import ProjectPaths
from frugal.runtime import Tokenize, load_predictor
from tasks.common import Splits, Variant
from tasks.compress import TorchMethod, get_method
from tasks.compression import build_variant, context
from tasks.tracking import mlflow_client
from tasks.training import predict_logits

# Smoke-sized options: each method runs in seconds on the tiny model.
TORCH_METHODS = {
    "dynamic_int8": {},
    "half": {"dtype": "bfloat16"},
    "prune": {"heads_fraction": 0.5, "ffn_fraction": 0.5, "importance_batches": 2, "recovery_epochs": 1},
    "distill": {"layers": 1, "intermediate_size": 32, "epochs": 1},
    "lora": {"r": 4, "epochs": 1},
    "sparsity": {"sparsity": 0.5},
}
# ONNX outputs must match PyTorch: fp32 to float rounding; int8 by predicted label on most texts.
FP32_MAX_ABS_DIFF = 1e-3
INT8_MIN_AGREEMENT = 0.9


@pytest.fixture
def ctx(smoke_cfg: RunConfig, smoke_splits: Splits, store: ProjectPaths):
    return context(smoke_cfg, smoke_splits, store)


@pytest.mark.parametrize("name", list(TORCH_METHODS))
def test_method_model_reloads_with_the_same_predictions(name: str, baseline: Variant, smoke_splits: Splits, ctx, tmp_path: Path) -> None:
    method = get_method(name).from_config(TORCH_METHODS[name])
    assert isinstance(method, TorchMethod)
    try:
        model, manifest, _ = method.build(baseline.model_dir, ctx)
    except SkipVariant as skip:
        pytest.skip(f"{name} cannot run here: {skip.reason}")
    texts = sample_texts(smoke_splits)
    before = predict_logits(model, Tokenize(baseline.model_dir, 64), texts, "cpu").argmax(1)
    method.save(model, manifest, baseline.model_dir, tmp_path / name)
    after = load_predictor(tmp_path / name).predict_proba(texts).argmax(1)
    assert (before == after).all()


@pytest.mark.parametrize(("name", "options"), [("prune", TORCH_METHODS["prune"]), ("distill", TORCH_METHODS["distill"])])
def test_pruned_and_distilled_models_are_really_smaller(name: str, options: dict, baseline: Variant, ctx, tmp_path: Path) -> None:
    get_method(name).from_config(options).apply(baseline.model_dir, tmp_path / name, ctx)
    reloaded = load_torch(tmp_path / name)
    assert count_params(reloaded) == Manifest.load(tmp_path / name).params < Manifest.load(baseline.model_dir).params
    assert model_size_mb(tmp_path / name) < model_size_mb(baseline.model_dir)


def test_pruning_shrinks_tensor_shapes(baseline: Variant, ctx, tmp_path: Path) -> None:
    get_method("prune").from_config(TORCH_METHODS["prune"]).apply(baseline.model_dir, tmp_path / "p", ctx)
    layer = load_torch(tmp_path / "p").bert.encoder.layer[0]
    original = load_torch(baseline.model_dir).bert.encoder.layer[0]
    assert layer.attention.self.query.out_features == original.attention.self.query.out_features // 2
    assert layer.intermediate.dense.out_features == original.intermediate.dense.out_features // 2


def test_onnx_export_matches_pytorch(baseline: Variant, smoke_splits: Splits, ctx, tmp_path: Path) -> None:
    report = get_method("onnx_export").from_config({}).apply(baseline.model_dir, tmp_path / "onnx", ctx)
    assert report.metrics["onnx_max_abs_diff"] < FP32_MAX_ABS_DIFF
    texts = sample_texts(smoke_splits)
    onnx = load_predictor(tmp_path / "onnx").predict_proba(texts)
    torch_ = load_predictor(baseline.model_dir).predict_proba(texts)
    assert np.abs(onnx - torch_).max() < FP32_MAX_ABS_DIFF
    assert (onnx.argmax(1) == torch_.argmax(1)).all()


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_onnx_int8_agrees_with_pytorch(mode: str, baseline: Variant, smoke_splits: Splits, ctx, tmp_path: Path) -> None:
    report = get_method("onnx_int8").from_config({"mode": mode, "calibration_texts": 32}).apply(baseline.model_dir, tmp_path / mode, ctx)
    assert Manifest.load(tmp_path / mode).format == "onnx"
    assert report.metrics["agreement_with_source"] >= INT8_MIN_AGREEMENT
    texts = sample_texts(smoke_splits)
    agree = np.mean(np.array(load_predictor(tmp_path / mode).predict(texts)) == np.array(load_predictor(baseline.model_dir).predict(texts)))
    assert agree >= INT8_MIN_AGREEMENT
    assert model_size_mb(tmp_path / mode) < model_size_mb(baseline.model_dir) / 2


def test_sparsity_says_it_brings_no_speedup(baseline: Variant, ctx, tmp_path: Path) -> None:
    report = get_method("sparsity").from_config({"sparsity": 0.5}).apply(baseline.model_dir, tmp_path / "s", ctx)
    assert report.metrics["weight_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert any("no speedup on dense CPU kernels" in note for note in report.notes)


def test_lora_records_its_trainable_share(baseline: Variant, ctx, tmp_path: Path) -> None:
    report = get_method("lora").from_config(TORCH_METHODS["lora"]).apply(baseline.model_dir, tmp_path / "l", ctx)
    assert 0 < report.metrics["trainable_share"] < 0.5
    assert Manifest.load(tmp_path / "l").format == "hf"  # adapters merged: serves as a plain model


@pytest.mark.parametrize(("method", "options", "reason"), [("half", {"dtype": "float16"}, "float16"), ("nf4", {}, "CUDA")])
def test_methods_the_cpu_cannot_run_are_skipped_with_a_reason(
    method: str,
    options: dict,
    reason: str,
    baseline: Variant,
    smoke_splits: Splits,
    smoke_cfg: RunConfig,
    store: ProjectPaths,
    parent_run: str,
) -> None:
    result = build_variant("v", [StepConfig(method=method, **options)], baseline, smoke_splits, smoke_cfg, store, parent_run)
    assert result.status == "skipped" and reason in result.reason
    run = mlflow_client().get_run(result.run_id)
    assert run.data.tags["status"] == "skipped" and reason in run.data.tags["skip_reason"]


def test_a_chain_records_its_parents_and_each_intermediate(
    baseline: Variant, smoke_splits: Splits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    steps = [
        StepConfig(method="distill", layers=1, epochs=1),
        StepConfig(method="prune", recovery_epochs=0),
        StepConfig(method="onnx_int8"),
    ]
    result = build_variant("chain", steps, baseline, smoke_splits, smoke_cfg, store, parent_run)
    assert result.status == "ok", result.reason
    mlc = mlflow_client()
    run = mlc.get_run(result.run_id)
    parents = run.data.tags["parents"].split(",")
    assert parents[0] == baseline.run_id and len(parents) == 3
    intermediates = [mlc.get_run(p) for p in parents[1:]]
    assert [r.data.tags["mlflow.parentRunId"] for r in intermediates] == [result.run_id] * 2
    assert [r.data.params["method"] for r in intermediates] == ["distill", "prune"]
    assert all(any(a.path == "model" for a in mlc.list_artifacts(r.info.run_id)) for r in intermediates)
    assert Manifest.load(result.model_dir).lineage == ["distill-1L", "prune", "onnx_export", "onnx_int8-dynamic"]

    again = build_variant("chain-2", [*steps[:2], StepConfig(method="dynamic_int8")], baseline, smoke_splits, smoke_cfg, store, parent_run)
    assert again.parents == result.parents  # the shared prefix was reused, not recomputed
    same = build_variant("chain-3", steps, baseline, smoke_splits, smoke_cfg, store, parent_run)
    assert same.model_dir == result.model_dir  # a variant identical to an earlier one reuses its model
    assert mlc.get_run(same.run_id).data.tags["reused_from"] == result.run_id


def test_transfer_rows_hide_their_labels_and_still_teach(
    smoke_cfg: RunConfig, smoke_splits: Splits, store: ProjectPaths, baseline: Variant, tmp_path: Path
) -> None:
    from helpers import shrink

    from tasks.compress._common import labelled_train, with_transfer_rows

    ctx = context(shrink(smoke_cfg, finetune={"max_rows": 200}), smoke_splits, store)
    labelled = labelled_train(ctx)
    mixed = with_transfer_rows(labelled, ctx, 100)
    assert len(labelled) == 200 and len(mixed) == 300
    assert mixed["label"].iloc[:200].notna().all() and mixed["label"].iloc[200:].isna().all()
    assert not set(mixed["text"].iloc[200:]) & set(labelled["text"])
    report = (
        get_method("distill").from_config({"layers": 1, "epochs": 1, "transfer_rows": 100}).apply(baseline.model_dir, tmp_path / "d", ctx)
    )
    assert report.params["train_steps"] == 300 // smoke_cfg.finetune.batch_size + (300 % smoke_cfg.finetune.batch_size > 0)
    assert np.isfinite(report.metrics["best_val_macro_f1"])
