"""GPU paths. CI has no GPU: these are skipped by the `gpu` marker there, never faked.

Each test checks what really happened on the device (where the weights live, the dtype the
forward computed in, how far the predictions moved), not the settings it was given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import Built as Variant
from conftest import LocalSplits as Splits
from helpers import shrink

from frugal.config import RunConfig
from frugal.paths import ProjectPaths
from frugal.runtime import Tokenize, load_predictor
from frugal.runtime.manifest import model_size_mb
from ml.compress import get_method
from tasks.compress import StepSettings, context

pytestmark = pytest.mark.gpu

# Measured on CPU (no GPU here) with the smoke baseline on its 120 val + test texts: fp16 and bf16 agree on
# every label, largest probability change 0.0005 (fp16) and 0.006 (bf16); NF4 emulated on the weights agrees
# on 99%, largest change 0.03. The bounds leave room for CUDA's half-precision attention kernels.
MAX_PROBA_CHANGE = {"float16": 0.01, "bfloat16": 0.05, "nf4": 0.15}
MIN_AGREEMENT = 0.9


def texts_of(splits: Splits) -> list[str]:
    return [t for split in ("val", "test") for t in pd.read_parquet(splits.path(split))["text"]]


def first_linear(model: torch.nn.Module) -> torch.nn.Module:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Linear))


def train_on_cuda(precision: str, smoke_cfg: RunConfig, smoke_splits: Splits, tmp_path: Path) -> tuple[torch.nn.Module, object, list]:
    """The smoke model trained on CUDA in `precision`; (training?, dtype, device, autocast on?) of each first-Linear forward."""
    from ml.modeling import load_pretrained, load_tokenizer, save_tokenizer
    from ml.training import train

    cfg = shrink(smoke_cfg, finetune={"device": "cuda", "precision": precision}).finetune
    labels = smoke_cfg.data.labels
    save_tokenizer(load_tokenizer(smoke_cfg.model), tmp_path / "tok")
    model = load_pretrained(smoke_cfg.model, labels, 0)
    forwards: list[tuple[bool, torch.dtype, str, bool]] = []
    hook = first_linear(model).register_forward_hook(
        lambda module, _inputs, out: forwards.append((module.training, out.dtype, out.device.type, torch.is_autocast_enabled("cuda")))
    )
    train_df, val_df = pd.read_parquet(smoke_splits.path("train")), pd.read_parquet(smoke_splits.path("val"))
    result = train(model, Tokenize(tmp_path / "tok", 64), train_df, val_df, labels, cfg, 0, None, "")
    hook.remove()
    return model, result, forwards


def test_training_runs_on_cuda_under_bf16_autocast_with_fp32_weights(smoke_cfg: RunConfig, smoke_splits: Splits, tmp_path: Path) -> None:
    model, result, forwards = train_on_cuda("bf16", smoke_cfg, smoke_splits, tmp_path)
    training = [f for f in forwards if f[0]]
    assert result.device == "cuda" and result.precision == "bf16" and len(training) == result.steps
    assert all(f[1:] == (torch.bfloat16, "cuda", True) for f in training), set(training)  # every step's matmuls ran in bf16
    assert {f[1:] for f in forwards if not f[0]} == {(torch.float32, "cuda", False)}  # validation in fp32, as served
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 masters
    assert result.best_val_macro_f1 > 0.34  # it learned (chance is ~0.33)


def test_fp16_training_on_cuda_scales_its_gradients(
    smoke_cfg: RunConfig, smoke_splits: Splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scales: list[float] = []  # the loss scale after each step: 1.0 throughout would mean no scaler ran
    update = torch.amp.GradScaler.update

    def recording_update(self: torch.amp.GradScaler, *args: object) -> None:
        update(self, *args)
        scales.append(self.get_scale())

    monkeypatch.setattr(torch.amp.GradScaler, "update", recording_update)
    model, result, forwards = train_on_cuda("fp16", smoke_cfg, smoke_splits, tmp_path)
    training = [f for f in forwards if f[0]]
    assert result.precision == "fp16" and len(training) == result.steps
    assert all(f[1:] == (torch.float16, "cuda", True) for f in training), set(training)
    assert len(scales) == result.steps and min(scales) > 1.0  # GradScaler starts at 2**16 and halves only on overflow
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())  # no inf/NaN reached a weight
    assert result.best_val_macro_f1 > 0.34


def test_a_model_finetuned_on_cuda_serves_on_cpu_with_the_same_predictions(
    smoke_cfg: RunConfig, smoke_splits: Splits, store: ProjectPaths
) -> None:
    from tasks.finetune import finetune
    from tasks.plumbing import store as model_store
    from tasks.plumbing import tracking

    cfg = shrink(smoke_cfg, finetune={"device": "cuda"})
    with tracking.parent_run(cfg, store, run_name="gpu-finetune") as run_id:
        ref = finetune.fn(smoke_splits.ref, cfg.model, cfg.finetune, cfg.data.labels, cfg.seed, store, run_id)
    assert tracking.client(smoke_cfg, store).get_run(ref.run_id).data.params["train_device"] == "cuda"
    model_dir = model_store.model_dir(ref, store)
    texts = texts_of(smoke_splits)
    on_cuda = load_predictor(model_dir, device="cuda")
    assert all(p.device.type == "cuda" for p in on_cuda.model.parameters())
    on_cpu = load_predictor(model_dir).predict_proba(texts)
    assert np.abs(on_cuda.predict_proba(texts) - on_cpu).max() < 1e-3  # fp32 both: only kernel rounding differs


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_computes_in_its_dtype_on_cuda_and_agrees_with_fp32(
    dtype: str, baseline: Variant, smoke_cfg: RunConfig, smoke_splits: Splits, store: ProjectPaths, tmp_path: Path
) -> None:
    ctx = context(StepSettings.of(shrink(smoke_cfg, evaluate={"device": "cuda"})), smoke_splits.dir, store)
    get_method("half").from_config({"dtype": dtype}).apply(baseline.model_dir, tmp_path / dtype, ctx)
    predictor = load_predictor(tmp_path / dtype, device="cuda")
    assert all(p.device.type == "cuda" and p.dtype == getattr(torch, dtype) for p in predictor.model.parameters())
    outputs: list[tuple[torch.dtype, str]] = []
    hook = first_linear(predictor.model).register_forward_hook(lambda _m, _i, out: outputs.append((out.dtype, out.device.type)))
    texts = texts_of(smoke_splits)
    half = predictor.predict_proba(texts)
    hook.remove()
    assert outputs and set(outputs) == {(getattr(torch, dtype), "cuda")}
    full = load_predictor(baseline.model_dir, device="cuda").predict_proba(texts)
    assert (half.argmax(1) == full.argmax(1)).mean() >= MIN_AGREEMENT
    assert np.abs(half - full).max() < MAX_PROBA_CHANGE[dtype]
    assert model_size_mb(tmp_path / dtype) < 0.55 * model_size_mb(baseline.model_dir)  # every weight in 2 bytes instead of 4


def test_nf4_stores_encoder_weights_in_4_bits_on_cuda_and_agrees_with_fp32(
    baseline: Variant, smoke_cfg: RunConfig, smoke_splits: Splits, store: ProjectPaths, tmp_path: Path
) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    ctx = context(StepSettings.of(shrink(smoke_cfg, evaluate={"device": "cuda"})), smoke_splits.dir, store)
    get_method("nf4").from_config({}).apply(baseline.model_dir, tmp_path / "nf4", ctx)
    predictor = load_predictor(tmp_path / "nf4", device="cuda")
    # The file barely shrinks here: 96% of the tiny model is its fp32 word embeddings, which NF4 leaves alone.
    # What must hold is that every encoder matmul weight is packed two 4-bit NF4 codes per byte, on the GPU.
    encoder = [m for name, m in predictor.model.named_modules() if ".encoder." in f".{name}." and isinstance(m, torch.nn.Linear)]
    assert encoder and all(isinstance(m, bnb.nn.Linear4bit) for m in encoder)
    for m in encoder:
        assert m.weight.quant_type == "nf4" and m.weight.dtype == torch.uint8 and m.weight.device.type == "cuda"
        assert m.weight.numel() * 2 == m.in_features * m.out_features
    texts = texts_of(smoke_splits)
    nf4 = predictor.predict_proba(texts)
    full = load_predictor(baseline.model_dir, device="cuda").predict_proba(texts)
    assert (nf4.argmax(1) == full.argmax(1)).mean() >= MIN_AGREEMENT
    assert np.abs(nf4 - full).max() < MAX_PROBA_CHANGE["nf4"]

    from tasks.package import requirements  # a 4-bit champion's bundle must pin the libraries that load it

    assert any(r.startswith("bitsandbytes==") for r in requirements(tmp_path / "nf4"))
