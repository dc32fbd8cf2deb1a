"""Where things live. The project folder holds data/, data.dvc, the MLflow store and caches."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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

    def data(self, data_dir: str) -> Path:
        return self.root / data_dir
