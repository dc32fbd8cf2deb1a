"""What a run needs to be reproduced and its figures read: code, config, packages, seeds and hardware.

`collect` is recorded on every parent run (tags for the short facts, `provenance.json` and the resolved
`config.yaml` as artifacts); `frugal reproduce` reads them back.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from frugal.config import RunConfig

# The stack whose versions decide the numbers; the lock hash pins the rest.
PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "onnxruntime", "onnx", "optimum", "peft", "numpy",
            "scikit-learn", "cleanlab", "prefect", "mlflow", "dvc", "great-expectations")  # fmt: skip
CONFIG_ARTIFACT = "config.yaml"
PROVENANCE_ARTIFACT = "provenance.json"


def collect(cfg: RunConfig) -> dict[str, Any]:
    return {
        "seeds": seeds(cfg),
        "packages": packages(),
        "hardware": hardware(cfg),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def seeds(cfg: RunConfig) -> dict[str, Any]:
    """Every source of randomness and what fixes it (the settings under which CPU reruns match exactly)."""
    return {
        "seed": cfg.seed,
        "split": f"sklearn train_test_split(random_state={cfg.seed}), stratified",
        "init_and_dropout": f"torch.manual_seed({cfg.seed}) before the model is built",
        "batch_order": f"numpy default_rng({cfg.seed} + epoch)",
        "threads": {"finetune": cfg.finetune.threads, "evaluate": cfg.evaluate.threads},
    }


def packages() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def hardware(cfg: RunConfig) -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads_used": max(cfg.finetune.threads, cfg.evaluate.threads),
        "gpu": gpu_name(),
        "machine": platform.machine(),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def tags(record: dict[str, Any]) -> dict[str, str]:
    """The short facts as run tags, so the MLflow UI and `frugal compare` can show and filter them."""
    hw = record["hardware"]
    return {
        "hw_cpu": hw["cpu"],
        "hw_cores": str(hw["cores_available"]),
        "hw_gpu": hw["gpu"] or "none",
        "seed": str(record["seeds"]["seed"]),
        "torch_version": record["packages"].get("torch", "?"),
    }
