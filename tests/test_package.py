from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import Built, LocalSplits

from frugal.config import RunConfig
from frugal.hardware import machine_fingerprint
from frugal.paths import ProjectPaths
from tasks.evaluate import measure_model
from tasks.package import Bundle, package
from tasks.plumbing import tracking
from tasks.plumbing.refs import Scores, Variant
from tasks.register import ALIAS, Incumbent, Rule, decide, register
from tasks.select import Selection


@pytest.fixture
def selection(baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig) -> Selection:
    from frugal.runtime import load_predictor
    from ml.quality import quality

    test = pd.read_parquet(smoke_splits.path("test"))
    predicted = load_predictor(baseline.model_dir).predict(list(test["text"]))
    f1 = quality(list(test["label"]), predicted, smoke_cfg.data.labels)["macro_f1"]
    here = machine_fingerprint(smoke_cfg.evaluate.threads)["machine_fingerprint"]  # measured here, as the incumbent will be
    metrics = {"macro_f1": f1, "usd_per_1m": 0.02, "throughput_per_s": 100.0}
    scores = Scores(variant="baseline", run_id=baseline.run_id, metrics=metrics, machine=here)
    return Selection(champion=scores, baseline=scores, frontier=("baseline",), table_md="")


def variants(baseline: Built) -> list[Variant]:
    return [Variant(name="baseline", model=baseline.ref, steps=(baseline.run_id,))]


def test_bundle_serves_with_mlflow_pyfunc(
    baseline: Built, selection: Selection, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    import mlflow.pyfunc

    bundle = package.fn(selection, variants(baseline), smoke_splits.ref, smoke_cfg, store, parent_run)
    model = mlflow.pyfunc.load_model(bundle.uri)
    out = model.predict(pd.DataFrame({"text": ["what a great idea", "I hate this"]}))
    assert list(out.columns) == ["label", "p_negative", "p_neutral", "p_positive"]
    assert set(out["label"]) <= set(smoke_cfg.data.labels)
    assert out[["p_negative", "p_neutral", "p_positive"]].sum(axis=1).round(5).eq(1).all()
    assert "torch" in bundle.runtime and bundle.model_uri == baseline.ref.uri
    requirements = tracking.download(parent_run, "bundle/requirements.txt", Path(tempfile.mkdtemp())).read_text()
    assert "torch==" in requirements and "onnxruntime" not in requirements


def test_the_rule_keeps_an_incumbent_that_meets_the_bar_unless_the_challenger_is_clearly_cheaper() -> None:
    challenger, uri = {"macro_f1": 0.80, "usd_per_1m": 0.05}, "runs:/new/model"

    def champion(f1: float, usd: float, model_uri: str = "runs:/old/model") -> Incumbent:
        return Incumbent(version="1", model_uri=model_uri, macro_f1=f1, usd_per_1m=usd)

    def promotes(current: Incumbent | None) -> bool:
        return decide(current, challenger, uri, Rule(baseline_f1=0.80, tolerance=0.01, min_saving=0.05))[0]

    assert promotes(None)
    assert not promotes(champion(0.795, 0.05))  # as good, as cheap
    assert not promotes(champion(0.795, 0.051))  # dearer by less than the noise margin
    assert promotes(champion(0.795, 0.06))  # the challenger is 17% cheaper
    assert promotes(champion(0.70, 0.01))  # too weak now, however cheap
    assert not promotes(champion(0.70, 0.01, model_uri=uri))  # already this model
    assert not promotes(champion(0.95, 0.10))  # far better than the challenger: price does not buy quality
    assert promotes(champion(0.805, 0.10))  # better by less than the tolerance, and the challenger is half the price


def test_the_rule_compares_only_prices_measured_on_one_machine() -> None:
    challenger, uri, rule = {"macro_f1": 0.80, "usd_per_1m": 0.01}, "runs:/new/model", Rule(0.80, tolerance=0.01, min_saving=0.05)
    current = Incumbent(version="1", model_uri="runs:/old/model", macro_f1=0.795, usd_per_1m=0.05, machine="aaa")
    promote, why = decide(current, challenger, uri, rule, machine="aaa")
    assert promote and "on machine aaa" in why  # 5x cheaper, both measured on machine aaa
    kept, why = decide(current, challenger, uri, rule, machine="bbb")
    assert not kept and "machine bbb" in why and "on machine aaa" in why  # as cheap by a figure from elsewhere: proves nothing
    assert not decide(current, challenger, uri, rule, machine=None)[0]  # a figure from an unknown machine neither
    weak = current.model_copy(update={"macro_f1": 0.70})
    assert decide(weak, challenger, uri, rule, machine="bbb")[0]  # quality needs no common machine: below the bar, it goes
    strong = current.model_copy(update={"macro_f1": 0.95})
    assert not decide(strong, challenger, uri, rule, machine="aaa")[0]  # and price never buys quality


def test_register_moves_the_alias_only_for_a_better_champion(
    baseline: Built, selection: Selection, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths
) -> None:
    """The incumbent is re-measured in each run; the challenger here claims a cost, so the test sets it either side."""
    cfg = smoke_cfg.model_copy(update={"tracking": smoke_cfg.tracking.model_copy(update={"registered_model": "frugal-unit-registry"})})
    client, data = tracking.client(smoke_cfg, store), smoke_splits.ref
    with tracking.parent_run(cfg, store, run_name="first") as run_id:
        first = register.fn(package.fn(selection, variants(baseline), data, cfg, store, run_id), selection, data, cfg, store, run_id)
    assert first.promoted and str(client.get_model_version_by_alias("frugal-unit-registry", ALIAS).version) == first.version

    def another(bundle: Bundle, uri: str = "runs:/another-variant/model") -> Bundle:  # a challenger that is not the champion's own model
        return bundle.model_copy(update={"model_uri": uri})

    def claiming(usd: float, machine: str | None = selection.champion.machine) -> Selection:
        metrics = {**selection.champion.metrics, "usd_per_1m": usd}
        return selection.model_copy(update={"champion": selection.champion.model_copy(update={"metrics": metrics, "machine": machine})})

    with tracking.parent_run(cfg, store, run_name="second") as run_id:
        pricier = claiming(1e6)
        second = register.fn(another(package.fn(pricier, variants(baseline), data, cfg, store, run_id)), pricier, data, cfg, store, run_id)
        decision = client.get_run(run_id)
    assert not second.promoted and "kept v1" in second.reason
    assert str(client.get_model_version_by_alias("frugal-unit-registry", ALIAS).version) == first.version
    assert decision.data.tags["registry_decision"] == "kept" and 0 < decision.data.metrics["incumbent_usd_per_1m"] < 1e6

    with tracking.parent_run(cfg, store, run_name="third") as run_id:
        cheaper = claiming(1e-9)
        third = register.fn(another(package.fn(cheaper, variants(baseline), data, cfg, store, run_id)), cheaper, data, cfg, store, run_id)
    assert third.promoted and str(client.get_model_version_by_alias("frugal-unit-registry", ALIAS).version) == third.version

    # Cheap by its figures from another machine: measured again here, beside the champion, where it is dear.
    measured = []

    def measure(**where: object) -> object:
        measured.append(where["model_uri"])
        if str(where["model_uri"]).startswith("models:/"):  # the incumbent
            return measure_model(**where)
        stand_in = measure_model(**{**where, "model_uri": baseline.ref.uri})  # the challenger's model is the baseline's, priced dear
        return stand_in.model_copy(update={"metrics": {**stand_in.metrics, "usd_per_1m": 1e6}})

    with tracking.parent_run(cfg, store, run_name="fourth") as run_id:
        elsewhere = claiming(1e-9, machine="elsewhere")
        bundle = another(package.fn(elsewhere, variants(baseline), data, cfg, store, run_id), "runs:/a-third-variant/model")
        fourth = register.fn(bundle, elsewhere, data, cfg, store, run_id, measure=measure)
        decision = client.get_run(run_id)
    assert measured == [f"models:/frugal-unit-registry/{third.version}", "runs:/a-third-variant/model"]
    assert not fourth.promoted and f"on machine {selection.champion.machine}" in fourth.reason
    assert decision.data.tags["challenger_machine"] == decision.data.tags["incumbent_machine"] == selection.champion.machine
    assert decision.data.metrics["challenger_usd_per_1m"] == 1e6
    version = client.get_model_version("frugal-unit-registry", third.version)
    assert version.tags["machine_fingerprint"] == selection.champion.machine  # the figures on a version name their machine
