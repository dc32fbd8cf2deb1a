"""The generative methods that change the model: layer_drop (+ distillation) and speculative decoding, on tiny random Llamas."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from gen_helpers import CORPUS, save_tiny_causal, write_tokenizer

from frugal.config import load_config
from frugal.errors import ConfigError, ModelError
from frugal.runtime.formats.causal import load_causal
from frugal.runtime.manifest import TOKENIZER_DIR, Manifest
from frugal.runtime.registry import load_generator
from ml.compress import CompressContext, get_method
from ml.generation.batches import encode_pair
from ml.generation.distill import cut_layers, kept_layers, val_losses

PROMPTS = ["Markets rallied on Tuesday", "The club signed a striker", "Scientists found water ice", "Summarise the article"]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer random teacher (causal-hf) and train/val prompt/response splits of words from the tokenizer's corpus."""
    root = tmp_path_factory.mktemp("genmethods")
    write_tokenizer(root / "tok")
    save_tiny_causal(root / "teacher", root / "tok", seed=0, layers=4)
    words = " ".join(CORPUS).split()
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(words, size=6)) for _ in range(40)]
    frame = pd.DataFrame({"prompt": [f"Headline: {s}" for s in sentences], "response": [" ".join(s.split()[:3]) for s in sentences]})
    (root / "data").mkdir()
    frame.iloc[:32].to_parquet(root / "data" / "train.parquet")
    frame.iloc[32:].to_parquet(root / "data" / "val.parquet")
    return root


def context(root: Path, tmp: Path) -> CompressContext:
    cfg = load_config("generate-smoke")
    return CompressContext(data=root / "data", labels=[], seed=0, train=cfg.finetune, model=cfg.model, serve_device="cpu",
                           scratch=tmp / "scratch", checkpoint=tmp / "ckpt", generate=cfg.generate, baseline=root / "teacher")  # fmt: skip


@pytest.fixture(scope="module")
def dropped(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """The teacher cut to 2 layers and distilled (token + sequence KD); its folder and the step's metrics."""
    tmp = tmp_path_factory.mktemp("dropped")
    method = get_method("layer_drop").from_config({"keep_layers": 2, "epochs": 2, "sequence_rows": 8})
    report = method.apply(tiny / "teacher", tmp / "student", context(tiny, tmp))
    return tmp / "student", report.metrics


def test_kept_layers_are_evenly_spaced_with_the_first_and_last() -> None:
    layers = kept_layers(30, 15)
    assert len(set(layers)) == 15 and layers == sorted(layers) and layers[0] == 0 and layers[-1] == 29
    assert np.ptp(np.diff(layers)) <= 1  # evenly spaced: gaps differ by at most one layer
    assert kept_layers(4, 2) == [0, 3] and kept_layers(4, 1) == [0]
    with pytest.raises(ConfigError, match="keep_layers=4"):
        kept_layers(4, 4)


def test_the_cut_decodes_with_its_kv_cache_renumbered(tiny: Path) -> None:
    import torch

    student, kept = cut_layers(load_causal(tiny / "teacher"), 2)
    assert kept == [0, 3] and student.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    ids = torch.tensor([[5, 17, 42, 9]])
    cached = student.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True)
    uncached = student.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_layer_drop_reloads_and_generates_in_a_fresh_process(dropped: tuple[Path, dict[str, float]]) -> None:
    student, _ = dropped
    manifest = Manifest.load(student)
    assert manifest.format == "causal-hf" and manifest.task == "generate" and manifest.lineage[-1] == "layer_drop-2L"
    assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == 2
    here = load_generator(student)
    expected = [[t for t, _ in here.stream_ids(here.encode(p, NEW_TOKENS), NEW_TOKENS)] for p in PROMPTS]
    code = (
        "import json, sys; from frugal.runtime.registry import load_generator; g = load_generator(sys.argv[1]); "
        f"print(json.dumps([[t for t, _ in g.stream_ids(g.encode(p, {NEW_TOKENS}), {NEW_TOKENS})] for p in {PROMPTS!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(student)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected
    assert all(expected)


def test_distillation_brings_the_cut_closer_to_its_teacher(tiny: Path, dropped: tuple[Path, dict[str, float]]) -> None:
    """Val KL(teacher || student) on the response tokens: the distilled student's is below the undistilled cut's."""
    from transformers import AutoTokenizer

    student, metrics = dropped
    teacher = load_causal(tiny / "teacher")
    tokenizer = AutoTokenizer.from_pretrained(tiny / "teacher" / TOKENIZER_DIR)
    val = pd.read_parquet(tiny / "data" / "val.parquet")
    rows = [encode_pair(tokenizer, p, r, True, 256) for p, r in zip(val["prompt"], val["response"], strict=True)]
    cut = val_losses(cut_layers(teacher, 2)[0], teacher, rows, 0, 8)["kl"]
    distilled = val_losses(load_causal(student), teacher, rows, 0, 8)["kl"]
    assert distilled < cut
    assert metrics["val_kl_before"] == pytest.approx(cut, rel=1e-4) and metrics["val_kl_after"] == pytest.approx(distilled, rel=1e-4)


def test_speculative_output_is_the_targets_token_for_token(tiny: Path, dropped: tuple[Path, dict[str, float]], tmp_path: Path) -> None:
    student, _ = dropped
    method = get_method("speculative").from_config({"num_assistant_tokens": 3, "check_tokens": 3})
    report = method.apply(student, tmp_path / "pair", context(tiny, tmp_path))
    assert Manifest.load(tmp_path / "pair").format == "causal-speculative"
    assert report.metrics["greedy_identical"] == 1.0 and report.metrics["target_passes_per_token"] <= 1.0
    pair, target = load_generator(tmp_path / "pair"), load_generator(tiny / "teacher")
    for prompt in PROMPTS:
        ids = target.encode(prompt, 16)
        assert [t for t, _ in pair.stream_ids(ids, 16)] == [t for t, _ in target.stream_ids(ids, 16)]


def test_a_draft_that_agrees_cuts_target_passes(tiny: Path, tmp_path: Path) -> None:
    """The target as its own draft: every drafted token is accepted, so a target pass yields more than one token.

    (How many: the draft stops at a token it is under 40 % sure of, transformers' assistant_confidence_threshold, and a random
    model is rarely that sure: about two tokens per pass here.)"""
    method = get_method("speculative").from_config({"num_assistant_tokens": 4, "check_tokens": 2})
    report = method.apply(tiny / "teacher", tmp_path / "pair", context(tiny, tmp_path))
    assert report.metrics["greedy_identical"] == 1.0
    assert report.metrics["target_passes_per_token"] <= 0.6 and report.metrics["plain_passes_per_token"] == pytest.approx(1.0)


def test_a_draft_with_another_tokenizer_is_one_error(tiny: Path, tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "other-tok", vocab_size=280, corpus=["Completely different words make another vocabulary."] * 8)
    save_tiny_causal(tmp_path / "other", tmp_path / "other-tok", seed=1, layers=1)
    method = get_method("speculative").from_config({})
    with pytest.raises(ModelError, match="different tokenizer") as error:
        method.apply(tmp_path / "other", tmp_path / "pair", context(tiny, tmp_path))
    assert "Fix:" in str(error.value) and not (tmp_path / "pair").exists()


def test_layer_drop_needs_the_generate_settings(tiny: Path, tmp_path: Path) -> None:
    ctx = replace(context(tiny, tmp_path), generate=None)
    with pytest.raises(ConfigError, match="task: generate"):
        get_method("layer_drop").from_config({"keep_layers": 1}).apply(tiny / "teacher", tmp_path / "out", ctx)


def test_a_resumed_layer_drop_ends_as_the_uninterrupted_one(tiny: Path, tmp_path: Path) -> None:
    """Checkpoints every 2 steps are left behind (as by a killed step); the rerun resumes at the last one and ends the same."""
    import torch

    ctx = context(tiny, tmp_path)
    ctx = replace(ctx, train=ctx.train.model_copy(update={"checkpoint_every_steps": 2}))
    method = get_method("layer_drop").from_config({"keep_layers": 2, "epochs": 1, "sequence_rows": 8})
    first = method.apply(tiny / "teacher", tmp_path / "first", ctx)
    again = method.apply(tiny / "teacher", tmp_path / "again", ctx)
    assert first.params["resumed_from_step"] == 0 and again.params["resumed_from_step"] == 4
    a, b = load_causal(tmp_path / "first").state_dict(), load_causal(tmp_path / "again").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
