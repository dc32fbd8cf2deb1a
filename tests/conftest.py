"""Shared fixtures: the real smoke config, a real SQLite MLflow store, a tiny fine-tuned model.

Nothing here is mocked: MLflow, DVC, Great Expectations and Prefect all run for real, on
temporary folders, because each starts in seconds.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Prefect binds its console log handler to the sys.stderr of the moment it sets up logging (at `prefect.main`'s import).
# Set up here, that is pytest's session-long capture; set up inside a test that uses capsys (an in-process CLI call), it
# would be that test's stream, closed afterwards, and every later flow's log line would fail (test_feedback.py alone).
import prefect.main  # noqa: E402, F401

from frugal.accounts.store import Accounts  # noqa: E402
from frugal.config import RunConfig, load_config  # noqa: E402
from frugal.config.serve import Plan  # noqa: E402
from frugal.paths import ProjectPaths  # noqa: E402
from tasks.plumbing import tracking  # noqa: E402
from tasks.plumbing.refs import DataRef, ModelRef  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ is a folder of scripts and their helpers, not an installed package
from tools import postgres  # noqa: E402  (the throwaway PostgreSQL benchmarks/serve.py starts too)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """gpu and docker tests run only where the hardware or daemon is there; elsewhere they say why they skipped."""
    import subprocess

    import torch

    has_docker = shutil.which("docker") is not None and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "docker" in item.keywords and not has_docker:
            item.add_marker(pytest.mark.skip(reason="needs a running Docker daemon"))


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server for one test module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A fresh project folder per test module (its own MLflow store, DVC repo and caches)."""
    return tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))


@pytest.fixture(scope="session")
def smoke_cfg() -> RunConfig:
    return load_config("smoke")


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, smoke_cfg: RunConfig) -> ProjectPaths:
    """One SQLite MLflow store for the unit tests (creating one costs seconds)."""
    paths = ProjectPaths(tmp_path_factory.mktemp("store"))
    tracking.client(smoke_cfg, paths)
    return paths


@pytest.fixture
def parent_run(store: ProjectPaths, smoke_cfg: RunConfig) -> Iterator[str]:
    tracking.client(smoke_cfg, store)
    with tracking.parent_run(smoke_cfg, store, run_name="unit-test") as run_id:
        yield run_id


@dataclass(frozen=True)
class LocalSplits:
    """Prepared splits in a folder, plus the data reference stages take."""

    dir: Path
    rows: dict[str, int]
    ref: DataRef

    def path(self, split: str) -> Path:
        return self.dir / f"{split}.parquet"


@dataclass(frozen=True)
class Built:
    """A model a stage made: its reference and the local folder the store resolves it to."""

    ref: ModelRef
    model_dir: Path

    @property
    def run_id(self) -> str:
        return self.ref.run_id


@pytest.fixture(scope="session")
def smoke_splits(tmp_path_factory: pytest.TempPathFactory, smoke_cfg: RunConfig, store: ProjectPaths) -> LocalSplits:
    """The smoke splits, logged as the data version a pipeline run would log."""
    from ml.data import clean, load_source, split, write_splits

    folder = tmp_path_factory.mktemp("splits")
    frame, _ = clean(load_source(smoke_cfg.data, Path.cwd()), smoke_cfg.data)
    rows = write_splits(split(frame, smoke_cfg.data, smoke_cfg.seed), folder)
    tracking.client(smoke_cfg, store)
    with tracking.parent_run(smoke_cfg, store, run_name="splits-fixture") as run_id:
        tracking.log_dir(run_id, folder, "data/splits")
    return LocalSplits(folder, rows, DataRef(md5=f"fixture-{run_id}", uri=f"runs:/{run_id}/data/splits", rows=rows))


@pytest.fixture(scope="session")
def baseline(smoke_cfg: RunConfig, smoke_splits: LocalSplits, store: ProjectPaths) -> Built:
    """The smoke baseline, fine-tuned once for every test that needs a model."""
    from tasks.finetune import finetune
    from tasks.plumbing import store as model_store

    tracking.client(smoke_cfg, store)
    cfg = smoke_cfg
    with tracking.parent_run(cfg, store, run_name="baseline-fixture") as run_id:
        ref = finetune.fn(smoke_splits.ref, cfg.model, cfg.finetune, cfg.data.labels, cfg.seed, store, run_id)
    return Built(ref, model_store.model_dir(ref, store))


# The accounts store on SQLite and on a PostgreSQL server of our own (test_accounts.py, test_meter.py).
PLANS = {
    "small": Plan(requests_per_minute=5, texts_per_month=100, usd_per_1k_texts=2.0),
    "big": Plan(requests_per_minute=1000, texts_per_month=1_000_000, usd_per_1k_texts=0.05),
}
MARCH = datetime(2025, 3, 10, 12, 0, 15, tzinfo=UTC)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server of our own for the session (tools/postgres.py); yields its URL without a database name."""
    try:
        with postgres.server() as url:
            yield url
    except postgres.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database (no tables yet) on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serve.db'}"
    return postgres.new_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def accounts(url: str) -> Iterator[Accounts]:
    """The accounts store on that database, migrated, with the plans `small` and `big`."""
    store = Accounts(url, PLANS)
    store.migrate()
    yield store
    store.close()
