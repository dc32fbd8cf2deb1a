"""Whether a registered model version's files are in the artifact store.

The registry and the artifact store can disagree: objects lost from S3 leave a version that MLflow
still lists, whose download is an empty folder (MLflow says so in one INFO line). Registering,
promoting (tasks/register.py), `frugal doctor` (flows/commands.py) and `frugal serve`
(frugal/serve/source.py) ask `missing` first, so the registry never points at nothing unnoticed.
It lists the version's folder; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from frugal import bundle
from frugal.runtime.manifest import MANIFEST, TOKENIZER_DIR

if TYPE_CHECKING:
    from mlflow import MlflowClient

MLMODEL = "MLmodel"
TOKENIZER_FILE = "tokenizer.json"  # what the runtime's Tokenize reads (frugal/runtime/predictor.py)
# What serving a bundle (frugal/bundle/__init__.py) reads, by folder: MLflow's MLmodel, the model folder's manifest and
# tokenizer. The weights' file names depend on the format, so the model folder must only hold something more.
REQUIRED = {"": (MLMODEL,), bundle.MODEL: (MANIFEST, TOKENIZER_DIR), f"{bundle.MODEL}/{TOKENIZER_DIR}": (TOKENIZER_FILE,)}


def missing(client: MlflowClient, name: str, version: str) -> str | None:
    """None when `name` v`version`'s bundle is in the artifact store; else what is missing, and where it was looked for."""
    return missing_at(client, client.get_model_version_download_uri(name, str(version)))


def missing_at(client: MlflowClient, uri: str) -> str | None:
    """The same for a bundle's artifact URI (`runs:/RUN/bundle`, a store's URI): None when its files are there."""
    root = uri.rstrip("/")
    absent: list[str] = []
    for folder, needed in REQUIRED.items():
        found = listed(client, f"{root}/{folder}" if folder else root)
        if not found and not folder:
            return f"nothing is stored at {root}"
        absent += [f"{folder}/{entry}".lstrip("/") for entry in needed if entry not in found]
        if folder == bundle.MODEL and not found - {MANIFEST, TOKENIZER_DIR}:
            absent.append(f"{folder}/<the weights>")  # a manifest and a tokenizer alone load no model
    return f"{root} lacks {', '.join(absent)}" if absent else None


def listed(client: MlflowClient, uri: str) -> set[str]:
    """The names directly under `uri` in the store (an empty set for a folder that is not there, as S3 answers)."""
    import mlflow.artifacts

    return {PurePosixPath(entry.path).name for entry in mlflow.artifacts.list_artifacts(artifact_uri=uri, tracking_uri=client.tracking_uri)}
