from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import LocalSplits

from tasks.versioning import commit, dvc_hash


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
    from tasks.data import clean, load_source, split, write_splits

    cfg = load_config("default")
    frame, _ = clean(load_source(cfg.data, ROOT), cfg.data)
    write_splits(split(frame, cfg.data, cfg.seed), tmp_path / "staged")
    (tmp_path / "p").mkdir()
    assert commit(tmp_path / "staged", tmp_path / "p" / "data", tmp_path / "p") == dvc_hash(ROOT / "data.dvc")
