"""GPU paths. CI has no GPU: these are skipped by the `gpu` marker there, never faked."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Built as Variant
from conftest import LocalSplits as Splits
from helpers import sample_texts, shrink

from frugal.config import RunConfig
from frugal.paths import ProjectPaths
from frugal.runtime import load_predictor
from tasks.compress import get_method
from tasks.compression import StepSettings, context

pytestmark = pytest.mark.gpu


def test_finetune_trains_on_cuda_with_bf16_autocast(smoke_cfg: RunConfig, smoke_splits: Splits, store: ProjectPaths) -> None:
    from tasks import tracking
    from tasks.finetune import finetune

    cfg = shrink(smoke_cfg, finetune={"device": "cuda"})
    with tracking.parent_run(cfg, store, run_name="gpu-finetune") as run_id:
        ref = finetune.fn(smoke_splits.ref, cfg.model, cfg.finetune, cfg.data.labels, cfg.seed, store, run_id)
    assert tracking.client(smoke_cfg, store).get_run(ref.run_id).data.params["train_device"] == "cuda"


@pytest.mark.parametrize(("method", "options"), [("half", {"dtype": "float16"}), ("half", {"dtype": "bfloat16"}), ("nf4", {})])
def test_gpu_methods_serve_on_cuda(
    method: str, options: dict, baseline: Variant, smoke_cfg: RunConfig, smoke_splits: Splits, store: ProjectPaths, tmp_path: Path
) -> None:
    if method == "nf4":
        pytest.importorskip("bitsandbytes")
    ctx = context(StepSettings.of(shrink(smoke_cfg, evaluate={"device": "cuda"})), smoke_splits.dir, store)
    get_method(method).from_config(options).apply(baseline.model_dir, tmp_path / method, ctx)
    texts = sample_texts(smoke_splits)
    quantized = load_predictor(tmp_path / method, device="cuda").predict(texts)
    reference = load_predictor(baseline.model_dir, device="cuda").predict(texts)
    assert sum(a == b for a, b in zip(quantized, reference, strict=True)) / len(texts) >= 0.9
    if method == "nf4":  # a 4-bit champion's bundle must pin the libraries that load it
        from tasks.package import requirements

        assert any(r.startswith("bitsandbytes==") for r in requirements("hf-nf4"))
