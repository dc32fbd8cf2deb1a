"""Measure one model folder in a fresh process: predictions, latency, throughput and peak memory.

Run as ``python -m frugal.measure RESULT.json`` with a JSON request on stdin.
A process of its own per variant gives an honest peak RSS (what serving that variant
needs, runtime imports included) and a thread count no earlier variant has touched. The
result names the machine it was measured on (frugal/hardware.py `machine_fingerprint`).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from frugal.hardware import machine_fingerprint, quantized_engine
from frugal.runtime.registry import load_predictor


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, unlike ru_maxrss, is not inherited from the parent on Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_pass(predictor, texts: list[str], batch_size: int, sort_by_length: bool) -> tuple[float, np.ndarray]:
    """Texts per second over the whole split, and the probabilities."""
    started = time.perf_counter()
    proba = predictor.predict_proba(texts, batch_size, sort_by_length=sort_by_length)
    return len(texts) / (time.perf_counter() - started), proba


def spread(values: list[float]) -> dict[str, float]:
    """Median and relative range of repeated timings: the noise a single figure would hide."""
    median = float(np.median(values))
    return {"median": median, "spread": (max(values) - min(values)) / median if median else 0.0}


def measure(
    model_dir: str, test_parquet: str, batch_size: int, threads: int, warmup_batches: int, latency_samples: int, device: str,
    passes: int = 3, arrival_order: bool = True,
) -> dict:  # fmt: skip
    """Throughput is the median of `passes` timed passes over the test split in length-ordered batches; with `arrival_order`
    each is interleaved with a pass in arrival order, so the gain of sorting is measured under the same machine noise."""
    started = time.perf_counter()
    predictor = load_predictor(model_dir, threads=threads, device=device)
    load_seconds = time.perf_counter() - started
    texts = list(pd.read_parquet(test_parquet)["text"])
    for i in range(warmup_batches):  # first calls allocate and pick kernels; keep them out of the timing
        predictor.predict_proba(texts[i * batch_size : (i + 1) * batch_size], batch_size)
    sorted_runs, arrival_runs = [], []
    for _ in range(passes):
        throughput, proba = timed_pass(predictor, texts, batch_size, sort_by_length=True)
        sorted_runs.append(throughput)
        if arrival_order:
            arrival_runs.append(timed_pass(predictor, texts, batch_size, sort_by_length=False)[0])
    metrics = throughput_metrics(sorted_runs, arrival_runs)
    metrics |= latency_metrics(predictor, texts[:latency_samples])
    metrics |= getattr(predictor, "extra_metrics", dict)()  # e.g. a cascade's deferred share (after the timed passes)
    return {
        "predicted": proba.argmax(axis=1).tolist(),
        "metrics": {**metrics, "peak_rss_mb": peak_rss_mb(), "load_seconds": load_seconds},
        "throughput_passes": sorted_runs,
        "arrival_order_passes": arrival_runs,
        "machine": machine(threads),
    }


def machine(threads: int) -> dict[str, str]:
    """Where these figures were measured: the fingerprint, and torch's int8 engine where this variant runs on torch."""
    engine = quantized_engine()
    return machine_fingerprint(threads) | ({"machine_quantized_engine": engine} if engine else {})


def throughput_metrics(sorted_runs: list[float], arrival_runs: list[float]) -> dict[str, float]:
    measured = spread(sorted_runs)
    metrics = {"throughput_per_s": measured["median"], "throughput_spread": measured["spread"], "throughput_passes": len(sorted_runs)}
    if arrival_runs:
        arrival = spread(arrival_runs)["median"]
        metrics |= {"throughput_arrival_order_per_s": arrival, "length_ordering_gain": measured["median"] / arrival}
    return metrics


def latency_metrics(predictor, sample: list[str]) -> dict[str, float]:
    for text in sample[:5]:
        predictor.predict_proba([text], 1)
    latencies = []
    for text in sample:
        tick = time.perf_counter()
        predictor.predict_proba([text], 1)
        latencies.append((time.perf_counter() - tick) * 1000)
    return {"latency_p50_ms": float(np.percentile(latencies, 50)), "latency_p95_ms": float(np.percentile(latencies, 95))}


def answer_request(measure_fn: Callable[..., dict[str, Any]]) -> None:
    """The measuring process's protocol (tasks/evaluate.py run_measurement): the JSON request on stdin, the result to argv[1]."""
    request = json.loads(sys.stdin.read())
    with open(sys.argv[1], "w") as out:
        json.dump(measure_fn(**request), out)


if __name__ == "__main__":
    answer_request(measure)
