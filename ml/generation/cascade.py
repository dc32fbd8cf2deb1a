"""A generative cascade's calibration: the lowest threshold on the cheap part's mean token log-prob that keeps the quality bar.

The rule of the classify cascade (ml/cascade.py), with the task metric (generate.metric) for macro-F1 and the mean
log-probability of the cheap part's answer for its top probability. Calibrated on the val split, never on test: the
**lowest** threshold (the least deferral, so the cheapest) whose val score is >= the baseline's val score -
`select.tolerance`. When the cheap part alone meets that bar, when only deferring every prompt meets it, or when nothing
does, the cascade is skipped with the figures (SkipVariant). How the cascade generates is
frugal/runtime/formats/gen_cascade.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from frugal.errors import ModelError
from frugal.runtime.formats.gen_cascade import CHEAP, STRONG, answers
from frugal.runtime.generator import Generation
from frugal.runtime.manifest import TOKENIZER_DIR, Manifest
from frugal.runtime.registry import load_generator
from ml.cascade import lowest_cut

Scorer = Callable[[list[str], list[str]], float]  # (predictions, references) -> the task metric over them, higher is better


class Calibration(BaseModel):
    """A threshold and what it gives on the val prompts."""

    model_config = ConfigDict(frozen=True)

    threshold: float
    deferred_share_val: float
    val_score: float
    floor: float  # the baseline's val score - select.tolerance
    metric: str
    source: str  # "calibrated" or "config"


def combine(confidence: Sequence[float], cheap: Sequence[str], strong: Sequence[str], threshold: float) -> list[str]:
    """The cascade's answers from both parts' answers to the same prompts (what CascadeGenerator does one at a time)."""
    return [c if answers(conf, threshold) else s for conf, c, s in zip(confidence, cheap, strong, strict=True)]


def score_by_deferral(
    confidence: Sequence[float], cheap: Sequence[str], strong: Sequence[str], references: Sequence[str], scorer: Scorer
) -> tuple[np.ndarray, dict[int, float]]:
    """The val score for every number k of deferred prompts (the k least confident) where a threshold can cut, and k = n.

    Returns (the confidences sorted ascending, score by k). Prompts of equal confidence are deferred together, so k is
    0, n, or a k whose confidence[k-1] < confidence[k]. The metric is scored whole for each k: a metric need not be a
    mean over prompts (field-level F1 pools its pairs).
    """
    order = np.argsort(np.asarray(confidence, dtype=float), kind="stable")
    ranked = np.asarray(confidence, dtype=float)[order]
    n = len(ranked)
    cuts = [0] + [k for k in range(1, n) if ranked[k - 1] < ranked[k]] + ([n] if n else [])
    scores = {}
    for k in cuts:
        predictions = list(cheap)
        for row in order[:k]:
            predictions[row] = strong[row]
        scores[k] = float(scorer(predictions, list(references)))
    return ranked, scores


def calibrate(
    confidence: Sequence[float], cheap: Sequence[str], strong: Sequence[str], references: Sequence[str], scorer: Scorer,
    floor: float, metric: str,
) -> Calibration:  # fmt: skip
    """The lowest threshold whose val score is >= floor: ml/cascade.py `lowest_cut`, the classifier cascade's rule."""
    ranked, scores = score_by_deferral(confidence, cheap, strong, references, scorer)
    threshold, k = lowest_cut(ranked, scores, floor, metric, "prompt")
    return Calibration(threshold=threshold, deferred_share_val=k / len(ranked), val_score=scores[k], floor=floor, metric=metric,
                       source="calibrated")  # fmt: skip


def at_threshold(
    confidence: Sequence[float], cheap: Sequence[str], strong: Sequence[str], references: Sequence[str], scorer: Scorer,
    threshold: float, floor: float, metric: str,
) -> Calibration:  # fmt: skip
    """The val figures of a threshold fixed in the config."""
    share = float(np.mean([not answers(c, threshold) for c in confidence])) if len(confidence) else 0.0
    score = float(scorer(combine(confidence, cheap, strong, threshold), list(references)))
    return Calibration(threshold=threshold, deferred_share_val=share, val_score=score, floor=floor, metric=metric, source="config")


def val_generations(model_dir: Path, prompts: Sequence[str], max_new_tokens: int, threads: int, device: str) -> list[Generation]:
    """One model folder's greedy answers to the val prompts, through the runtime's Generator (what the cascade will run)."""
    generator = load_generator(model_dir, threads=threads, device=device)
    return [generator.generate(prompt, max_new_tokens) for prompt in prompts]


def check_parts(cheap: Path, strong: Path) -> tuple[Manifest, Manifest]:
    """Both parts generative, with one vocabulary, one end of sequence and one prompt format: the cascade passes ids between them."""
    from tokenizers import Tokenizer

    manifests = Manifest.load(cheap), Manifest.load(strong)
    vocab = [Tokenizer.from_file(str(part / TOKENIZER_DIR / "tokenizer.json")).get_vocab() for part in (cheap, strong)]
    keys = [(m.task, sorted(m.notes.get("eos_token_ids", [])), bool(m.notes.get("chat", False))) for m in manifests]
    if vocab[0] != vocab[1] or keys[0] != keys[1]:
        raise ModelError(
            f"The cascade's parts {cheap.name} and {strong.name} differ in task, vocabulary, end-of-sequence ids or chat format "
            f"({keys[0]} and {keys[1]}): the strong part could not answer the cheap part's prompt.",
            "Cascade two variants of the same fine-tuned generative model.",
        )
    return manifests


def write_cascade(cheap_dir: Path, strong_dir: Path, out: Path, notes: dict) -> Manifest:
    """A `causal-cascade` model folder: both parts copied whole, the cheap part's tokenizer at the top (checked first)."""
    cheap, strong = check_parts(cheap_dir, strong_dir)
    for part, src in ((CHEAP, cheap_dir), (STRONG, strong_dir)):
        shutil.copytree(src, out / part)
    shutil.copytree(cheap_dir / TOKENIZER_DIR, out / TOKENIZER_DIR)
    parts = {CHEAP: {"format": cheap.format, "lineage": cheap.lineage}, STRONG: {"format": strong.format, "lineage": strong.lineage}}
    manifest = Manifest(
        format="causal-cascade", labels=[], max_length=min(cheap.max_length, strong.max_length), params=cheap.params + strong.params,
        dtype=cheap.dtype if cheap.dtype == strong.dtype else f"{cheap.dtype}+{strong.dtype}", lineage=["cascade"], task="generate",
        notes={"chat": cheap.notes.get("chat", False), "eos_token_ids": cheap.notes.get("eos_token_ids", []), **notes,
               "parts": parts},
    )  # fmt: skip
    manifest.save(out)
    return manifest
