"""Small helpers the tests share."""

from __future__ import annotations

import pandas as pd
from conftest import LocalSplits as Splits

from frugal.config import RunConfig

# The metric names DESIGN.md fixes for every variant.
QUALITY = {"accuracy", "macro_f1", "f1_negative", "f1_neutral", "f1_positive"}
COST = {
    "model_size_mb",
    "params_m",
    "peak_rss_mb",
    "latency_p50_ms",
    "latency_p95_ms",
    "throughput_per_s",
    "usd_per_1m",
    "train_seconds",
    "train_usd",
}
RELATIVE = {"speedup_vs_baseline", "cost_ratio_vs_baseline", "f1_retained"}


def shrink(cfg: RunConfig, **sections: dict) -> RunConfig:
    """A copy of a real config with some sections' keys replaced (the config stays validated)."""
    data = cfg.model_dump(mode="json")
    for section, values in sections.items():
        data[section] = {**data[section], **values} if isinstance(data[section], dict) else values
    return RunConfig(**data)


def sample_texts(splits: Splits, n: int = 50) -> list[str]:
    return list(pd.read_parquet(splits.path("test"))["text"][:n])
