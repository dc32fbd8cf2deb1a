"""package: the champion as an MLflow pyfunc bundle (layout: frugal/bundle/__init__.py).

The bundle carries the serving runtime with only the formats the champion needs and pins only
their packages (frugal/runtime/registry.py): an ONNX champion needs onnxruntime + tokenizers, a
PyTorch one torch + transformers. `mlflow models serve -m models:/<name>@champion` serves it, and
so does `frugal serve`; docker/build-serve.sh builds an image of it. Registering it is tasks/register.py.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from frugal import bundle
from frugal.config import RunConfig
from frugal.paths import ROOT, ProjectPaths
from frugal.runtime.manifest import Manifest
from frugal.runtime.registry import get_format, packages
from tasks.plumbing import store, tracking
from tasks.plumbing.refs import DataRef, Ref, Variant
from tasks.plumbing.stage import stage
from tasks.select import Selection

log = logging.getLogger(__name__)
BUNDLE = "bundle"  # the artifact path of a pipeline run's bundle


class Bundle(Ref):
    uri: str
    variant: str
    model_uri: str
    runtime: tuple[str, ...]


def requirements(model_dir: Path) -> list[str]:
    """Pinned to what this run used, so the served model behaves as the evaluated one: MLflow's, then the formats' packages."""
    names = ("mlflow", "pandas", "numpy", *packages(model_dir))
    return [f"{name}=={md.version(name)}" for name in names]


@contextlib.contextmanager
def serving_code(model_dir: Path) -> Iterator[Path]:
    """A `frugal` package holding only what serves `model_dir`: the bundle needs neither pydantic, yaml, ml/ nor tasks/."""
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "frugal"
        for name in bundle.serving_files(model_dir):
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "frugal" / name, package / name)
        yield package


def build_bundle(model_dir: Path, out: Path, sample_texts: list[str]) -> Path:
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    manifest = Manifest.load(model_dir)
    get_format(manifest.format)  # an unknown format fails here, before MLflow writes anything
    example, output = signature_frames(manifest, sample_texts)
    with serving_code(model_dir) as code:
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=str(code / bundle.ENTRY),
            artifacts={"model": str(model_dir)},
            code_paths=[str(code)],
            pip_requirements=requirements(model_dir),
            signature=infer_signature(example, output),
            input_example=example,
        )
    return out


def signature_frames(manifest: Manifest, sample_texts: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The bundle's example input and output, by task (frugal/bundle/pyfunc.py serves both)."""
    n = len(sample_texts)
    if manifest.task == "generate":
        answers = {"response": ["x"] * n, "prompt_tokens": [1] * n, "completion_tokens": [1] * n}
        return pd.DataFrame({"prompt": sample_texts}), pd.DataFrame(answers)
    probabilities = {f"p_{label}": [0.0] * n for label in manifest.labels}
    return pd.DataFrame({"text": sample_texts}), pd.DataFrame({"label": ["x"] * n, **probabilities})


@stage(name="package")
def package(selection: Selection, variants: list[Variant], data: DataRef, cfg: RunConfig, paths: ProjectPaths, parent_run: str) -> Bundle:
    champion = next(v for v in variants if v.name == selection.champion.variant)
    assert champion.model is not None
    model_dir = store.model_dir(champion.model, paths)
    fmt = Manifest.load(model_dir).format
    with tempfile.TemporaryDirectory() as tmp:
        column = "prompt" if cfg.task == "generate" else "text"
        sample = list(pd.read_parquet(store.data_dir(data, paths) / "test.parquet")[column][:2])
        out = build_bundle(model_dir, Path(tmp) / BUNDLE, sample)
        # What evaluation measured travels with the bundle: served from a folder (the image), requests are still metered.
        figures = {"variant": champion.name, "parent_run": parent_run, "metrics": selection.champion.metrics}
        (out / bundle.FIGURES).write_text(json.dumps(figures, indent=2))
        tracking.log_dir(parent_run, out, BUNDLE)
    log.info("Packaged %s (%s runtime) as runs:/%s/%s", champion.name, fmt, parent_run, BUNDLE)
    return Bundle(uri=f"runs:/{parent_run}/{BUNDLE}", variant=champion.name, model_uri=champion.model.uri, runtime=packages(model_dir))
