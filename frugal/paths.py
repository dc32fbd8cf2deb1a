"""Where things live. The project folder holds data/, data.dvc, the MLflow store and caches."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from frugal.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = ROOT / "configs"


@dataclass(frozen=True)
class ProjectPaths:
    """The folders one pipeline run reads and writes, all under one project folder."""

    root: Path

    @classmethod
    def resolve(cls, project_dir: str | Path | None = None) -> ProjectPaths:
        chosen = project_dir or os.environ.get("FRUGAL_PROJECT_DIR") or ROOT
        return cls(Path(chosen).resolve())

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def work(self) -> Path:
        """Scratch space: staged splits, checkpoints, variant models before they are logged."""
        return self.root / ".frugal"

    @property
    def datasets(self) -> Path:
        """Every data version this machine has materialised, one folder per DVC hash (git-ignored)."""
        return self.work / "datasets"

    def data(self, data_dir: str) -> Path:
        return self.inside(data_dir, "data.dir")

    def inside(self, relative: str, key: str) -> Path:
        """`relative` under the project folder; a symlink out of it is a config error, since frugal renames and deletes there."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ConfigError(f"{key}={relative!r} leads outside the project folder {self.root} (to {path}).",
                              f"Set {key} to a folder inside the project.")  # fmt: skip
        return path


# mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI into this process: that value is frugal's, not the user's.
_uri_set_by_frugal: str | None = None


def tracking_uri(configured: str | None, root: Path) -> str:
    """The MLflow store, by one rule for the pipeline, serving and every command (docs/configuration.md 'Where runs are tracked'):
    MLFLOW_TRACKING_URI as the user set it wins, then the config's `tracking_uri`, then `mlflow.db` in the project folder."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    user_env = from_env if from_env and from_env != _uri_set_by_frugal else None
    uri = user_env or configured or f"sqlite:///{Path(root) / 'mlflow.db'}"
    download_through_server(uri)
    return uri


def download_through_server(uri: str) -> None:
    """Artifacts of a tracking server come through the server, unless MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD says otherwise.

    MLflow 3.17's server advertises multipart downloads by URLs presigned for its object store's address, which
    only the server's own network may resolve, or which the store may not serve: the team stack's s3:9000 left
    host clients and even its own workers retrying chunks for minutes.
    """
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")


def tracking_uri_set_by_frugal(uri: str) -> None:
    """Note the URI frugal hands to mlflow.set_tracking_uri (which also puts it in MLFLOW_TRACKING_URI); call it before.

    A URI the user's MLFLOW_TRACKING_URI already names stays the user's: marking it frugal's would make the next
    `tracking_uri()` skip it (the team stack's runs ended by naming the project's SQLite file instead of its server).
    """
    global _uri_set_by_frugal
    current = os.environ.get("MLFLOW_TRACKING_URI")
    if current == uri and current != _uri_set_by_frugal:
        return
    _uri_set_by_frugal = uri
