"""Active learning (tasks/active.py, tasks/active_study.py): curves of the configured length, no row bought twice, budget errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import shrink
from labels_data import LABELS, synthetic

from frugal.config import RunConfig
from frugal.errors import ConfigError
from frugal.paths import ProjectPaths
from ml.active import Annotator, Curve, pick, run_strategy, uncertainty
from ml.data import label_ids
from ml.features import featurize
from tasks.plumbing import tracking


@pytest.fixture(scope="module")
def pool() -> tuple:
    """TF-IDF features of a 300-row synthetic pool and a 150-row test split, with their label ids."""
    train, test = synthetic(300, seed=3), synthetic(150, seed=4)
    x, x_test = featurize("tfidf", list(train["text"]), list(test["text"]), None, 1, None)  # type: ignore[arg-type]
    return x, label_ids(train, LABELS), x_test, label_ids(test, LABELS)


def test_the_annotator_never_sells_a_row_twice() -> None:
    annotator = Annotator(np.array([0, 1, 2, 0, 1]))
    assert annotator.label(np.array([4, 1])).tolist() == [1, 1]
    with pytest.raises(RuntimeError, match=r"rows \[1\] were asked for twice"):
        annotator.label(np.array([1, 3]))
    with pytest.raises(RuntimeError, match=r"rows \[3\] were asked for twice"):
        annotator.label(np.array([3, 3]))
    assert annotator.asked == [4, 1]


@pytest.mark.parametrize("strategy", ["margin", "entropy", "random"])
def test_curve_has_seed_plus_rounds_points_and_no_row_is_asked_twice(pool: tuple, smoke_cfg: RunConfig, strategy: str) -> None:
    x, hidden, x_test, y_test = pool
    active = smoke_cfg.annotation.active.model_copy(update={"seed_size": 15, "batch_size": 10, "rounds": 8})
    seed_rows = np.random.default_rng(0).choice(300, size=15, replace=False)
    curve, annotator = run_strategy(strategy, x, hidden, x_test, y_test, seed_rows, active, 3, 1.0, 0)  # type: ignore[arg-type]
    assert curve.labels == [15 + 10 * k for k in range(9)] and len(curve.macro_f1) == 9
    assert len(annotator.asked) == len(set(annotator.asked)) == 15 + 8 * 10  # run_strategy's own picks: never a repeat
    assert annotator.asked[:15] == seed_rows.tolist()
    assert curve.macro_f1[-1] > curve.macro_f1[0]  # more labels teach this separable set more


def test_uncertainty_strategies_ask_for_the_least_certain_rows() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [0.34, 0.33, 0.33], [0.6, 0.3, 0.1]])
    unlabelled = np.array([10, 11, 12, 13])
    rng = np.random.default_rng(0)
    assert pick(probs, unlabelled, "margin", 2, rng).tolist() == [12, 11]
    assert pick(probs, unlabelled, "entropy", 1, rng).tolist() == [12]
    assert uncertainty(probs, "margin")[0] < uncertainty(probs, "margin")[3]


def test_labels_to_target_is_the_first_point_at_or_above_it() -> None:
    curve = Curve("margin", labels=[10, 20, 30, 40], macro_f1=[0.5, 0.69, 0.71, 0.7])
    assert curve.labels_to(0.7) == 30 and curve.labels_to(0.72) is None


def smoke_project_cfg(smoke_cfg: RunConfig, **active: object) -> RunConfig:
    return shrink(smoke_cfg, annotation={"active": {**smoke_cfg.annotation.active.model_dump(), **active}})


def test_study_logs_one_run_with_curves_plot_and_labels_to_target(smoke_cfg: RunConfig, tmp_path: Path) -> None:
    from tasks.active_study import study

    cfg, paths = smoke_project_cfg(smoke_cfg), ProjectPaths(tmp_path)
    result = study(cfg, paths)
    mlc = tracking.client(cfg, paths)
    run = mlc.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "active_learning"
    assert set(result.labels_to_target) == {"margin", "entropy", "random"}
    assert result.target_macro_f1 == pytest.approx(result.full_macro_f1 - cfg.select.tolerance)
    curve = pd.read_csv(io.StringIO(Path(mlc.download_artifacts(result.run_id, "active_learning/curve.csv", str(tmp_path))).read_text()))
    rounds, seed_size, batch = cfg.annotation.active.rounds, cfg.annotation.active.seed_size, cfg.annotation.active.batch_size
    assert len(curve) == 3 * (rounds + 1) and curve.groupby("strategy")["labels"].max().eq(seed_size + rounds * batch).all()
    assert (curve["usd"] == curve["labels"] * cfg.annotation.usd_per_label).all()
    assert "active_learning/learning_curve.png" in {a.path for a in mlc.list_artifacts(result.run_id, "active_learning")}
    for strategy, labels in result.labels_to_target.items():
        assert (labels is None) == (f"{strategy}_labels_to_target" not in run.data.metrics)


def test_a_budget_larger_than_the_pool_is_one_config_error_and_writes_nothing(smoke_cfg: RunConfig, tmp_path: Path) -> None:
    from tasks.active_study import study

    cfg = smoke_project_cfg(smoke_cfg, rounds=100)  # 30 + 100 x 20 labels; the smoke pool has 480 rows
    with pytest.raises(ConfigError, match=r"= 2030 labels, is larger than the unlabelled pool of 480 rows") as err:
        study(cfg, ProjectPaths(tmp_path))
    assert "annotation.active.rounds" in err.value.fix
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no run, no cache


def test_a_seed_smaller_than_the_classes_is_a_config_error(smoke_cfg: RunConfig, tmp_path: Path) -> None:
    from tasks.active_study import study

    with pytest.raises(ConfigError, match="seed_size=2 is smaller than the 3 classes"):
        study(smoke_project_cfg(smoke_cfg, seed_size=2), ProjectPaths(tmp_path))


@pytest.mark.slow
def test_cli_reports_an_oversized_budget_in_one_message(tmp_path: Path) -> None:
    """`frugal active-learning` (a Prefect flow): the budget error is one message, exit code 2, and the project stays empty."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "frugal.cli", "active-learning", "-c", "smoke", "-s", "annotation.active.rounds=100", "--project-dir",
           str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "frugal: error: The active-learning budget" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
