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
    message = str(err.value)
    assert "test: expect_column_values_to_be_in_set {'column': 'shared_with_train'" in message
    assert "val: expect_column_mean_to_be_between {'column': 'is_label__negative'" in message
    assert "train: expect_table_row_count_to_be_between" in message
    assert "nothing was trained" in message
    assert mlflow_client().get_run(parent_run).data.metrics["validation_failed_expectations"] >= 4


def test_text_length_bounds(tmp_path: Path, smoke_splits: Splits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str) -> None:
    cfg = shrink(smoke_cfg, validation={"text_max_chars": 20})
    with pytest.raises(ValidationFailed, match=r"expect_column_value_lengths_to_be_between"):
        validate.fn(staged(frames(smoke_splits), store, parent_run), cfg, store, parent_run)
