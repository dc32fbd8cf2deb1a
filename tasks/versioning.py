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
from tasks.common import Splits, stage

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


def commit(staged: Splits, target: Path, root: Path) -> Splits:
    """Swap the staged splits into `target` and `dvc add` it; on failure the old data comes back."""
    backup = target.with_name(f".{target.name}.previous")
    shutil.rmtree(backup, ignore_errors=True)
    if target.exists():
        target.rename(backup)
    try:
        shutil.move(str(staged.dir), str(target))
        with open_repo(root) as repo:
            repo.add(str(target))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        if backup.exists():
            backup.rename(target)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    return Splits(dir=target, rows=staged.rows, md5=dvc_hash(target.with_name(f"{target.name}.dvc")))


@stage(name="version_data")
def version_data(staged: Splits, cfg: RunConfig, paths: ProjectPaths, run_id: str) -> Splits:
    data = commit(staged, paths.data(cfg.data.dir), paths.root)
    tracking.set_tags(run_id, {"data_hash": data.md5})
    tracking.log_file(run_id, data.dir.with_name(f"{data.dir.name}.dvc"), "data")
    log.info("Data version %s recorded in %s.dvc", data.md5, data.dir.name)
    return data
