"""The model store: turn a reference into a local folder, on whatever machine the stage runs.

An artifact in a local MLflow artifact store is used where it lies (a model is written once);
one in a remote store (S3, a tracking server) is downloaded once into the local cache
`<project>/.frugal/cache/` and reused from there. Folders handed out are read-only by contract.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from frugal.paths import ProjectPaths
from tasks import tracking
from tasks.common import DataRef, ModelRef


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
    cached = paths.work / "cache" / "registry" / name / version
    if not cached.exists():
        import mlflow.artifacts

        tmp = paths.work / "cache" / f".{uuid.uuid4().hex}"
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(tmp)))
            cached.parent.mkdir(parents=True, exist_ok=True)
            try:
                got.rename(cached)
            except OSError:  # another process cached it first
                if not cached.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return cached / BUNDLE_MODEL


BUNDLE_MODEL = "artifacts/model"  # where a pyfunc bundle (tasks/package.py) keeps the model folder


def data_dir(ref: DataRef, paths: ProjectPaths) -> Path:
    """The splits of a data version: the project's data folder when it holds that version, else its artifact."""
    for dvc_file in paths.root.glob("*.dvc"):
        from tasks.versioning import dvc_hash

        folder = dvc_file.with_suffix("")
        if folder.is_dir() and _dvc_hash_or_none(dvc_file, dvc_hash) == ref.md5:
            return folder
    run_id, _, artifact = ref.uri.removeprefix("runs:/").partition("/")
    return local(run_id, artifact, paths)


def _dvc_hash_or_none(dvc_file: Path, dvc_hash) -> str | None:  # noqa: ANN001
    try:
        return dvc_hash(dvc_file)
    except (KeyError, IndexError, TypeError, OSError):
        return None


def local(run_id: str, artifact: str, paths: ProjectPaths) -> Path:
    """A local folder with the artifact `artifact` of run `run_id`."""
    root = tracking.mlflow_client().get_run(run_id).info.artifact_uri
    parsed = urlparse(root)
    if parsed.scheme in ("", "file"):
        in_place = Path(unquote(parsed.path)) / artifact
        if in_place.exists():
            return in_place
    cached = paths.work / "cache" / run_id / artifact
    if cached.exists():
        return cached
    # Download next to the cache and rename: a crash mid-download never leaves a partial folder in it.
    tmp = paths.work / "cache" / f".{uuid.uuid4().hex}"
    try:
        got = tracking.download(run_id, artifact, tmp)
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            got.rename(cached)
        except OSError:  # another process cached it first
            if not cached.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached
