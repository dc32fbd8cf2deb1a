"""A generative model's task quality on the test split: ROUGE-L (free text), exact match, field-level F1 (JSON objects).

Each is a mean over rows in [0, 1], so `select.tolerance` reads in the metric's own units. `score` is what evaluation
calls with the config's `generate.metric`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from typing import Any

METRICS = ("rouge_l", "exact_match", "field_f1")


@cache
def _rouge_scorer() -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=True)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence of stemmed words)."""
    scorer = _rouge_scorer()
    return _mean([scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)])


def normalise(text: str) -> str:
    """Lower case, runs of whitespace as one space, ends stripped: what a reader would not call a different answer."""
    return " ".join(text.lower().split())


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of rows whose prediction equals the reference after `normalise`."""
    return _mean([float(normalise(p) == normalise(r)) for p, r in zip(predictions, references, strict=True)])


def parse_object(text: str) -> dict[str, Any] | None:
    """The JSON object in a response: the whole text, else its outermost {...} (models wrap JSON in prose or code fences)."""
    candidates = [text.strip()]
    found = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if found:
        candidates.append(found.group(0))
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def pairs(value: Any, prefix: str = "") -> set[tuple[str, str]]:
    """(dotted key, value) pairs of a JSON value, nested objects and lists flattened; string values `normalise`d."""
    if isinstance(value, dict):
        return {p for key, inner in value.items() for p in pairs(inner, f"{prefix}{key}.")}
    if isinstance(value, list):
        return {p for i, inner in enumerate(value) for p in pairs(inner, f"{prefix}{i}.")}
    shown = normalise(value) if isinstance(value, str) else json.dumps(value)
    return {(prefix.rstrip("."), shown)}


def _pair_f1(predicted: set[tuple[str, str]], reference: set[tuple[str, str]]) -> float:
    if not predicted and not reference:
        return 1.0
    hits = len(predicted & reference)
    return 2 * hits / (len(predicted) + len(reference))


def field_f1(predictions: list[str], references: list[str]) -> float:
    """Mean per-row F1 over (key, value) pairs; a prediction that is not a JSON object has no pairs (F1 0 unless the reference has none)."""
    scores = []
    for pred, ref in zip(predictions, references, strict=True):
        parsed_pred, parsed_ref = parse_object(pred), parse_object(ref)
        scores.append(_pair_f1(pairs(parsed_pred) if parsed_pred else set(), pairs(parsed_ref) if parsed_ref else set()))
    return _mean(scores)


SCORERS: dict[str, Callable[[list[str], list[str]], float]] = {"rouge_l": rouge_l, "exact_match": exact_match, "field_f1": field_f1}


def score(metric: str, predictions: list[str], references: list[str]) -> float:
    """`metric` (generate.metric: rouge_l, exact_match or field_f1) of the predictions against the references."""
    return float(SCORERS[metric](predictions, references))
