from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import LocalSplits
from helpers import shrink

from frugal.config import RunConfig
from frugal.errors import DataError
from frugal.paths import ProjectPaths
from tasks.plumbing import tracking
from tasks.prepare import Staged
from tasks.version import commit, dvc_hash, version_data, version_folder


def staged_copy(splits: LocalSplits, where: Path) -> Path:
    shutil.copytree(splits.dir, where)
    return where


def test_commit_records_the_data_with_dvc(tmp_path: Path, smoke_splits: LocalSplits) -> None:
    project = tmp_path / "project"
    project.mkdir()
    md5 = commit(staged_copy(smoke_splits, tmp_path / "staged"), project / "data", project)
    assert (project / ".dvc").is_dir() and (project / "data.dvc").is_file()
    assert md5 == dvc_hash(project / "data.dvc") and md5.endswith(".dir")
    assert sorted(p.name for p in (project / "data").iterdir()) == ["test.parquet", "train.parquet", "val.parquet"]


def test_same_splits_give_the_same_hash(tmp_path: Path, smoke_splits: LocalSplits) -> None:
    hashes = []
    for name in ("a", "b"):
        project = tmp_path / name
        project.mkdir()
        hashes.append(commit(staged_copy(smoke_splits, tmp_path / f"staged-{name}"), project / "data", project))
    assert hashes[0] == hashes[1]


def test_a_failed_commit_puts_the_previous_data_back(tmp_path: Path, smoke_splits: LocalSplits) -> None:
    project = tmp_path / "project"
    project.mkdir()
    first = commit(staged_copy(smoke_splits, tmp_path / "s1"), project / "data", project)
    broken = tmp_path / "missing"
    with pytest.raises(FileNotFoundError):
        commit(broken, project / "data", project)
    assert dvc_hash(project / "data.dvc") == first
    assert (project / "data" / "train.parquet").is_file()


def test_committed_data_dvc_is_reproduced_by_the_default_config(tmp_path: Path) -> None:
    """data.dvc in the repo pins the default data version: preparing it again gives the same hash."""
    from frugal.config import load_config
    from frugal.paths import ROOT
    from ml.data import clean, load_source, split, write_splits

    cfg = load_config("default")
    frame, _ = clean(load_source(cfg.data, ROOT), cfg.data)
    write_splits(split(frame, cfg.data, cfg.seed), tmp_path / "staged")
    (tmp_path / "p").mkdir()
    assert commit(tmp_path / "staged", tmp_path / "p" / "data", tmp_path / "p") == dvc_hash(ROOT / "data.dvc")


def stage_splits(splits: LocalSplits, paths: ProjectPaths, run_id: str, keep: int | None = None) -> Staged:
    """The fixture's splits staged as a pipeline run would (the first `keep` train rows make a different version)."""
    staged = Staged(run_id=run_id, rows={})
    shutil.copytree(splits.dir, staged.dir(paths))
    if keep:
        train = pd.read_parquet(staged.dir(paths) / "train.parquet")
        train.head(keep).to_parquet(staged.dir(paths) / "train.parquet", index=False)
    return staged


@pytest.fixture
def pinned(tmp_path: Path, smoke_splits: LocalSplits, parent_run: str, smoke_cfg: RunConfig) -> ProjectPaths:
    """A project whose data.dvc pins the fixture's splits, recorded by a first run."""
    paths = ProjectPaths(tmp_path / "project")
    version_data.fn(stage_splits(smoke_splits, paths, "first"), smoke_cfg, paths, parent_run)
    return paths


def test_another_version_is_kept_by_hash_and_leaves_the_pin_alone(pinned: ProjectPaths, smoke_splits, parent_run, smoke_cfg) -> None:
    pin_before = (pinned.root / "data.dvc").read_text()
    ref = version_data.fn(stage_splits(smoke_splits, pinned, "second", keep=40), smoke_cfg, pinned, parent_run)
    assert ref.md5 != dvc_hash(pinned.root / "data.dvc")
    assert (pinned.root / "data.dvc").read_text() == pin_before
    assert len(pd.read_parquet(version_folder(ref.md5, pinned) / "train.parquet")) == 40
    remote = pinned.root.parent / "project-dvc-remote"
    assert any(remote.rglob("*")), "the version was pushed to the remote before training"
    assert tracking.mlflow_client().get_run(parent_run).data.tags["data_pinned"] == "false"


def test_record_version_moves_the_pin(pinned: ProjectPaths, smoke_splits, parent_run, smoke_cfg) -> None:
    cfg = shrink(smoke_cfg, data={"record_version": True})
    ref = version_data.fn(stage_splits(smoke_splits, pinned, "second", keep=40), cfg, pinned, parent_run)
    assert dvc_hash(pinned.root / "data.dvc") == ref.md5
    assert len(pd.read_parquet(pinned.root / "data" / "train.parquet")) == 40


def test_an_unreachable_remote_stops_the_run_before_training_and_keeps_the_pin(pinned, smoke_splits, parent_run, smoke_cfg) -> None:
    from dvc.repo import Repo

    with Repo(str(pinned.root)) as repo, repo.config.edit() as conf:
        conf["remote"]["frugal-local"]["url"] = "/proc/frugal-cannot-write-here"
    pin_before = (pinned.root / "data.dvc").read_text()
    with pytest.raises(DataError, match="could not be pushed to the DVC remote 'frugal-local' \\(/proc/frugal-cannot-write-here\\)"):
        version_data.fn(stage_splits(smoke_splits, pinned, "second", keep=40), shrink(smoke_cfg, data={"record_version": True}),
                        pinned, parent_run)  # fmt: skip
    assert (pinned.root / "data.dvc").read_text() == pin_before


def test_a_changed_file_fails_verification(pinned: ProjectPaths, smoke_cfg) -> None:
    from tasks.version import open_repo, verify

    md5 = dvc_hash(pinned.root / "data.dvc")
    folder = version_folder(md5, pinned)
    with open_repo(pinned.root, scm=False) as repo:
        verify(folder, md5, repo)  # intact: passes
        (folder / "extra.parquet").write_bytes(b"x")
        with pytest.raises(DataError, match="extra.parquet .* does not match"):
            verify(folder, md5, repo)


def test_active_learning_reads_the_recorded_version_the_config_names(pinned: ProjectPaths, smoke_splits, parent_run, smoke_cfg) -> None:
    """`data.version` (what `frugal reproduce` sets) decides the pool and test split, not a fresh preparation of the source."""
    from tasks.active_study import pool_and_test

    ref = version_data.fn(stage_splits(smoke_splits, pinned, "second", keep=40), smoke_cfg, pinned, parent_run)
    active = {**smoke_cfg.annotation.active.model_dump(), "pool_rows": None}
    cfg = shrink(smoke_cfg, data={"version": ref.md5}, annotation={"active": active})
    pool, test = pool_and_test(cfg, pinned)
    recorded = pd.read_parquet(version_folder(ref.md5, pinned) / "train.parquet")
    assert len(pool) == 40 and sorted(pool["text"]) == sorted(recorded["text"])
    assert test.equals(pd.read_parquet(version_folder(ref.md5, pinned) / "test.parquet"))
