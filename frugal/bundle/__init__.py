"""The deployment bundle: an MLflow pyfunc folder holding one model folder and the runtime that serves it.

Layout (written by tasks/package.py, read by frugal/serve/source.py and `mlflow models serve`):
``artifacts/model/`` the model folder, ``code/frugal/`` the serving code (this package, the runtime and
the formats the model needs: ``serving_files``), ``serving.json`` what evaluation measured for it.
"""

from __future__ import annotations

from pathlib import Path

from frugal.runtime.registry import formats_of

MODEL = "artifacts/model"  # the model folder inside a bundle
FIGURES = "serving.json"  # the champion's variant and measured metrics
ENTRY = "bundle/serve_model.py"  # MLflow's "model from code": loading it unpickles nothing
_CORE = ("__init__.py", "bundle/__init__.py", "bundle/pyfunc.py", ENTRY, "runtime/__init__.py", "runtime/manifest.py",
         "runtime/predictor.py", "runtime/generator.py", "runtime/registry.py", "runtime/formats/__init__.py")  # fmt: skip


def model_dir(folder: Path) -> Path:
    """The model folder of a bundle, or `folder` itself when it is a model folder."""
    return folder / MODEL if (folder / MODEL).is_dir() else folder


def serving_files(model: Path) -> tuple[str, ...]:
    """Files of the `frugal` package (relative to it) that serve `model`: the runtime plus its formats' modules, nothing else."""
    formats = tuple(f"{fmt.module.removeprefix('frugal.').replace('.', '/')}.py" for fmt in formats_of(model))
    return tuple(dict.fromkeys((*_CORE, *formats)))
