"""The search for task generate: the cheapest shape of the fine-tuned causal LM that keeps the bar, priced before training.

A shape is a depth (decoder layers kept, `layer_drop`: evenly spaced, the first and last among them) and a weight precision
through onnxruntime-genai (`genai`: int8 or int4 MatMulNBits). What a shape costs to run does not depend on its trained
weights, so each is cut from the fine-tuned model without training, converted and timed decoding in seconds: that
predicts its output tokens/s, hence its $ per 1M output tokens (the search for classifiers, ml/search.py, does the same
with texts/s).

Full-depth shapes train nothing: they are checked on val cheapest first, and the first that keeps the bar is the anchor.
Only cut shapes predicted cheaper than the anchor are ever trained, by the same bisection as for classifiers
(ml/search.py `Bisection`).
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frugal.config import SearchConfig, StepConfig
from frugal.runtime.formats.causal import load_causal
from frugal.runtime.manifest import Manifest, copy_tokenizer
from frugal.runtime.registry import load_generator, save_model
from ml.compress.methods.genai import GenAIOptions, build, staged_input
from ml.generation.distill import cut_layers

WARMUP = 2  # prompts decoded before timing: the first calls allocate and pick kernels


@dataclass(frozen=True, order=True)
class GenShape:
    layers: int
    precision: str  # genai precision: int8 | int4 | fp32

    @property
    def name(self) -> str:
        return f"search-{self.layers}L-{self.precision}"

    def steps(self, cfg: SearchConfig, depth: int) -> list[StepConfig]:
        """The chain that makes this shape: a full-depth shape is one conversion; a cut one is distilled into first."""
        convert = StepConfig(method="genai", precision=self.precision)
        if self.layers >= depth:
            return [convert]
        options = {"keep_layers": self.layers, "epochs": cfg.epochs, "learning_rate": cfg.learning_rate}
        return [StepConfig(method="layer_drop", **{k: v for k, v in options.items() if v is not None}), convert]


def depth_of(fine_tuned: Path) -> int:
    return int(json.loads((fine_tuned / "config.json").read_text())["num_hidden_layers"])


def space(cfg: SearchConfig, depth: int) -> list[GenShape]:
    """Every (depth, precision) of the config's grid the model can give; its own depth is always in (the shapes that train nothing)."""
    layers = sorted({min(n, depth) for n in cfg.layers} | {depth})
    return sorted(GenShape(n, p) for n, p in itertools.product(layers, cfg.precisions))


def price(fine_tuned: Path, shape: GenShape, prompts: Sequence[str], new_tokens: int, threads: int) -> float:
    """Predicted output tokens/s of `shape`: cut untrained from the fine-tuned model, converted by onnxruntime-genai's builder
    at its precision, and timed decoding exactly `new_tokens` tokens after each prompt (an untrained cut may end at once)."""
    with tempfile.TemporaryDirectory(prefix="frugal-price-") as tmp:
        source = fine_tuned
        if shape.layers < depth_of(fine_tuned):
            source = Path(tmp) / "cut"
            student, _ = cut_layers(load_causal(fine_tuned), shape.layers)
            save_model(student, source, Manifest.load(fine_tuned).derive(params=sum(p.numel() for p in student.parameters())))
            copy_tokenizer(fine_tuned, source)
        out = Path(tmp) / "ort"
        build(staged_input(source, Path(tmp) / "input"), out, GenAIOptions(precision=shape.precision), Path(tmp) / "cache", threads)
        copy_tokenizer(fine_tuned, out)
        Manifest.load(fine_tuned).derive(format="causal-ort").save(out)
        generator = load_generator(out, threads=threads)
        return decode_rate(generator.model, [generator.encode(p, new_tokens) for p in prompts], new_tokens)


def decode_rate(model: Any, prompts: list[list[int]], new_tokens: int) -> float:
    """Output tokens/s of an onnxruntime-genai `model` over the decode steps after each prompt's prefill (as
    frugal/measure_generation.py counts them), after WARMUP untimed prompts."""
    timed = [decode(model, ids, new_tokens) for ids in [*prompts[:WARMUP], *prompts]][WARMUP:]
    return sum(t for t, _ in timed) / sum(s for _, s in timed)


def decode(model: Any, ids: list[int], new_tokens: int) -> tuple[int, float]:
    """(tokens decoded after the first, seconds they took): `new_tokens` in all, the end of sequence held off by min_length."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    length = len(ids) + new_tokens
    params.set_search_options(max_length=length, min_length=length, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    generator.generate_next_token()  # the first token is the prefill's: not decode time
    started = time.perf_counter()
    while not generator.is_done():
        generator.generate_next_token()
    return len(generator.get_sequence(0)) - len(ids) - 1, time.perf_counter() - started


# The teacher's forward beside each student step, in fine-tune steps: measured half of one (git 773ecc8, 2-core EPYC,
# SmolLM2-135M: fine-tune 922 s for 600 rows with frozen embeddings, the 15-layer `layer_drop` 1,388 s, this estimate 1,376 s).
TEACHER_SHARE = 0.5
CONVERSION_SECONDS = 60  # a `genai` conversion and its val check: what a shape costs once its depth is trained (a cached step)


def training_seconds(share: float, fine_tune: float, fine_tune_passes: int, rows: int, answers: int, epochs: float) -> float:
    """About how long a cut shape's chain takes, from the fine-tune's time (`fine_tune` seconds for `fine_tune_passes` rows
    trained, epochs counted): the teacher answers `answers` prompts (about a training step each), then the student, at its
    `share` of the model's layers, trains on `rows` + `answers` rows `epochs` times beside the teacher's forward; plus the
    conversion."""
    per_row = fine_tune / max(fine_tune_passes, 1)
    return per_row * answers + per_row * (rows + answers) * epochs * (share + TEACHER_SHARE) + CONVERSION_SECONDS
