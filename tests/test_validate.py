from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import LocalSplits as Splits
from helpers import shrink

from frugal.config import RunConfig
from frugal.errors import ValidationFailed
from frugal.paths import ProjectPaths
from ml.data import write_splits
from tasks.plumbing.tracking import mlflow_client
from tasks.prepare import Staged
from tasks.validate import validate


def frames(splits: Splits) -> dict[str, pd.DataFrame]:
    return {s: pd.read_parquet(splits.path(s)) for s in ("train", "val", "test")}


def staged(frames_by_split: dict[str, pd.DataFrame], store: ProjectPaths, run_id: str) -> Staged:
    """Splits staged where `prepare` stages them for the run `run_id`."""
    return Staged(run_id=run_id, rows=write_splits(frames_by_split, Staged(run_id=run_id, rows={}).dir(store)))


def test_good_splits_pass_and_the_result_is_logged(
    smoke_splits: Splits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    stats = validate.fn(staged(frames(smoke_splits), store, parent_run), smoke_cfg, store, parent_run)
    assert stats["test"]["unsuccessful_expectations"] == 0
    result = json.loads(Path(mlflow_client().download_artifacts(parent_run, "validation/result.json")).read_text())
    assert set(result) == {"train", "val", "test"} and all(r["success"] for r in result.values())


def test_failures_stop_the_flow_and_name_each_expectation(
    tmp_path: Path, smoke_splits: Splits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    bad = frames(smoke_splits)
    bad["test"] = pd.concat([bad["test"], bad["train"].head(3)])  # leaked rows
    bad["val"] = bad["val"].assign(label="negative")  # one class only
    cfg = shrink(smoke_cfg, validation={"min_rows": {"train": 10_000, "val": 10, "test": 10}})
    with pytest.raises(ValidationFailed) as err:
        validate.fn(staged(bad, store, parent_run), cfg, store, parent_run)
    message, rows = str(err.value), {split: len(frame) for split, frame in bad.items()}
    # Each failure in words, counted on the data (the expectation names stay in the run: validation/failures.txt).
    assert f"3 of {rows['test']:,} test texts also appear in train" in message
    assert "Label 'negative' is 100.0% of the val rows, outside 5% to 90%" in message
    assert f"The train split has {rows['train']:,} rows, fewer than validation.min_rows.train = 10,000" in message
    assert "nothing was trained" in message and "expect_" not in message
    assert "validation.min_rows" in err.value.fix and "validation.class_share_min" in err.value.fix
    assert mlflow_client().get_run(parent_run).data.metrics["validation_failed_expectations"] >= 4
    details = Path(mlflow_client().download_artifacts(parent_run, "validation/failures.txt")).read_text()
    assert "test: expect_column_values_to_be_in_set {'column': 'shared_with_train'" in details


def test_text_length_bounds(tmp_path: Path, smoke_splits: Splits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str) -> None:
    cfg = shrink(smoke_cfg, validation={"text_max_chars": 20})
    train = frames(smoke_splits)["train"]["text"].str.len()
    said = f"{int((train > 20).sum()):,} of {len(train):,} train texts are longer than 20 characters; the longest has {train.max():,}"
    with pytest.raises(ValidationFailed, match=said):
        validate.fn(staged(frames(smoke_splits), store, parent_run), cfg, store, parent_run)


@pytest.mark.slow
def test_a_validation_failure_reads_once_in_words(smoke_splits: Splits, tmp_path: Path) -> None:
    """`frugal run` on texts over the limit: the console shows the failure once (not Prefect's four reports of it), counted
    in words on the data, with the config key to change; exit code 2, no traceback."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "frugal.cli", "run", "-c", "smoke", "-s", "validation.text_max_chars=50", "--project-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    train = frames(smoke_splits)["train"]["text"].str.len()
    said = f"{int((train > 50).sum()):,} of {len(train):,} train texts are longer than 50 characters; the longest has {train.max():,}"
    assert proc.returncode == 2 and out.count(said) == 1, out[-3000:]
    assert out.count("Data validation failed") == 1 and "validation.text_max_chars" in out
    assert "Traceback" not in out and "expect_column" not in out
