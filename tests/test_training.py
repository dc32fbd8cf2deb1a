from __future__ import annotations

import json
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
from frugal.runtime import Tokenize
from frugal.runtime.formats.torch import count_params
from frugal.runtime.manifest import Manifest
from ml.modeling import load_pretrained
from ml.training import _epoch_batches, predict_logits, train
from tasks.plumbing import tracking


def store_client(smoke_cfg: RunConfig, store: ProjectPaths):  # noqa: ANN201
    """The unit-test store's client (another module may have pointed MLflow's process-wide store elsewhere)."""
    return tracking.client(smoke_cfg, store)


def test_finetune_logs_the_baseline_run(baseline: Variant, smoke_cfg: RunConfig, store: ProjectPaths) -> None:
    run = store_client(smoke_cfg, store).get_run(baseline.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["kind"] == "step" and run.data.tags["step"] == "finetune"
    assert {"best_val_macro_f1", "train_seconds", "train_usd", "val_macro_f1"} <= set(run.data.metrics)
    assert Manifest.load(baseline.model_dir).format == "hf"
    assert any(a.path == "model" for a in store_client(smoke_cfg, store).list_artifacts(baseline.run_id))


def test_finetuned_model_beats_chance(baseline: Variant, smoke_cfg: RunConfig, store: ProjectPaths) -> None:
    assert store_client(smoke_cfg, store).get_run(baseline.run_id).data.metrics["best_val_macro_f1"] > 0.34


def test_batches_cover_every_row_once_per_epoch_and_repeat_with_the_seed() -> None:
    lengths = torch.randint(1, 100, (1000,)).numpy()
    batches = _epoch_batches(0, lengths, 32, seed=7)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    again = _epoch_batches(0, lengths, 32, seed=7)
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))
    assert any((a != b).any() for a, b in zip(batches, _epoch_batches(1, lengths, 32, seed=7), strict=False))


def test_frozen_embeddings_are_not_counted_as_trained(smoke_cfg: RunConfig, smoke_splits: Splits, baseline: Variant) -> None:
    cfg = shrink(smoke_cfg, finetune={"freeze_embeddings": True, "epochs": 0.1}).finetune
    train_df, val_df = pd.read_parquet(smoke_splits.path("train")), pd.read_parquet(smoke_splits.path("val"))
    model = load_pretrained(smoke_cfg.model, smoke_cfg.data.labels, 0)
    result = train(model, Tokenize(baseline.model_dir, 64), train_df, val_df, smoke_cfg.data.labels, cfg, 0, None, "")
    embeddings = model.base_model.embeddings.word_embeddings.weight.numel()
    assert result.trainable_params == count_params(model) - embeddings
    assert result.record(count_params(model))[1]["trainable_share"] < 1


def test_a_training_that_cannot_reach_the_bar_gives_up_halfway(smoke_cfg: RunConfig, smoke_splits: Splits, baseline: Variant) -> None:
    from ml.training import GiveUp

    cfg = shrink(smoke_cfg, finetune={"epochs": 1, "evals_per_epoch": 4}).finetune
    train_df, val_df = pd.read_parquet(smoke_splits.path("train")), pd.read_parquet(smoke_splits.path("val"))
    labels, tokenize = smoke_cfg.data.labels, Tokenize(baseline.model_dir, 64)
    always = GiveUp(0.5, 0.0)
    full = train(load_pretrained(smoke_cfg.model, labels, 0), tokenize, train_df, val_df, labels, cfg, 0, None, "", give_up=always)
    assert full.gave_up_at_step == 0 and len(full.history) >= 4  # a bar every check clears: trains to the end

    unreachable = GiveUp(0.5, 1.01)  # no macro-F1 reaches it: the first check at or past half the steps stops it
    result = train(load_pretrained(smoke_cfg.model, labels, 0), tokenize, train_df, val_df, labels, cfg, 0, None, "", give_up=unreachable)
    halfway = next(i for i, h in enumerate(full.history) if h["step"] >= full.steps / 2)
    assert [h["step"] for h in result.history] == [h["step"] for h in full.history[: halfway + 1]]
    assert result.gave_up_at_step == result.steps == full.history[halfway]["step"] < full.steps
    assert result.record(1)[1]["gave_up_at_step"] == result.steps


class Crash(Exception):
    pass


def test_a_crashed_run_resumes_from_its_checkpoint(tmp_path: Path, smoke_cfg: RunConfig, smoke_splits: Splits, baseline: Variant) -> None:
    cfg = shrink(smoke_cfg, finetune={"checkpoint_every_steps": 5, "epochs": 1}).finetune
    train_df, val_df = pd.read_parquet(smoke_splits.path("train")), pd.read_parquet(smoke_splits.path("val"))
    tokenize = Tokenize(baseline.model_dir, 64)
    steps_seen: list[int] = []

    def crash_at_12(logits: torch.Tensor, targets: torch.Tensor, idx: object) -> torch.Tensor:
        steps_seen.append(1)
        if len(steps_seen) == 12:
            raise Crash
        return torch.nn.functional.cross_entropy(logits, targets)

    ckpt = tmp_path / "ckpt"
    model = load_pretrained(smoke_cfg.model, smoke_cfg.data.labels, 0)
    with pytest.raises(Crash):
        train(model, tokenize, train_df, val_df, smoke_cfg.data.labels, cfg, 0, ckpt, "key-1", loss_fn=crash_at_12)
    assert (ckpt / "progress.json").is_file()

    resumed: list[int] = []

    def count(logits: torch.Tensor, targets: torch.Tensor, idx: object) -> torch.Tensor:
        resumed.append(1)
        return torch.nn.functional.cross_entropy(logits, targets)

    model = load_pretrained(smoke_cfg.model, smoke_cfg.data.labels, 0)
    result = train(model, tokenize, train_df, val_df, smoke_cfg.data.labels, cfg, 0, ckpt, "key-1", loss_fn=count)
    assert len(resumed) == result.steps - 10  # picked up after the checkpoint at step 10


def test_a_kill_while_a_checkpoint_is_written_resumes_from_the_one_before(
    tmp_path: Path, smoke_cfg: RunConfig, smoke_splits: Splits, baseline: Variant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies inside the second save (step 10), at its folder's rename: the step-5 checkpoint must still resume."""
    cfg = shrink(smoke_cfg, finetune={"checkpoint_every_steps": 5, "epochs": 1}).finetune
    train_df, val_df = pd.read_parquet(smoke_splits.path("train")), pd.read_parquet(smoke_splits.path("val"))
    tokenize, labels, ckpt = Tokenize(baseline.model_dir, 64), smoke_cfg.data.labels, tmp_path / "ckpt"
    renames: list[Path] = []
    real_rename = Path.rename

    def dies_on_the_second(self: Path, target: Path) -> Path:
        renames.append(self)
        if len(renames) == 2:
            raise Crash
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", dies_on_the_second)
    with pytest.raises(Crash):
        train(load_pretrained(smoke_cfg.model, labels, 0), tokenize, train_df, val_df, labels, cfg, 0, ckpt, "key-1")
    monkeypatch.undo()
    steps: list[int] = []

    def count(logits: torch.Tensor, targets: torch.Tensor, idx: object) -> torch.Tensor:
        steps.append(1)
        return torch.nn.functional.cross_entropy(logits, targets)

    result = train(load_pretrained(smoke_cfg.model, labels, 0), tokenize, train_df, val_df, labels, cfg, 0, ckpt, "key-1", loss_fn=count)
    assert result.resumed_from_step == 5 and len(steps) == result.steps - 5


def test_a_checkpoint_of_another_config_is_ignored(tmp_path: Path, smoke_cfg: RunConfig, smoke_splits: Splits, baseline: Variant) -> None:
    cfg = shrink(smoke_cfg, finetune={"checkpoint_every_steps": 5, "epochs": 1}).finetune
    train_df, val_df = pd.read_parquet(smoke_splits.path("train")), pd.read_parquet(smoke_splits.path("val"))
    tokenize = Tokenize(baseline.model_dir, 64)
    ckpt = tmp_path / "ckpt"
    labels = smoke_cfg.data.labels

    def counter(seen: list[int], crash_at: int = 0):  # noqa: ANN202
        def loss(logits: torch.Tensor, targets: torch.Tensor, idx: object) -> torch.Tensor:
            seen.append(1)
            if len(seen) == crash_at:
                raise Crash
            return torch.nn.functional.cross_entropy(logits, targets)

        return loss

    # A real, resumable checkpoint at step 10, written by a run of another config (key "other").
    with pytest.raises(Crash):
        train(load_pretrained(smoke_cfg.model, labels, 0), tokenize, train_df, val_df, labels, cfg, 0, ckpt, "other",
              loss_fn=counter([], crash_at=12))  # fmt: skip
    planted = json.loads((ckpt / "progress.json").read_text())
    assert (planted["key"], planted["step"]) == ("other", 10)

    steps: list[int] = []
    result = train(load_pretrained(smoke_cfg.model, labels, 0), tokenize, train_df, val_df, labels, cfg, 0, ckpt, "key-2",
                   loss_fn=counter(steps))  # fmt: skip
    # Resuming would have skipped the first 10 steps (see the crash test): this run trained every step itself.
    assert result.resumed_from_step == 0 and len(steps) == result.steps > 10


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(logits).double().softmax(dim=1).numpy()


def test_saved_model_reloads_with_the_predictions_it_had_in_memory(tmp_path: Path, smoke_cfg: RunConfig, smoke_splits: Splits) -> None:
    """What is saved is the model as trained (its best weights and head), not a re-initialised or stale copy."""
    from helpers import sample_texts

    from frugal.runtime import load_predictor
    from frugal.runtime.formats.torch import save_hf
    from ml.modeling import load_tokenizer, save_tokenizer

    cfg = shrink(smoke_cfg, finetune={"epochs": 1}).finetune
    labels, out = smoke_cfg.data.labels, tmp_path / "model"
    save_tokenizer(load_tokenizer(smoke_cfg.model), out)
    tokenize = Tokenize(out, 64)
    train_df, val_df = pd.read_parquet(smoke_splits.path("train")), pd.read_parquet(smoke_splits.path("val"))
    model = load_pretrained(smoke_cfg.model, labels, 0)
    untrained = load_pretrained(smoke_cfg.model, labels, 0)
    train(model, tokenize, train_df, val_df, labels, cfg, 0, None, "")
    texts = sample_texts(smoke_splits)
    in_memory = softmax(predict_logits(model, tokenize, texts, "cpu"))
    save_hf(model, out, Manifest(format="hf", labels=labels, max_length=64, params=count_params(model)))

    reloaded = load_predictor(out).predict_proba(texts)
    # Same weights, different batching (padding): equal up to float32 rounding.
    assert np.abs(reloaded - in_memory).max() < 1e-5
    # ...and training moved the model well beyond that tolerance, so a reload of fresh weights could not pass.
    assert np.abs(softmax(predict_logits(untrained, tokenize, texts, "cpu")) - in_memory).max() > 0.05
