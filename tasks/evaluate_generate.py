"""evaluate for task generate: a generative variant's greedy answers scored, its decoding priced per 1M output tokens.

tasks/evaluate.py runs the measurement (the same cached `measure` stage, fingerprint and measuring slot as a classifier's)
and calls this module where the two tasks differ: what the measuring process is asked (frugal/measure_generation.py), what
its result means (quality with generate.metric, $ per 1M output and prompt tokens), the metrics relative to the baseline,
and what a variant run records (the decoding settings, the answers beside the references).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from frugal.config import EvaluateConfig, GenerateConfig, RunConfig, load_hardware
from frugal.measure_generation import quality_rows
from frugal.pricing import usd_per_1m
from frugal.runtime.manifest import Manifest, model_size_mb
from ml.generation.quality import score
from tasks.plumbing import tracking
from tasks.plumbing.refs import Scores

log = logging.getLogger(__name__)


def request(evaluate_cfg: EvaluateConfig, generate_cfg: GenerateConfig) -> dict[str, Any]:
    """The measuring process's settings: decoding from `generate`, threads, warm-up and passes from `evaluate`."""
    return {
        "threads": evaluate_cfg.threads,
        "device": evaluate_cfg.device,
        "max_new_tokens": generate_cfg.max_new_tokens,
        "eval_rows": generate_cfg.eval_rows,
        "measure_prompts": generate_cfg.measure_prompts,
        "warmup_requests": evaluate_cfg.warmup_batches,
        "passes": evaluate_cfg.passes,
    }


def prices(tokens_per_s: float, prefill_tokens_per_s: float, usd_per_hour: float) -> dict[str, float]:
    """$ per 1M output tokens (decode seconds per token) and per 1M prompt tokens (prefill seconds per token)."""

    def per_1m(rate: float) -> float:
        return usd_per_1m(rate, usd_per_hour) if rate > 0 else float("inf")

    return {"usd_per_1m_tokens": per_1m(tokens_per_s), "usd_per_1m_prompt_tokens": per_1m(prefill_tokens_per_s)}


def references(test_parquet: Path, eval_rows: int | None) -> list[str]:
    """The reference responses of the quality rows, in the order the measuring process answered them."""
    responses = list(pd.read_parquet(test_parquet)["response"])
    return [responses[i] for i in quality_rows(len(responses), eval_rows)]


def figures(
    result: dict[str, Any], model_dir: Path, test_parquet: Path, evaluate_cfg: EvaluateConfig, gen: GenerateConfig
) -> dict[str, float]:
    """A measuring process's result as metrics: the quality under generate.metric's name, prices, size."""
    measured = result["metrics"]
    price = load_hardware()[evaluate_cfg.instance].usd_per_hour
    return {
        gen.metric: score(gen.metric, result["generated"], references(test_parquet, gen.eval_rows)),
        **measured,
        **prices(measured["tokens_per_s"], measured["prefill_tokens_per_s"], price),
        "model_size_mb": model_size_mb(model_dir),
        "params_m": Manifest.load(model_dir).params / 1e6,
    }


def relative(metrics: dict[str, float], base: dict[str, float], quality: str) -> dict[str, float]:
    """cost_ratio < 1 and speedup (output tokens/s) > 1 mean cheaper and faster than the baseline."""
    return {
        "speedup_vs_baseline": metrics["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] > 0 else 0.0,
        "cost_ratio_vs_baseline": metrics["usd_per_1m_tokens"] / base["usd_per_1m_tokens"],
        "quality_retained": metrics[quality] / base[quality] if base[quality] > 0 else 0.0,
    }


def decoding_params(gen: GenerateConfig, rows: int) -> dict[str, Any]:
    """How the answers were produced and scored: a score means something only with these."""
    return {"decoding": "greedy", "max_new_tokens": gen.max_new_tokens, "quality_metric": gen.metric, "eval_rows": rows,
            "measure_prompts": gen.measure_prompts}  # fmt: skip


def answers_json(test_parquet: Path, generated: list[str], eval_rows: int | None) -> str:
    """Each quality row's prompt, reference and answer: what a reader checks a score against."""
    test = pd.read_parquet(test_parquet)
    rows = quality_rows(len(test), eval_rows)
    shown = [
        {"prompt": test["prompt"].iloc[i], "reference": test["response"].iloc[i], "answer": a} for i, a in zip(rows, generated, strict=True)
    ]
    return json.dumps(shown, indent=1, ensure_ascii=False)


def record(
    measured: Any, trained: dict[str, float], baseline: Scores | None, test_parquet: Path, cfg: RunConfig, run_id: str, name: str
) -> dict[str, float]:
    """A generative variant's metrics (measured, training, relative to the baseline) and its answers on its variant run."""
    metrics = {**measured.metrics, **trained}
    metrics |= relative(metrics, baseline.metrics if baseline else metrics, cfg.quality_metric)
    tracking.log_metrics(run_id, {k: v for k, v in metrics.items() if abs(v) != float("inf")})
    tracking.log_params(run_id, decoding_params(cfg.generate, len(measured.predicted)))
    tracking.log_text(run_id, answers_json(test_parquet, measured.predicted, cfg.generate.eval_rows), "answers.json")
    log.info(
        "%s: %s %.4f, %.1f tokens/s, first token p50 %.0f ms, %.1f MB, $%.4f per 1M output tokens", name, cfg.quality_metric,
        metrics[cfg.quality_metric], metrics["tokens_per_s"], metrics["ttft_p50_ms"], metrics["model_size_mb"],
        metrics["usd_per_1m_tokens"],
    )  # fmt: skip
    return metrics
