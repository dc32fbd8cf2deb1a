"""The compress stage: a step per cached task, chains, failures and skips recorded without stopping other variants."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Built, LocalSplits
from helpers import sample_texts

from frugal.config import RunConfig, StepConfig
from frugal.paths import ProjectPaths
from frugal.runtime import load_predictor
from frugal.runtime.manifest import Manifest, model_size_mb
from ml.compress import REGISTRY, get_method
from ml.compress.plan import Step, chain
from tasks.compress import StepSettings, build_variant, compress_step
from tasks.plumbing import store as model_store
from tasks.plumbing.refs import Variant
from tasks.plumbing.tracking import mlflow_client


def variant(name: str, steps: list[dict], baseline: Built, splits: LocalSplits, cfg: RunConfig, store: ProjectPaths, run: str) -> Variant:
    steps = chain(name, [StepConfig(**s) for s in steps])
    return build_variant(name, steps, baseline.ref, splits.ref, cfg, store, run, run_step=compress_step.fn)


def test_methods_are_discovered_by_name() -> None:
    get_method("dynamic_int8")
    assert "dynamic_int8" in REGISTRY


def test_dynamic_int8_reloads_and_agrees_with_the_model_before_saving(
    baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    import torch

    from frugal.runtime import Tokenize
    from frugal.runtime.formats.torch import load_torch, quantize_dynamic_int8

    result = variant("int8", [{"method": "dynamic_int8"}], baseline, smoke_splits, smoke_cfg, store, parent_run)
    model_dir = model_store.model_dir(result.model, store)
    assert result.status == "ok" and Manifest.load(model_dir).format == "torch-int8"
    texts = sample_texts(smoke_splits)
    in_memory = quantize_dynamic_int8(load_torch(baseline.model_dir))
    batch = {k: torch.from_numpy(v) for k, v in Tokenize(baseline.model_dir, 64)(texts).items()}
    with torch.inference_mode():
        before = in_memory(**batch).logits.argmax(1).tolist()
    # The same single batch on both sides: dynamic int8 scales activations per batch (the runtime's length-ordered
    # batches would group the texts differently and move borderline labels).
    after = load_predictor(model_dir).predict_proba(texts, batch_size=len(texts), sort_by_length=False).argmax(1).tolist()
    assert before == after
    assert model_size_mb(model_dir) < model_size_mb(baseline.model_dir)


def test_a_step_logs_its_model_once_on_a_step_run(
    baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    step = StepConfig(method="dynamic_int8")
    ref = compress_step.fn(baseline.ref, step, smoke_splits.ref, StepSettings.of(smoke_cfg), store, parent_run)
    run = mlflow_client().get_run(ref.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "step" and run.data.tags["source_run"] == baseline.run_id
    # The model lives in the artifact store only: nothing of it is left in the project's scratch space.
    assert model_store.model_dir(ref, store).is_relative_to(store.mlflow_artifacts)
    assert not (store.work / "models").exists()


def test_a_failing_method_is_recorded_and_does_not_raise(
    baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    # dynamic_int8 refuses a model that is already int8: a real failure, not a mock. (The plan refuses this chain before
    # anything runs, tests/test_config.py; here it is built step by step to reach the method's own check.)
    twice = [Step(StepConfig(method="dynamic_int8"), get_method("dynamic_int8").from_config({})) for _ in range(2)]
    result = build_variant("twice", twice, baseline.ref, smoke_splits.ref, smoke_cfg, store, parent_run, run_step=compress_step.fn)
    assert result.status == "failed" and "needs a PyTorch (hf) model" in result.reason
    failed = mlflow_client().search_runs(
        [mlflow_client().get_run(parent_run).info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_run}' and attributes.status = 'FAILED'",
    )
    assert failed and "needs a PyTorch (hf) model" in failed[0].data.tags["error"]
    assert any(a.path == "error.txt" for a in mlflow_client().list_artifacts(failed[0].info.run_id))


def test_a_method_the_hardware_cannot_run_is_skipped_before_any_run(
    baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    result = variant("fp16", [{"method": "half", "dtype": "float16"}], baseline, smoke_splits, smoke_cfg, store, parent_run)
    assert result.status == "skipped" and "float16" in result.reason and result.model is None


def test_model_folder_size_excludes_the_tokenizer(baseline: Built) -> None:
    tokenizer_mb = sum(p.stat().st_size for p in Path(baseline.model_dir, "tokenizer").rglob("*") if p.is_file()) / 1e6
    total_mb = sum(p.stat().st_size for p in Path(baseline.model_dir).rglob("*") if p.is_file()) / 1e6
    assert model_size_mb(baseline.model_dir) == pytest.approx(total_mb - tokenizer_mb)


def test_a_batch_of_transfer_rows_only_has_a_finite_distillation_loss() -> None:
    """A batch drawn only from label-hidden rows once made the loss NaN (mean cross-entropy over no rows), ruining the student."""
    import numpy as np
    import torch

    from ml.compress.common import distillation_loss
    from ml.training import UNLABELLED

    teacher = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    loss = distillation_loss(teacher, temperature=2.0, alpha=0.5)
    logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    unlabelled = loss(logits, torch.tensor([UNLABELLED, UNLABELLED]), np.array([0, 1]))
    labelled = loss(logits, torch.tensor([0, UNLABELLED]), np.array([0, 1]))
    assert not torch.isnan(unlabelled) and unlabelled.item() > 0  # the teacher term alone
    # the labelled row's cross-entropy counts once, averaged over the labelled rows only: ln(3) * (1 - alpha)
    assert labelled.item() - unlabelled.item() == pytest.approx(0.5 * np.log(3), rel=1e-5)
    unlabelled.backward()
    assert torch.isfinite(logits.grad).all()
