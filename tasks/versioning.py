"""version_data: promote validated splits to the project's data folder and record the version with DVC."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import yaml

from frugal.config import RunConfig
from frugal.paths import ProjectPaths
from tasks import tracking
from tasks.common import DataRef, stage
from tasks.data import Staged

log = logging.getLogger(__name__)


def open_repo(root: Path):  # -> dvc.repo.Repo
    """The project's DVC repo; a project folder without one gets one (tests, fresh folders)."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from dvc.repo import Repo

    if not (root / ".dvc").is_dir():
        Repo.init(str(root), no_scm=not (root / ".git").exists())
        log.info("Initialised a DVC repository in %s", root)
    return Repo(str(root))


def dvc_hash(dvc_file: Path) -> str:
    """The md5 DVC recorded for the tracked folder (it ends in .dir)."""
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def commit(staged: Path, target: Path, root: Path) -> str:
    """Swap the staged splits folder into `target` and `dvc add` it; return the DVC hash. On failure the old data comes back."""
    backup = target.with_name(f".{target.name}.previous")
    shutil.rmtree(backup, ignore_errors=True)
    if target.exists():
        target.rename(backup)
    try:
        shutil.move(str(staged), str(target))
        with open_repo(root) as repo:
            repo.add(str(target))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        if backup.exists():
            backup.rename(target)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    return dvc_hash(target.with_name(f"{target.name}.dvc"))


@stage(name="version_data")
def version_data(staged: Staged, cfg: RunConfig, paths: ProjectPaths, parent_run: str) -> DataRef:
    """Record the validated splits as the project's data version, and log them so any worker can fetch that version."""
    from filelock import FileLock

    target = paths.data(cfg.data.dir)
    paths.work.mkdir(parents=True, exist_ok=True)
    with FileLock(str(paths.work / "data.lock")):  # two runs started together on one project take turns
        md5 = commit(staged.dir(paths), target, paths.root)
    tracking.set_tags(parent_run, {"data_hash": md5})
    tracking.log_file(parent_run, target.with_name(f"{target.name}.dvc"), "data")
    log.info("Data version %s recorded in %s.dvc", md5, target.name)
    return DataRef(md5=md5, uri=splits_uri(md5, target, parent_run), rows=staged.rows)


def splits_uri(md5: str, folder: Path, parent_run: str) -> str:
    """The artifact URI of this data version's splits: logged once, by the first run that made the version.

    The same version keeps the same reference, so stages keyed by it are reused across runs.
    """
    mlc = tracking.mlflow_client()
    experiment = mlc.get_run(parent_run).info.experiment_id
    earlier = mlc.search_runs([experiment], f"tags.data_splits = '{md5}'", max_results=1, order_by=["attributes.start_time ASC"])
    if earlier:
        return f"runs:/{earlier[0].info.run_id}/data/splits"
    tracking.log_dir(parent_run, folder, "data/splits")
    tracking.set_tags(parent_run, {"data_splits": md5})
    return f"runs:/{parent_run}/data/splits"
