"""Measure one model folder in a fresh process: predictions, latency, throughput and peak memory.

Run as ``python -m frugal.measure RESULT.json`` with a JSON request on stdin.
A process of its own per variant gives an honest peak RSS (what serving that variant
needs, runtime imports included) and a thread count no earlier variant has touched.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import pandas as pd


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


def measure(
    model_dir: str, test_parquet: str, batch_size: int, threads: int, warmup_batches: int, latency_samples: int, device: str
) -> dict:
    from frugal.runtime import load_predictor

    started = time.perf_counter()
    predictor = load_predictor(model_dir, threads=threads, device=device)
    load_seconds = time.perf_counter() - started
    texts = list(pd.read_parquet(test_parquet)["text"])
    for i in range(warmup_batches):  # first calls allocate and pick kernels; keep them out of the timing
        predictor.predict_proba(texts[i * batch_size : (i + 1) * batch_size], batch_size)
    started = time.perf_counter()
    proba = predictor.predict_proba(texts, batch_size)
    throughput = len(texts) / (time.perf_counter() - started)
    sample = texts[:latency_samples]
    for text in sample[:5]:
        predictor.predict_proba([text], 1)
    latencies = []
    for text in sample:
        tick = time.perf_counter()
        predictor.predict_proba([text], 1)
        latencies.append((time.perf_counter() - tick) * 1000)
    return {
        "predicted": proba.argmax(axis=1).tolist(),
        "metrics": {
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p95_ms": float(np.percentile(latencies, 95)),
            "throughput_per_s": throughput,
            "peak_rss_mb": peak_rss_mb(),
            "load_seconds": load_seconds,
        },
    }


def main() -> None:
    request = json.loads(sys.stdin.read())
    with open(sys.argv[1], "w") as out:
        json.dump(measure(**request), out)


if __name__ == "__main__":
    main()
