"""What compute costs: an instance's $/hour (configs/hardware.yaml) turned into $ per 1M predictions or $ per training run."""

from __future__ import annotations

from frugal.config import load_hardware


def usd_per_1m(throughput_per_s: float, usd_per_hour: float) -> float:
    """Instance $/hour divided by predictions per hour, times a million."""
    return usd_per_hour / (throughput_per_s * 3600) * 1e6


def train_usd(seconds: float, instance: str) -> float:
    """What `seconds` of training cost on `instance` (a name in configs/hardware.yaml)."""
    return seconds / 3600 * load_hardware()[instance].usd_per_hour
