"""The generative formats (causal-hf, causal-speculative, causal-ort) and the genai method, on tiny random Llamas built in code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gen_helpers import CORPUS, save_tiny_causal, write_tokenizer

from frugal.config import RunConfig, StepConfig
from frugal.errors import ModelError
from frugal.runtime.formats.causal import assemble_speculative, load_causal
from frugal.runtime.manifest import Manifest
from frugal.runtime.registry import load_generator, packages
from ml.compress.base import CompressContext
from ml.compress.methods.genai import GenAI
from ml.compress.plan import BASELINE_FORMATS, chain

PROMPTS = ["The football club signed", "Summarise the article in one headline."]
NEW = 16
PRECISIONS = ("fp32", "int8", "int4")
# Logit tolerances, as a share of the fp32 logits' range on the same input. A random Gaussian weight matrix is weight-only
# quantization's worst case (no outliers: each block's largest weight sets the step, max/127 for int8, max/7 for int4), and
# the random network amplifies the rounding through its layers; measured here: int8 ~2 %, int4 ~20-24 % of the range.
# Trained weights lose far less; the task score of each variant is measured on the real model (the evaluate stage).
TOLERANCE = {"int8": 0.05, "int4": 0.35}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, smoke_cfg: RunConfig) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen")
    torch.set_num_threads(1)
    write_tokenizer(root / "tok")
    write_tokenizer(root / "other-tok", corpus=[t.upper() for t in CORPUS])  # another vocabulary
    paths = {"hf": save_tiny_causal(root / "hf", root / "tok", seed=0),
             "draft": save_tiny_causal(root / "draft", root / "tok", seed=1, layers=1),
             "other": save_tiny_causal(root / "other", root / "other-tok", seed=1, layers=1)}  # fmt: skip
    ctx = CompressContext(data=root, labels=[], seed=0, train=smoke_cfg.finetune, model=smoke_cfg.model, serve_device="cpu",
                          scratch=root / "scratch", serve_threads=1)  # fmt: skip
    for precision in PRECISIONS:
        GenAI.from_config({"precision": precision}).apply(paths["hf"], root / precision, ctx)
        paths[precision] = root / precision
    speculative = Manifest.load(paths["hf"]).derive(format="causal-speculative", lineage=["speculative"])
    assemble_speculative(paths["hf"], paths["draft"], root / "spec", speculative)
    return paths | {"spec": root / "spec"}


def greedy(model_dir: Path, prompt: str, new: int = NEW) -> list[tuple[int, float]]:
    generator = load_generator(model_dir, threads=1)
    return list(generator.stream_ids(generator.encode(prompt, new), new))


def test_causal_hf_decodes_as_transformers_generate(models: dict[str, Path]) -> None:
    generator = load_generator(models["hf"], threads=1)
    model = load_causal(models["hf"])
    for prompt in PROMPTS:
        ids = generator.encode(prompt, NEW)
        out = list(generator.stream_ids(ids, NEW))
        expected = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False, eos_token_id=sorted(generator.eos_ids))
        assert [t for t, _ in out] == expected[0, len(ids) :].tolist()
        with torch.no_grad():  # each log-prob is the model's for the token it chose, given the tokens before it
            logprobs = model(expected).logits.log_softmax(-1)[0, len(ids) - 1 : -1]
        assert np.allclose([lp for _, lp in out], [logprobs[i, t].item() for i, (t, _) in enumerate(out)], atol=1e-4)
    answer = generator.generate(PROMPTS[0], 4)
    assert (answer.output_tokens, answer.finish_reason) == (4, "length") and answer.first_token_s <= answer.seconds


def test_causal_ort_fp32_decodes_as_causal_hf(models: dict[str, Path]) -> None:
    for prompt in PROMPTS:
        hf, ort = greedy(models["hf"], prompt), greedy(models["fp32"], prompt)
        assert [t for t, _ in ort] == [t for t, _ in hf]
        assert np.allclose([lp for _, lp in ort], [lp for _, lp in hf], atol=1e-4)
    assert packages(models["int4"]) == ("onnxruntime-genai", "tokenizers", "jinja2")


def test_int8_and_int4_logits_agree_with_fp32_within_tolerance(models: dict[str, Path]) -> None:
    fp32 = load_generator(models["fp32"], threads=1)
    ids = fp32.encode(PROMPTS[1], NEW)
    reference = fp32.logits(ids)
    errors = {}
    for precision in ("int8", "int4"):
        logits = load_generator(models[precision], threads=1).logits(ids)
        errors[precision] = float(np.abs(logits - reference).max() / np.ptp(reference))
        assert errors[precision] <= TOLERANCE[precision], (precision, errors[precision])
    assert 0 < errors["int8"] < errors["int4"]  # each graph holds the precision it says: fewer bits, more rounding
    sizes = [(models[p] / "model.onnx.data").stat().st_size for p in PRECISIONS]
    assert sizes[0] > sizes[1] > sizes[2]
    assert Manifest.load(models["int4"]).notes.items() >= {"precision": "int4", "block_size": 32, "accuracy_level": 4, "chat": True}.items()


def test_speculative_output_is_the_targets_token_for_token(models: dict[str, Path]) -> None:
    for prompt in PROMPTS:
        target, draft, spec = greedy(models["hf"], prompt), greedy(models["draft"], prompt), greedy(models["spec"], prompt)
        assert [t for t, _ in draft] != [t for t, _ in target]  # the draft guesses wrong: rejected tokens are exercised
        assert [t for t, _ in spec] == [t for t, _ in target]
        assert np.allclose([lp for _, lp in spec], [lp for _, lp in target], atol=1e-4)
    assert packages(models["spec"]) == ("torch", "transformers", "safetensors", "tokenizers", "jinja2")


def test_a_draft_with_another_tokenizer_is_one_error(models: dict[str, Path], tmp_path: Path) -> None:
    manifest = Manifest.load(models["hf"]).derive(format="causal-speculative")
    with pytest.raises(ModelError, match="different tokenizer") as raised:
        assemble_speculative(models["hf"], models["other"], tmp_path / "spec", manifest)
    assert "Fix:" in str(raised.value) and not (tmp_path / "spec").exists()


def test_genai_output_reloads_and_generates_in_a_fresh_process_without_torch(models: dict[str, Path]) -> None:
    code = ("import json, sys; from frugal.runtime.registry import load_generator; "
            f"g = load_generator({str(models['int4'])!r}, threads=1).generate({PROMPTS[0]!r}, 5); "
            "print(json.dumps({'tokens': g.output_tokens, 'torch': 'torch' in sys.modules}))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"tokens": 5, "torch": False}  # a causal-ort bundle serves without torch


def test_genai_chains_start_from_the_generative_baseline() -> None:
    steps = [StepConfig(method="genai", precision="int4")]
    assert chain("v", steps, BASELINE_FORMATS["generate"])[0].method.produces == ("causal-ort",)
    with pytest.raises(ValueError, match="genai takes causal-hf"):
        chain("v", steps)  # a classifier's hf baseline
    assert "cuda" in (GenAI.from_config({}).unsupported("cuda") or "")
