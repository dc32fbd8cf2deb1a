"""Mixed-precision training (`finetune.precision`, a training method's `precision`): what really ran, what was recorded,
and the one clear refusal where the hardware lacks the precision. CUDA's bf16 and fp16 are in tests/test_gpu.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import Built, LocalSplits
from helpers import shrink

from frugal.config import RunConfig, StepConfig
from frugal.errors import ConfigError
from frugal.hardware import training_precision_unsupported
from frugal.modelio import load_torch
from frugal.paths import ProjectPaths
from frugal.runtime import Tokenize, load_predictor
from tasks import store as model_store
from tasks import tracking
from tasks.compression import build_variant, compress_step
from tasks.modeling import load_pretrained, load_tokenizer, save_tokenizer
from tasks.training import TrainResult, train

SKYLAKE = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw\n"
# On the smoke data the tiny model's best val macro-F1 after bf16 training was within 0.0 of the fp32 run's, measured on
# an AMD EPYC with avx512_bf16 (both ~0.5; chance ~0.33). The bound leaves room for bf16 rounding moving a few val labels.
MAX_F1_GAP = 0.08


def needs_cpu_bf16() -> None:
    reason = training_precision_unsupported("bf16", "cpu")
    if reason:
        pytest.skip(f"bf16 training on this CPU is refused: {reason}")


def run_names(store: ProjectPaths, cfg: RunConfig) -> list[tuple[str, str]]:
    mlc = tracking.client(cfg, store)
    experiments = [e.experiment_id for e in mlc.search_experiments()]
    return [(r.info.run_id, r.info.status) for r in mlc.search_runs(experiments)] if experiments else []


def train_in(precision: str, cfg: RunConfig, splits: LocalSplits, tok: Path) -> tuple[torch.nn.Module, TrainResult, list[tuple]]:
    """Train the tiny smoke model in `precision` on CPU; also return (training?, dtype, autocast on?) of each first-Linear forward."""
    train_cfg = shrink(cfg, finetune={"precision": precision, "device": "cpu"}).finetune
    model = load_pretrained(cfg.model, cfg.data.labels, 0)
    forwards: list[tuple] = []
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    hook = linear.register_forward_hook(lambda m, _i, out: forwards.append((m.training, out.dtype, torch.is_autocast_enabled("cpu"))))
    train_df, val_df = pd.read_parquet(splits.path("train")), pd.read_parquet(splits.path("val"))
    result = train(model, Tokenize(tok, 64), train_df, val_df, cfg.data.labels, train_cfg, 0, None, "")
    hook.remove()
    return model, result, forwards


@pytest.mark.slow
def test_bf16_training_on_a_cpu_with_bf16_kernels(smoke_cfg: RunConfig, smoke_splits: LocalSplits, tmp_path: Path) -> None:
    needs_cpu_bf16()
    save_tokenizer(load_tokenizer(smoke_cfg.model), tmp_path)
    model, result, forwards = train_in("bf16", smoke_cfg, smoke_splits, tmp_path)

    training = [f for f in forwards if f[0]]
    assert len(training) == result.steps and all(f[1:] == (torch.bfloat16, True) for f in training), set(training)
    # Validation ran in fp32, outside autocast: model selection measures the fp32 model that is saved and served.
    assert {f[1:] for f in forwards if not f[0]} == {(torch.float32, False)}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not .half(): the weights stay fp32
    params, _ = result.record(1)
    assert params["precision"] == "bf16"

    _, fp32, fp32_forwards = train_in("fp32", smoke_cfg, smoke_splits, tmp_path)
    assert {f[1:] for f in fp32_forwards} == {(torch.float32, False)}
    assert result.best_val_macro_f1 > 0.34  # learned (chance ~0.33)
    assert abs(result.best_val_macro_f1 - fp32.best_val_macro_f1) <= MAX_F1_GAP, (result.best_val_macro_f1, fp32.best_val_macro_f1)


@pytest.mark.slow
def test_bf16_finetune_logs_its_precision_and_saves_fp32(smoke_cfg: RunConfig, smoke_splits: LocalSplits, store: ProjectPaths) -> None:
    from tasks.finetune import finetune

    needs_cpu_bf16()
    cfg = shrink(smoke_cfg, finetune={"precision": "bf16", "device": "cpu", "epochs": 2})
    tracking.client(cfg, store)
    with tracking.parent_run(cfg, store, run_name="bf16-finetune") as run_id:
        ref = finetune.fn(smoke_splits.ref, cfg.model, cfg.finetune, cfg.data.labels, cfg.seed, store, run_id)
    run = tracking.client(cfg, store).get_run(ref.run_id)
    assert run.info.status == "FINISHED" and run.data.params["precision"] == "bf16"
    assert {"train_seconds", "train_usd", "best_val_macro_f1"} <= set(run.data.metrics)
    folder = model_store.model_dir(ref, store)
    assert all(p.dtype == torch.float32 for p in load_torch(folder).parameters())
    assert len(load_predictor(folder).predict(["a good day", "a bad day"])) == 2


def assert_refused_before_anything_is_written(cfg: RunConfig, splits: LocalSplits, store: ProjectPaths) -> ConfigError:
    from tasks.finetune import finetune

    runs_before = run_names(store, cfg)
    checkpoints = store.work / "checkpoints"
    kept = sorted(checkpoints.iterdir()) if checkpoints.is_dir() else []
    with tracking.parent_run(cfg, store, run_name="refused") as run_id, pytest.raises(ConfigError) as err:
        finetune.fn(splits.ref, cfg.model, cfg.finetune, cfg.data.labels, cfg.seed, store, run_id)
    new = [r for r in run_names(store, cfg) if r not in runs_before]
    assert [status for _, status in new] == ["FINISHED"]  # only the test's own parent run: no finetune step run was opened
    assert (sorted(checkpoints.iterdir()) if checkpoints.is_dir() else []) == kept  # and no checkpoint folder
    assert "\n  Fix: " in str(err.value) and str(err.value).count("Fix:") == 1  # one message: the problem, then the fix
    return err.value


def test_fp16_on_cpu_is_one_config_error_naming_the_fix(smoke_cfg: RunConfig, smoke_splits: LocalSplits, store: ProjectPaths) -> None:
    cfg = shrink(smoke_cfg, finetune={"precision": "fp16", "device": "cpu"})
    err = assert_refused_before_anything_is_written(cfg, smoke_splits, store)
    assert "finetune.precision is fp16" in err.problem and "CUDA only" in err.problem
    assert "finetune.precision: fp32" in err.fix


def test_bf16_on_a_cpu_without_its_flags_is_one_config_error(
    smoke_cfg: RunConfig, smoke_splits: LocalSplits, store: ProjectPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("frugal.hardware.read_cpuinfo", lambda *_: SKYLAKE)  # a CPU without avx512_bf16 or amx_bf16
    cfg = shrink(smoke_cfg, finetune={"precision": "bf16", "device": "cpu"})
    err = assert_refused_before_anything_is_written(cfg, smoke_splits, store)
    assert "finetune.precision is bf16" in err.problem and "avx512_bf16 nor amx_bf16" in err.problem
    assert "finetune.precision: fp32" in err.fix


def test_a_training_method_in_a_precision_the_hardware_lacks_is_skipped_before_its_run(
    baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    cfg = shrink(smoke_cfg, finetune={"device": "cpu"})
    runs_before = run_names(store, cfg)
    steps = [StepConfig(method="prune", recovery_epochs=1, importance_batches=2, precision="fp16")]
    result = build_variant("prune-fp16", steps, baseline.ref, smoke_splits.ref, cfg, store, parent_run, run_step=compress_step.fn)
    assert result.status == "skipped" and result.model is None
    assert "training precision fp16" in result.reason and "CUDA only" in result.reason
    assert [r for r in run_names(store, cfg) if r not in runs_before] == []  # no step run left FAILED or RUNNING


@pytest.mark.slow
def test_a_training_method_trains_in_its_own_precision(baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig,
                                                       store: ProjectPaths, parent_run: str) -> None:  # fmt: skip
    needs_cpu_bf16()
    cfg = shrink(smoke_cfg, finetune={"device": "cpu"})  # the baseline trained in fp32; the distilled student in bf16
    steps = [StepConfig(method="distill", layers=1, epochs=1, precision="bf16")]
    result = build_variant("distill-bf16", steps, baseline.ref, smoke_splits.ref, cfg, store, parent_run, run_step=compress_step.fn)
    assert result.status == "ok", result.reason
    run = tracking.client(cfg, store).get_run(result.model.run_id)
    assert run.data.params["precision"] == "bf16" and run.data.params["option.precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in load_torch(model_store.model_dir(result.model, store)).parameters())
