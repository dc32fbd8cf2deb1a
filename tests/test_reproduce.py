"""`frugal reproduce` on a real smoke run: same data, identical quality metrics; and each way it must refuse.

Everything is real: a temporary Prefect server, a SQLite MLflow store, a DVC repo with a local remote.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from frugal.cli import main
from frugal.paths import ProjectPaths

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def original(prefect_server: None, project: Path) -> str:
    from flows.pipeline import run

    return run(config="smoke", project_dir=str(project)).run_id


def client(project: Path):
    from tasks.plumbing import tracking

    return tracking.store_client(ProjectPaths(project))


def parent_runs(project: Path) -> list:
    mlc = client(project)
    experiment = mlc.get_experiment_by_name("smoke").experiment_id
    return [r for r in mlc.search_runs([experiment], max_results=1000) if "mlflow.parentRunId" not in r.data.tags]


def variant_metrics(project: Path, run_id: str) -> dict[str, dict[str, float]]:
    from tasks.reports.reproduce import variant_metrics

    mlc = client(project)
    return variant_metrics(mlc, mlc.get_run(run_id))


def test_reproduce_gives_the_same_data_and_quality(original: str, project: Path, capsys: pytest.CaptureFixture) -> None:
    mlc = client(project)
    mlc.set_tag(original, "git_dirty", "true")  # as if it had run on a modified tree: reproducing must warn
    assert main(["reproduce", original, "--project-dir", str(project)]) == 0
    out, err = capsys.readouterr()
    assert "modified work tree" in err and "Quality metrics match exactly" in out

    (again,) = [r for r in parent_runs(project) if r.data.tags.get("reproduces") == original]
    first = mlc.get_run(original)
    assert again.info.status == "FINISHED" and again.info.run_id != original
    assert again.data.tags["data_hash"] == first.data.tags["data_hash"]
    assert again.data.tags["data_restored"] == first.data.tags["data_hash"]  # read back from DVC, not prepared anew
    before, after = variant_metrics(project, original), variant_metrics(project, again.info.run_id)
    assert set(before) == set(after) and len(before) >= 5
    for variant, metrics in before.items():
        if "macro_f1" in metrics:
            assert after[variant]["macro_f1"] == metrics["macro_f1"] and after[variant]["accuracy"] == metrics["accuracy"]
    # recomputed, not read from the cache: the fine-tune of the rerun has its own timing
    assert after["baseline"]["train_seconds"] != before["baseline"]["train_seconds"]
    assert "| baseline | macro_f1 |" in out and "reproduced / original" in out
    # The raced int8 step is rebuilt as the candidate the original kept, without racing again.
    def int8_step(run_id: str) -> dict:
        (variant,) = mlc.search_runs([first.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' and tags.variant = 'int8'")
        return mlc.get_run(variant.data.tags["steps"].split(",")[1]).data.params

    kept, rebuilt = int8_step(original), int8_step(again.info.run_id)
    assert kept["raced"] == "True" and rebuilt["raced"] == "False" and rebuilt["option.pick"] == rebuilt["winner"] == kept["winner"]


def test_a_changed_prepared_file_is_refused(original: str, project: Path, capsys: pytest.CaptureFixture) -> None:
    md5 = client(project).get_run(original).data.tags["data_hash"]
    train = project / ".frugal" / "datasets" / md5.removesuffix(".dir") / "train.parquet"
    kept = train.read_bytes()
    runs_before = len(parent_runs(project))
    train.write_bytes(kept + b"tampered")
    try:
        assert main(["reproduce", original, "--project-dir", str(project)]) == 2
    finally:
        train.write_bytes(kept)
    err = capsys.readouterr().err
    assert md5 in err and "train.parquet" in err and "does not match" in err and "Traceback" not in err
    assert len(parent_runs(project)) == runs_before  # refused before any run started


def test_a_version_in_neither_cache_nor_remote_is_named(original: str, project: Path, tmp_path: Path, capsys) -> None:
    md5 = client(project).get_run(original).data.tags["data_hash"]
    remote = project.parent / f"{project.name}-dvc-remote"
    moved = {p: tmp_path / p.name for p in (project / ".frugal" / "datasets", project / ".dvc" / "cache", remote)}
    for src, dst in moved.items():
        shutil.move(src, dst)
    try:
        assert main(["reproduce", original, "--project-dir", str(project)]) == 2
    finally:
        for src, dst in moved.items():
            shutil.rmtree(src, ignore_errors=True)
            shutil.move(dst, src)
    err = capsys.readouterr().err
    assert f"Data version {md5} is in neither the DVC cache" in err and str(remote) in err


def test_restore_pulls_from_the_remote_when_the_cache_is_gone(original: str, project: Path, tmp_path: Path) -> None:
    from tasks.version import restore

    md5 = client(project).get_run(original).data.tags["data_hash"]
    paths = ProjectPaths(project)
    moved = {p: tmp_path / p.name for p in (paths.datasets, project / ".dvc" / "cache")}
    for src, dst in moved.items():
        shutil.move(src, dst)
    try:
        folder = restore(md5, paths, None)
        assert sorted(p.name for p in folder.iterdir()) == ["test.parquet", "train.parquet", "val.parquet"]
        assert (folder / "train.parquet").read_bytes() == (tmp_path / "datasets" / md5.removesuffix(".dir") / "train.parquet").read_bytes()
    finally:
        for src, dst in moved.items():
            shutil.rmtree(src, ignore_errors=True)
            shutil.move(dst, src)


def test_unknown_run_is_one_message(project: Path, original: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["reproduce", "0123456789abcdef0123456789abcdef", "--project-dir", str(project)]) == 2
    err = capsys.readouterr().err
    assert "No MLflow run '0123456789abcdef0123456789abcdef'" in err and "Traceback" not in err


def test_a_config_this_code_no_longer_reads_is_refused(original: str, project: Path, tmp_path: Path, capsys) -> None:
    """A recorded config with a key the schema has since dropped: the message names the key and the commit to use."""
    mlc = client(project)
    first = mlc.get_run(original)
    config = yaml.safe_load(Path(mlc.download_artifacts(original, "config.yaml", str(tmp_path))).read_text())
    config["finetune"]["retired_option"] = 1
    old = mlc.create_run(first.info.experiment_id, run_name="old", tags={k: first.data.tags[k] for k in ("data_hash", "git_commit")})
    mlc.log_text(old.info.run_id, yaml.safe_dump(config), "config.yaml")
    mlc.set_terminated(old.info.run_id, "FINISHED")
    assert main(["reproduce", old.info.run_id, "--project-dir", str(project)]) == 2
    err = capsys.readouterr().err
    assert "no longer validates" in err and "finetune.retired_option" in err and first.data.tags["git_commit"] in err
