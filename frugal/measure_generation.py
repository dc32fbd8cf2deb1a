"""Measure one generative model folder in a fresh process: greedy answers for quality, tokens/s, time to first token, memory.

Run as ``python -m frugal.measure_generation RESULT.json`` with a JSON request on stdin (tasks/evaluate_generate.py), the
generative counterpart of frugal/measure.py and isolated the same way: a process of its own per variant gives an honest
peak RSS and a thread count no earlier variant has touched. Everything generates through the runtime's `Generator`
(frugal/runtime/generator.py), one request at a time, greedily: what is measured is what `frugal serve` runs.

Cost comes from the timed requests: decoding (output tokens over the seconds after the first token) and prefill (prompt
tokens over the time to the first token) are priced apart, since a provider bills them apart.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from frugal.measure import answer_request, machine, peak_rss_mb, spread
from frugal.runtime.generator import Generation
from frugal.runtime.registry import load_generator

SAMPLE_SEED = 0  # one order of the test rows for every variant and run: all are scored and timed on the same prompts


def sample_order(rows: int) -> list[int]:
    """A seeded order of the test rows: quality reads its first `eval_rows`, timing its first `measure_prompts`."""
    return np.random.default_rng(SAMPLE_SEED).permutation(rows).tolist()


def quality_rows(rows: int, eval_rows: int | None) -> list[int]:
    """The test rows generated for quality (generate.eval_rows of them; None = all), in sample order."""
    order = sample_order(rows)
    return order[:eval_rows] if eval_rows else order


def pass_rates(generations: list[Generation]) -> dict[str, float]:
    """One timed pass: output tokens/s while decoding (after the first token) and prompt tokens/s while prefilling."""
    decode_s = sum(max(g.seconds - g.first_token_s, 0.0) for g in generations)
    prefill_s = sum(g.first_token_s for g in generations)
    output = sum(g.output_tokens for g in generations)
    prompt = sum(g.prompt_tokens for g in generations)
    return {
        "tokens_per_s": output / decode_s if decode_s > 0 else 0.0,
        "prefill_tokens_per_s": prompt / prefill_s if prefill_s > 0 else 0.0,
    }


def timing_metrics(passes: list[list[Generation]]) -> dict[str, float]:
    """Rates are the median of the passes (their spread is logged); time to first token is over every timed request."""
    rates = [pass_rates(p) for p in passes]
    decode = spread([r["tokens_per_s"] for r in rates])
    first = [g.first_token_s * 1000 for p in passes for g in p]
    requests = [g for p in passes for g in p]
    return {
        "tokens_per_s": decode["median"],
        "tokens_per_s_spread": decode["spread"],
        "prefill_tokens_per_s": spread([r["prefill_tokens_per_s"] for r in rates])["median"],
        "ttft_p50_ms": float(np.percentile(first, 50)),
        "ttft_p95_ms": float(np.percentile(first, 95)),
        "request_seconds_mean": float(np.mean([g.seconds for g in requests])),
        "timed_requests": len(requests),
    }


def answer_metrics(generations: list[Generation]) -> dict[str, float]:
    """What the quality answers looked like: their length, and how many the max_new_tokens budget cut off."""
    return {
        "output_tokens_mean": float(np.mean([g.output_tokens for g in generations])) if generations else 0.0,
        "length_stopped_share": float(np.mean([g.finish_reason == "length" for g in generations])) if generations else 0.0,
    }


def measure(
    model_dir: str, test_parquet: str, threads: int, device: str, max_new_tokens: int, eval_rows: int | None, measure_prompts: int,
    warmup_requests: int, passes: int,
) -> dict[str, Any]:  # fmt: skip
    """Greedy answers to the quality rows, then `passes` timed passes over `measure_prompts` prompts after warm-up requests."""
    started = time.perf_counter()
    generator = load_generator(model_dir, threads=threads, device=device)
    load_seconds = time.perf_counter() - started
    prompts = list(pd.read_parquet(test_parquet)["prompt"])
    rows = quality_rows(len(prompts), eval_rows)
    answers = [generator.generate(prompts[i], max_new_tokens) for i in rows]
    timed = [prompts[i] for i in sample_order(len(prompts))[:measure_prompts]]
    for prompt in (timed * warmup_requests)[:warmup_requests]:  # first calls allocate and pick kernels; keep them out of the timing
        generator.generate(prompt, max_new_tokens)
    runs = [[generator.generate(prompt, max_new_tokens) for prompt in timed] for _ in range(passes)]
    metrics = timing_metrics(runs) | answer_metrics(answers)
    metrics |= getattr(generator, "extra_metrics", dict)()  # e.g. a cascade's deferred share
    return {
        "rows": rows,
        "generated": [a.text for a in answers],
        "metrics": {**metrics, "peak_rss_mb": peak_rss_mb(), "load_seconds": load_seconds},
        "machine": machine(threads),
    }


if __name__ == "__main__":
    answer_request(measure)
