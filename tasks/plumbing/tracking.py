"""MLflow bookkeeping: one parent run per pipeline run, one nested run per variant.

Every call names its run id explicitly (no fluent "active run" state), so stages can run in
any thread or process and still log to the right run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frugal.paths import ROOT, ProjectPaths, download_through_server, tracking_uri_set_by_frugal
from frugal.paths import tracking_uri as resolve_uri
from tasks.plumbing import provenance
from tasks.plumbing.lifecycle import close_stale_runs, owned_run

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from frugal.config import RunConfig

log = logging.getLogger(__name__)
LOCK_FILE = ROOT / "requirements" / "lock.txt"


_schema_ready: set[str] = set()


def tracking_uri(cfg: RunConfig, paths: ProjectPaths) -> str:
    """The run's MLflow store (the one rule: frugal.paths.tracking_uri)."""
    return resolve_uri(cfg.tracking.tracking_uri, paths.root)


def client(cfg: RunConfig, paths: ProjectPaths) -> MlflowClient:
    return connect(tracking_uri(cfg, paths))


def store_client(paths: ProjectPaths) -> MlflowClient:
    """The project's store when no config is at hand: MLFLOW_TRACKING_URI, else the SQLite file in the project."""
    return connect(resolve_uri(None, paths.root))


def connect(uri: str) -> MlflowClient:
    import mlflow
    from mlflow import MlflowClient

    ensure_schema(uri)
    download_through_server(uri)  # a worker connects with the URI its parent hands it, not through tracking_uri()
    tracking_uri_set_by_frugal(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, uri)


def ensure_schema(uri: str) -> None:
    """Create a new SQLite store's tables under a file lock.

    MLflow creates its schema on first use; two processes doing that at once on a fresh
    file fail with `duplicate column name`. Once the tables exist, concurrent use is safe.
    """
    if not uri.startswith("sqlite:///") or uri in _schema_ready:
        return
    from filelock import FileLock
    from mlflow import MlflowClient

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock"):
        MlflowClient(uri).search_experiments(max_results=1)
    _schema_ready.add(uri)


def mlflow_client() -> MlflowClient:
    """A client on the store configured for this process by `client()`."""
    import mlflow
    from mlflow import MlflowClient

    return MlflowClient(mlflow.get_tracking_uri(), mlflow.get_registry_uri())


def experiment_id(cfg: RunConfig, paths: ProjectPaths) -> str:
    return experiment_id_in(tracking_uri(cfg, paths), cfg.experiment_name, paths)


def experiment_id_in(uri: str, name: str, paths: ProjectPaths) -> str:
    mlc = connect(uri)
    found = mlc.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = paths.mlflow_artifacts.as_uri() if uri.startswith("sqlite:") else None
    return mlc.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def parent_run(cfg: RunConfig, paths: ProjectPaths, run_name: str | None = None) -> Iterator[str]:
    """Open the pipeline's parent run, first closing runs of this experiment that a killed process left RUNNING."""
    from mlflow.entities import Param

    exp_id = experiment_id(cfg, paths)
    close_stale_runs(mlflow_client(), exp_id)
    with owned_run(mlflow_client(), exp_id, run_name, provenance_tags(cfg)) as run_id:
        params = [Param(k, v[:6000]) for k, v in cfg.flat().items()]
        for start in range(0, len(params), 100):
            mlflow_client().log_batch(run_id, params=params[start : start + 100])
        log_provenance(run_id, cfg)
        yield run_id


def log_provenance(run_id: str, cfg: RunConfig) -> None:
    """The resolved config and the provenance record (tasks/provenance.py): what `frugal reproduce` reads back."""
    import yaml

    record = provenance.collect(cfg)
    set_tags(run_id, provenance.tags(record))
    log_json(run_id, record, provenance.PROVENANCE_ARTIFACT)
    log_text(run_id, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), provenance.CONFIG_ARTIFACT)


def child_tags(parent_run_id: str, name: str, tags: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The experiment and tags of a run nested under `parent_run_id` (it inherits the provenance tags)."""
    parent = mlflow_client().get_run(parent_run_id)
    return parent.info.experiment_id, {"mlflow.parentRunId": parent_run_id, **parent_tags(parent.data.tags), **(tags or {})}


@contextlib.contextmanager
def nested_run(parent_run_id: str, name: str, tags: dict[str, str] | None = None) -> Iterator[str]:
    """A run nested under `parent_run_id` that ends in one true state: FINISHED, FAILED (+ error) or KILLED."""
    exp_id, all_tags = child_tags(parent_run_id, name, tags)
    with owned_run(mlflow_client(), exp_id, name, all_tags) as run_id:
        yield run_id


def parent_tags(tags: dict[str, str]) -> dict[str, str]:
    """Provenance tags a nested run inherits, so each variant row in the UI carries them."""
    return {k: v for k, v in tags.items() if k in ("git_commit", "git_dirty", "config_hash", "lock_hash", "data_hash")}


def end_run(run_id: str, status: str = "FINISHED") -> None:
    mlflow_client().set_terminated(run_id, status)


def log_metrics(run_id: str, metrics: dict[str, float]) -> None:
    from mlflow.entities import Metric

    now = _now_ms()
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None]
    if batch:
        mlflow_client().log_batch(run_id, metrics=batch)


def log_history(run_id: str, history: list[dict[str, float]]) -> None:
    """Training curves: each entry's values logged at its `step`."""
    from mlflow.entities import Metric

    now = _now_ms()
    batch = [Metric(k, float(v), now, int(h["step"])) for h in history for k, v in h.items() if k != "step"]
    if batch:
        mlflow_client().log_batch(run_id, metrics=batch)


def log_params(run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    if params:
        mlflow_client().log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    mlc = mlflow_client()
    for key, value in tags.items():
        mlc.set_tag(run_id, key, str(value))


def log_json(run_id: str, obj: Any, artifact_file: str) -> None:
    log_text(run_id, json.dumps(obj, indent=2, default=str), artifact_file)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    mlflow_client().log_text(run_id, text, artifact_file)


def log_file(run_id: str, path: Path, artifact_dir: str | None = None) -> None:
    mlflow_client().log_artifact(run_id, str(path), artifact_dir)


def log_dir(run_id: str, path: Path, artifact_dir: str) -> None:
    mlflow_client().log_artifacts(run_id, str(path), artifact_dir)


def download(run_id: str, artifact_path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow_client().download_artifacts(run_id, artifact_path, str(dst)))


def provenance_tags(cfg: RunConfig) -> dict[str, str]:
    return {**code_tags(), "config_hash": cfg.digest(), "config_name": cfg.name}


def code_tags() -> dict[str, str]:
    commit, dirty = _git_state()
    lock = hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()[:12] if LOCK_FILE.is_file() else "none"
    return {"git_commit": commit, "git_dirty": str(dirty).lower(), "lock_hash": lock}


def _git_state() -> tuple[str, bool]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
