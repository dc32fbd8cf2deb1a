"""The model store: turn a reference into a local folder, on whatever machine the stage runs.

An artifact in a local MLflow artifact store is used where it lies (a model is written once);
one in a remote store (S3, a tracking server) is downloaded once into the local cache
`<project>/.frugal/cache/` and reused from there. Folders handed out are read-only by contract.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from frugal import bundle
from frugal.fetch import fetch_once, in_place
from frugal.paths import ProjectPaths
from tasks.plumbing import tracking
from tasks.plumbing.refs import DataRef, ModelRef


def model_dir(ref: ModelRef, paths: ProjectPaths) -> Path:
    return local(ref.run_id, "model", paths)


def resolve(model_uri: str, paths: ProjectPaths) -> Path:
    """A model folder for `runs:/<run>/<path>` or a registry version `models:/<name>/<version>` (its bundle's model)."""
    if model_uri.startswith("runs:/"):
        run_id, _, artifact = model_uri.removeprefix("runs:/").partition("/")
        return local(run_id, artifact, paths)
    name, _, version = model_uri.removeprefix("models:/").rpartition("/")
    if not model_uri.startswith("models:/") or not version.isdigit():
        raise ValueError(f"{model_uri!r} is not runs:/<run>/<path> or models:/<name>/<version> (aliases move; give the version)")
    import mlflow.artifacts

    def download(tmp: Path) -> Path:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(tmp)))

    # Cached under what the version points at, not under its name: `frugal-smoke/1` of another registry (another
    # project, another server) is another model, and a worker serves them all.
    source = tracking.mlflow_client().get_model_version(name, version).source
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    cached = fetch_once(paths.work / "cache" / "registry" / name / version / key, paths.work / "cache", download)
    return bundle.model_dir(cached)


def data_dir(ref: DataRef, paths: ProjectPaths) -> Path:
    """The splits of a data version: the project's data folder when it holds that version, else its artifact."""
    for dvc_file in paths.root.glob("*.dvc"):
        folder = dvc_file.with_suffix("")
        if folder.is_dir() and _dvc_hash_or_none(dvc_file) == ref.md5:
            return folder
    run_id, _, artifact = ref.uri.removeprefix("runs:/").partition("/")
    return local(run_id, artifact, paths)


def dvc_hash(dvc_file: Path) -> str:
    """The md5 DVC recorded for the tracked folder (it ends in .dir)."""
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def _dvc_hash_or_none(dvc_file: Path) -> str | None:
    try:
        return dvc_hash(dvc_file)
    except (KeyError, IndexError, TypeError, OSError):
        return None


def local(run_id: str, artifact: str, paths: ProjectPaths) -> Path:
    """A local folder with the artifact `artifact` of run `run_id`."""
    root = tracking.mlflow_client().get_run(run_id).info.artifact_uri
    found = in_place(f"{root.rstrip('/')}/{artifact}")
    if found is not None:
        return found
    return fetch_once(paths.work / "cache" / run_id / artifact, paths.work / "cache", lambda tmp: tracking.download(run_id, artifact, tmp))
