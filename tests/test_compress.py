from __future__ import annotations

from pathlib import Path

import pytest
from helpers import sample_texts

from frugal.config import RunConfig, StepConfig
from frugal.modelio import Manifest, model_size_mb
from frugal.paths import ProjectPaths
from frugal.runtime import load_predictor
from tasks.common import Splits, Variant
from tasks.compress import REGISTRY, get_method
from tasks.compression import build_variant
from tasks.tracking import mlflow_client


def variant(name: str, steps: list[dict], baseline: Variant, splits: Splits, cfg: RunConfig, store: ProjectPaths, run: str) -> Variant:
    return build_variant(name, [StepConfig(**s) for s in steps], baseline, splits, cfg, store, run)


def test_methods_are_discovered_by_name() -> None:
    get_method("dynamic_int8")
    assert "dynamic_int8" in REGISTRY


def test_dynamic_int8_reloads_and_agrees_with_the_model_before_saving(
    baseline: Variant, smoke_splits: Splits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    import torch

    from frugal.modelio import load_torch, quantize_dynamic_int8
    from frugal.runtime import Tokenize

    result = variant("int8", [{"method": "dynamic_int8"}], baseline, smoke_splits, smoke_cfg, store, parent_run)
    assert result.status == "ok" and Manifest.load(result.model_dir).format == "torch-int8"
    texts = sample_texts(smoke_splits)
    in_memory = quantize_dynamic_int8(load_torch(baseline.model_dir))
    batch = {k: torch.from_numpy(v) for k, v in Tokenize(baseline.model_dir, 64)(texts).items()}
    with torch.inference_mode():
        before = in_memory(**batch).logits.argmax(1).tolist()
    after = load_predictor(result.model_dir).predict_proba(texts).argmax(1).tolist()
    assert before == after
    assert model_size_mb(result.model_dir) < model_size_mb(baseline.model_dir)


def test_a_failing_method_is_recorded_and_does_not_raise(
    baseline: Variant, smoke_splits: Splits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    # dynamic_int8 refuses a model that is already int8: a real failure, not a mock.
    result = variant(
        "twice", [{"method": "dynamic_int8"}, {"method": "dynamic_int8"}], baseline, smoke_splits, smoke_cfg, store, parent_run
    )
    assert result.status == "failed" and "needs a PyTorch (hf) model" in result.reason
    run = mlflow_client().get_run(result.run_id)
    assert run.info.status == "FAILED" and "needs a PyTorch (hf) model" in run.data.tags["error"]
    assert any(a.path == "error.txt" for a in mlflow_client().list_artifacts(result.run_id))


def test_model_folder_size_excludes_the_tokenizer(baseline: Variant) -> None:
    tokenizer_mb = sum(p.stat().st_size for p in Path(baseline.model_dir, "tokenizer").rglob("*") if p.is_file()) / 1e6
    total_mb = sum(p.stat().st_size for p in Path(baseline.model_dir).rglob("*") if p.is_file()) / 1e6
    assert model_size_mb(baseline.model_dir) == pytest.approx(total_mb - tokenizer_mb)
