"""package: the champion as an MLflow pyfunc bundle; register: promote it in the Model Registry.

The bundle depends on the lightest runtime that serves the champion: an ONNX champion needs
onnxruntime + tokenizers only, a PyTorch one needs torch + transformers. `mlflow models
serve -m models:/<name>@champion` serves it; docker/serve.Dockerfile builds an image of it.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from frugal.config import RunConfig
from frugal.modelio import Manifest
from frugal.paths import ROOT
from tasks import tracking
from tasks.common import Splits, Variant, stage
from tasks.evaluate import quality
from tasks.select import Selection

log = logging.getLogger(__name__)
BUNDLE = "bundle"
ALIAS = "champion"
_RUNTIMES = {
    "onnx": ("onnxruntime", "tokenizers"),
    "hf": ("torch", "transformers", "safetensors", "tokenizers"),
    "torch-int8": ("torch", "transformers", "safetensors", "tokenizers"),
    "hf-nf4": ("torch", "transformers", "safetensors", "tokenizers", "bitsandbytes", "accelerate"),
}


@dataclass(frozen=True)
class Bundle:
    uri: str
    variant: str
    runtime: tuple[str, ...]


@dataclass(frozen=True)
class Registration:
    version: str | None
    promoted: bool
    reason: str


def requirements(fmt: str) -> list[str]:
    """Pinned to what this run used, so the served model behaves as the evaluated one."""
    names = ("mlflow", "pandas", "numpy", *_RUNTIMES[fmt])
    return [f"{name}=={md.version(name)}" for name in names]


def build_bundle(model_dir: Path, out: Path, sample_texts: list[str]) -> Path:
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    manifest = Manifest.load(model_dir)
    example = pd.DataFrame({"text": sample_texts})
    output = pd.DataFrame({"label": ["x"] * len(sample_texts), **{f"p_{label}": [0.0] * len(sample_texts) for label in manifest.labels}})
    mlflow.pyfunc.save_model(
        path=str(out),
        python_model=str(ROOT / "frugal" / "serve_model.py"),
        artifacts={"model": str(model_dir)},
        code_paths=[str(ROOT / "frugal")],
        pip_requirements=requirements(manifest.format),
        signature=infer_signature(example, output),
        input_example=example,
    )
    return out


@stage(name="package")
def package(selection: Selection, variants: list[Variant], data: Splits, cfg: RunConfig, run_id: str) -> Bundle:
    champion = next(v for v in variants if v.name == selection.champion.variant)
    assert champion.model_dir is not None
    fmt = Manifest.load(champion.model_dir).format
    with tempfile.TemporaryDirectory() as tmp:
        sample = list(pd.read_parquet(data.path("test"))["text"][:2])
        bundle = build_bundle(champion.model_dir, Path(tmp) / BUNDLE, sample)
        shutil.copy(ROOT / "docker" / "serve.Dockerfile", bundle / "Dockerfile")
        tracking.log_dir(run_id, bundle, BUNDLE)
    log.info("Packaged %s (%s runtime) as runs:/%s/%s", champion.name, fmt, run_id, BUNDLE)
    return Bundle(f"runs:/{run_id}/{BUNDLE}", champion.name, _RUNTIMES[fmt])


def current_champion_f1(name: str, data: Splits, labels: list[str]) -> tuple[object, float] | None:
    """The registered champion and its macro-F1 on *this* run's test split, or None if there is none."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    client = tracking.mlflow_client()
    try:
        version = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None
    test = pd.read_parquet(data.path("test"))
    try:
        predicted = mlflow.pyfunc.load_model(f"models:/{name}@{ALIAS}").predict(test[["text"]])["label"]
    except Exception as exc:  # a champion that no longer loads cannot defend its place
        log.warning("The current champion v%s could not be re-scored (%s); it will be replaced", version.version, exc)
        return version, float("-inf")
    return version, quality(list(test["label"]), list(predicted), labels)["macro_f1"]


@stage(name="register")
def register(bundle: Bundle, selection: Selection, data: Splits, cfg: RunConfig, run_id: str) -> Registration:
    """Register the bundle and move `champion` to it, unless the current champion is still as good and cheaper."""
    import mlflow

    name, new = cfg.registered_model_name, selection.champion.metrics
    current = current_champion_f1(name, data, cfg.data.labels)
    if current is not None:
        version, old_f1 = current
        floor = selection.baseline.metrics["macro_f1"] - cfg.select.tolerance
        old_cost = float(version.tags.get("usd_per_1m", "inf"))
        if old_f1 >= floor and old_cost <= new["usd_per_1m"]:
            reason = (
                f"kept v{version.version}: macro-F1 {old_f1:.4f} on this test split is within tolerance and it costs "
                f"${old_cost:.4f}/1M <= ${new['usd_per_1m']:.4f}/1M"
            )
            tracking.set_tags(run_id, {"registry": reason})
            log.info("Registry: %s", reason)
            return Registration(None, False, reason)
    tags = {
        "variant": bundle.variant,
        "pipeline_run_id": run_id,
        "variant_run_id": selection.champion.run_id,
        "data_hash": data.md5,
        "config_hash": cfg.digest(),
        "macro_f1": new["macro_f1"],
        "usd_per_1m": new["usd_per_1m"],
    }
    version = mlflow.register_model(bundle.uri, name, tags={k: str(v) for k, v in tags.items()})
    tracking.mlflow_client().set_registered_model_alias(name, ALIAS, version.version)
    reason = f"{name} v{version.version} ({bundle.variant}) is now @{ALIAS}"
    tracking.set_tags(run_id, {"registry": reason, "registered_version": version.version})
    log.info("Registry: %s", reason)
    return Registration(version.version, True, reason)
