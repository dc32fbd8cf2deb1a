from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pytest

from frugal.config import RunConfig
from frugal.paths import ProjectPaths
from tasks import tracking
from tasks.common import Scores, Splits, Variant
from tasks.package import ALIAS, package, register
from tasks.select import Selection


@pytest.fixture
def selection(baseline: Variant, smoke_splits: Splits, smoke_cfg: RunConfig) -> Selection:
    from frugal.runtime import load_predictor
    from tasks.evaluate import quality

    test = pd.read_parquet(smoke_splits.path("test"))
    predicted = load_predictor(baseline.model_dir).predict(list(test["text"]))
    f1 = quality(list(test["label"]), predicted, smoke_cfg.data.labels)["macro_f1"]
    scores = Scores("baseline", baseline.run_id, {"macro_f1": f1, "usd_per_1m": 0.02, "throughput_per_s": 100.0})
    return Selection(scores, scores, ("baseline",), "")


def test_bundle_serves_with_mlflow_pyfunc(
    baseline: Variant, selection: Selection, smoke_splits: Splits, smoke_cfg: RunConfig, parent_run: str
) -> None:
    import mlflow.pyfunc

    bundle = package.fn(selection, [baseline], smoke_splits, smoke_cfg, parent_run)
    model = mlflow.pyfunc.load_model(bundle.uri)
    out = model.predict(pd.DataFrame({"text": ["what a great idea", "I hate this"]}))
    assert list(out.columns) == ["label", "p_negative", "p_neutral", "p_positive"]
    assert set(out["label"]) <= set(smoke_cfg.data.labels)
    assert out[["p_negative", "p_neutral", "p_positive"]].sum(axis=1).round(5).eq(1).all()
    assert "torch" in bundle.runtime
    requirements = tracking.download(parent_run, "bundle/requirements.txt", Path(tempfile.mkdtemp())).read_text()
    assert "torch==" in requirements and "onnxruntime" not in requirements


def test_register_moves_the_alias_only_for_a_better_champion(
    baseline: Variant, selection: Selection, smoke_splits: Splits, smoke_cfg: RunConfig, store: ProjectPaths
) -> None:
    cfg = smoke_cfg.model_copy(update={"tracking": smoke_cfg.tracking.model_copy(update={"registered_model": "frugal-unit-registry"})})
    client = tracking.mlflow_client()
    with tracking.parent_run(cfg, store, run_name="first") as run_id:
        bundle = package.fn(selection, [baseline], smoke_splits, cfg, run_id)
        first = register.fn(bundle, selection, smoke_splits, cfg, run_id)
    assert first.promoted and client.get_model_version_by_alias("frugal-unit-registry", ALIAS).version == first.version

    pricier = Selection(Scores("baseline", baseline.run_id, {**selection.champion.metrics, "usd_per_1m": 0.05}), selection.baseline, (), "")
    with tracking.parent_run(cfg, store, run_name="second") as run_id:
        second = register.fn(package.fn(pricier, [baseline], smoke_splits, cfg, run_id), pricier, smoke_splits, cfg, run_id)
    assert not second.promoted and "kept v1" in second.reason
    assert client.get_model_version_by_alias("frugal-unit-registry", ALIAS).version == first.version

    cheaper = Selection(Scores("baseline", baseline.run_id, {**selection.champion.metrics, "usd_per_1m": 0.01}), selection.baseline, (), "")
    with tracking.parent_run(cfg, store, run_name="third") as run_id:
        third = register.fn(package.fn(cheaper, [baseline], smoke_splits, cfg, run_id), cheaper, smoke_splits, cfg, run_id)
    assert third.promoted and client.get_model_version_by_alias("frugal-unit-registry", ALIAS).version == third.version
