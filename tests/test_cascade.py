"""Confidence cascades: the routing rule, the val calibration, measuring, serving, and their config errors.

The parts are the smoke baseline (strong) and a one-layer student distilled from it (cheap): two
different models, so routing changes answers and a wrong rule shows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import Built, LocalSplits
from helpers import shrink

from frugal.config import RunConfig, StepConfig, load_config
from frugal.errors import ConfigError, SkipVariant
from frugal.paths import ProjectPaths
from frugal.runtime import load_predictor
from frugal.runtime.formats.cascade import CascadePredictor, combine, deferred
from frugal.runtime.manifest import Manifest
from ml.cascade import calibrate, macro_f1_by_deferral, write_cascade
from ml.quality import quality
from tasks.cascade import build_cascade, cascade_model
from tasks.plumbing import store as model_store
from tasks.plumbing import tracking
from tasks.plumbing.refs import Variant

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def cheap(baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths) -> Built:
    from tasks.compress import StepSettings, compress_step

    step = StepConfig(method="distill", layers=1, intermediate_size=32, epochs=1)
    with tracking.parent_run(smoke_cfg, store, run_name="cascade-parts") as run_id:
        ref = compress_step.fn(baseline.ref, step, smoke_splits.ref, StepSettings.of(smoke_cfg), store, run_id)
    return Built(ref, model_store.model_dir(ref, store))


def variants(baseline: Built, cheap: Built) -> list[Variant]:
    return [Variant(name="baseline", model=baseline.ref, steps=(baseline.run_id,)),
            Variant(name="student", model=cheap.ref, steps=(baseline.run_id, cheap.run_id))]  # fmt: skip


def texts_of(splits: LocalSplits, split: str) -> tuple[list[str], list[str]]:
    frame = pd.read_parquet(splits.path(split))
    return list(frame["text"]), list(frame["label"])


# --- the calibration, on probabilities made by hand ------------------------------------------------------------------------------


def one_hot(classes: list[int], confidence: list[float]) -> np.ndarray:
    out = np.full((len(classes), 3), 0.0)
    for row, (c, p) in enumerate(zip(classes, confidence, strict=True)):
        out[row] = (1 - p) / 2
        out[row, c] = p
    return out


def test_the_sweep_gives_the_macro_f1_evaluation_reports_at_every_deferral() -> None:
    rng = np.random.default_rng(0)
    cheap, strong = rng.dirichlet([1, 1, 1], 200), rng.dirichlet([1, 1, 1], 200)
    truth = rng.integers(0, 3, 200)
    confidence, f1 = macro_f1_by_deferral(cheap, strong, truth, 3)
    order = np.argsort(cheap.max(axis=1), kind="stable")
    for k in (0, 1, 57, 199, 200):
        answer = cheap.argmax(axis=1).copy()
        answer[order[:k]] = strong.argmax(axis=1)[order[:k]]
        expected = quality([LABELS[i] for i in truth], [LABELS[i] for i in answer], LABELS)["macro_f1"]
        assert f1[k] == pytest.approx(expected, abs=1e-12)
    assert (np.diff(confidence) >= 0).all()


def test_calibration_picks_the_lowest_threshold_that_keeps_the_bar() -> None:
    # Six texts; the cheap part is wrong on its two least sure ones (0.4, 0.5), the strong part always right.
    truth = np.array([0, 1, 2, 0, 1, 2])
    cheap = one_hot([1, 2, 2, 0, 1, 2], [0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    strong = one_hot(list(truth), [0.9] * 6)
    perfect = calibrate(cheap, strong, truth, floor=1.0)  # both wrong rows must go to the strong part, and no more
    assert perfect.deferred_share_val == pytest.approx(2 / 6) and perfect.threshold == pytest.approx(0.55)
    assert perfect.val_macro_f1 == pytest.approx(1.0)
    assert (deferred(cheap, perfect.threshold) == [True, True, False, False, False, False]).all()
    one_off = calibrate(cheap, strong, truth, floor=0.8)  # one wrong row is tolerated: defer the least sure only
    assert one_off.deferred_share_val == pytest.approx(1 / 6) and one_off.threshold == pytest.approx(0.45)


def test_calibration_skips_a_cascade_that_never_defers_must_defer_everything_or_cannot_reach_the_bar() -> None:
    truth = np.array([0, 1, 2, 0, 1, 2])
    cheap = one_hot([1, 2, 2, 0, 1, 2], [0.4, 0.5, 0.6, 0.7, 0.8, 0.9])  # wrong on 2 of 6: macro-F1 about 0.66
    with pytest.raises(SkipVariant, match="cheap part alone"):  # a bar the cheap part meets alone: nothing to defer
        calibrate(cheap, one_hot(list(truth), [0.9] * 6), truth, floor=0.6)
    always_wrong = one_hot([1, 2, 0, 1, 2, 0], [0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    with pytest.raises(SkipVariant, match="only deferring every val text"):
        calibrate(always_wrong, one_hot(list(truth), [0.9] * 6), truth, floor=1.0)
    with pytest.raises(SkipVariant, match="no threshold keeps val macro-F1 >= 1.0000"):
        calibrate(always_wrong, always_wrong, truth, floor=1.0)


# --- the predictor ---------------------------------------------------------------------------------------------------------------


def test_the_cascade_answers_as_the_rule_applied_to_both_models(
    baseline: Built, cheap: Built, smoke_splits: LocalSplits, tmp_path: Path
) -> None:
    texts, _ = texts_of(smoke_splits, "test")
    cheap_proba = load_predictor(cheap.model_dir).predict_proba(texts)
    strong_proba = load_predictor(baseline.model_dir).predict_proba(texts)
    threshold = float(np.median(cheap_proba.max(axis=1)))
    write_cascade(cheap.model_dir, baseline.model_dir, tmp_path / "c", {"threshold": threshold})
    predictor = load_predictor(tmp_path / "c")
    assert isinstance(predictor, CascadePredictor)
    got = predictor.predict_proba(texts)
    expected, routed = combine(cheap_proba, strong_proba, threshold), deferred(cheap_proba, threshold)
    assert predictor.last_deferred == routed.sum() and 0 < routed.sum() < len(texts)
    assert (got[~routed] == cheap_proba[~routed]).all()  # the cheap part's own call, on the same batches
    # The strong part sees only the deferred texts, batched differently: the same answers up to float rounding.
    assert np.abs(got - expected).max() < 1e-5 and (got.argmax(1) == expected.argmax(1)).all()
    apart = np.abs(cheap_proba - strong_proba).max(1) > 1e-3  # so answering a row with the wrong part fails the checks above
    assert apart[routed].all() and apart[~routed].all()
    assert (cheap_proba.argmax(1) != strong_proba.argmax(1))[routed].any()  # routing changes labels, not only probabilities
    manifest = Manifest.load(tmp_path / "c")
    assert manifest.params == Manifest.load(cheap.model_dir).params + Manifest.load(baseline.model_dir).params


# --- building, measuring, serving ------------------------------------------------------------------------------------------------


def test_the_calibrated_threshold_is_the_lowest_that_keeps_val_macro_f1(
    baseline: Built, cheap: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    from frugal.config import CascadeConfig

    cfg = shrink(smoke_cfg, select={"tolerance": 0.0})  # the student alone is worse than the baseline: it must defer some
    spec = CascadeConfig(cascade=("student", "baseline"))
    built = build_cascade("c", spec, variants(baseline, cheap), smoke_splits.ref, cfg, store, parent_run, run_step=cascade_model.fn)
    assert built.status == "ok", built.reason
    folder = model_store.model_dir(built.model, store)
    notes = Manifest.load(folder).notes
    texts, labels = texts_of(smoke_splits, "val")
    cheap_proba = load_predictor(cheap.model_dir).predict_proba(texts)
    strong_proba = load_predictor(baseline.model_dir).predict_proba(texts)

    def val_f1(threshold: float) -> float:
        return quality(labels, [LABELS[i] for i in combine(cheap_proba, strong_proba, threshold).argmax(1)], LABELS)["macro_f1"]

    floor = val_f1(1.1)  # deferring everything = the baseline's own val macro-F1, tolerance 0
    assert notes["floor"] == pytest.approx(floor) and notes["val_macro_f1"] >= floor - 1e-9
    assert notes["val_macro_f1"] == pytest.approx(val_f1(notes["threshold"]))
    lower = sorted({p for p in cheap_proba.max(1) if p < notes["threshold"]})
    assert all(val_f1(p) < floor for p in [0.0, *lower]), "a lower threshold (less deferral) also kept the bar"
    run = tracking.mlflow_client().get_run(built.model.run_id)
    assert float(run.data.params["threshold"]) == notes["threshold"] and run.data.tags["step"] == "cascade"
    assert run.data.metrics["deferred_share_val"] == notes["deferred_share_val"] > 0
    assert built.steps[0] == baseline.run_id and built.steps[-1] == built.model.run_id


def test_measured_deferral_on_test_matches_val(
    baseline: Built, cheap: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    """Measured through tasks/evaluate.py like any variant; the test share is within a binomial bound of the val share.

    Val and test are exchangeable samples (a seeded random split), so the two shares differ by noise of standard deviation
    sqrt(q(1-q)(1/n_val + 1/n_test)) at the pooled share q; 4 of them fail a correct cascade about once in 15,000 runs
    (~0.37 at q = 0.5 with 60 texts each: the smoke split allows no tighter check). The exact check is the other assertion:
    the measured share is the share of test texts whose cheap confidence is below the threshold.
    """
    from frugal.config import CascadeConfig
    from tasks.evaluate import evaluate, measure_model

    val_texts, _ = texts_of(smoke_splits, "val")
    threshold = float(np.median(load_predictor(cheap.model_dir).predict_proba(val_texts).max(1)))  # about half deferred
    spec = CascadeConfig(cascade=("student", "baseline"), threshold=threshold)
    cfg = shrink(smoke_cfg, evaluate={"passes": 1, "arrival_order": False})
    built = build_cascade("c", spec, variants(baseline, cheap), smoke_splits.ref, cfg, store, parent_run, run_step=cascade_model.fn)
    assert built.status == "ok", built.reason
    scores = evaluate.fn(built, None, smoke_splits.ref, cfg, store, parent_run, measure=measure_model.fn)
    metrics = tracking.mlflow_client().get_run(scores.run_id).data.metrics
    test_texts, _ = texts_of(smoke_splits, "test")
    exact = deferred(load_predictor(cheap.model_dir).predict_proba(test_texts), threshold).mean()
    assert metrics["deferred_share"] == pytest.approx(exact)
    q_val, n_val, n_test = metrics["deferred_share_val"], len(val_texts), len(test_texts)
    q = (q_val * n_val + metrics["deferred_share"] * n_test) / (n_val + n_test)
    assert abs(metrics["deferred_share"] - q_val) <= 4 * math.sqrt(q * (1 - q) * (1 / n_val + 1 / n_test))
    assert metrics["cascade_threshold"] == pytest.approx(threshold) and 0.3 < q_val < 0.7
    assert metrics["params_m"] * 1e6 == pytest.approx(Manifest.load(cheap.model_dir).params + Manifest.load(baseline.model_dir).params)


def test_a_cascade_bundle_serves_through_mlflow_pyfunc_with_both_runtimes(
    baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, tmp_path: Path
) -> None:
    import mlflow.pyfunc

    from frugal.runtime.registry import packages
    from ml.compress import get_method
    from tasks.compress import StepSettings, context
    from tasks.package import build_bundle

    get_method("onnx_export").from_config({}).apply(baseline.model_dir, tmp_path / "onnx", context(StepSettings.of(smoke_cfg),
                                                   smoke_splits.dir, store))  # fmt: skip
    write_cascade(tmp_path / "onnx", baseline.model_dir, tmp_path / "c", {"threshold": 0.5})
    texts, _ = texts_of(smoke_splits, "test")
    bundle = build_bundle(tmp_path / "c", tmp_path / "bundle", texts[:2])
    out = mlflow.pyfunc.load_model(str(bundle)).predict(pd.DataFrame({"text": texts[:20]}))
    expected = load_predictor(tmp_path / "c").predict_proba(texts[:20])
    assert np.abs(out[[f"p_{label}" for label in LABELS]].to_numpy() - expected).max() < 1e-6
    requirements = (bundle / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "torch==" in requirements  # the ONNX cheap part and the PyTorch strong part
    assert packages(tmp_path / "c") == ("onnxruntime", "tokenizers", "torch", "transformers", "safetensors")
    assert (bundle / "code" / "frugal" / "runtime" / "formats" / "cascade.py").is_file()


def test_a_cascade_over_a_skipped_variant_is_skipped_with_its_reason(
    smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str, baseline: Built
) -> None:
    from frugal.config import CascadeConfig

    parts = [Variant(name="baseline", model=baseline.ref, steps=(baseline.run_id,)),
             Variant(name="fp16", model=None, status="skipped", reason="no float16 kernels on CPU")]  # fmt: skip
    built = build_cascade("c", CascadeConfig(cascade=("fp16", "baseline")), parts, smoke_splits.ref, smoke_cfg, store, parent_run,
                          run_step=cascade_model.fn)  # fmt: skip
    assert built.status == "skipped" and "'fp16' was skipped: no float16 kernels on CPU" in built.reason


# --- config ----------------------------------------------------------------------------------------------------------------------


def test_a_cascade_variant_is_read_beside_step_chains() -> None:
    cfg = load_config("smoke", ["compress.variants={a: {method: dynamic_int8}, c: {cascade: [a, baseline], threshold: 0.8}}"])
    assert list(cfg.compress.chains()) == ["a"] and cfg.compress.cascades()["c"].cascade == ("a", "baseline")
    assert cfg.compress.cascades()["c"].threshold == 0.8


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ("{a: {method: dynamic_int8}, c: {cascade: [a, nope]}}", "part 'nope' is not a variant of this config; known: baseline, a"),
        ("{a: {method: dynamic_int8}, c: {cascade: [c, a]}}", "cascade 'c' names itself as a part"),
        ("{a: {method: dynamic_int8}, c: {cascade: [a, baseline]}, d: {cascade: [c, baseline]}}", "part 'c' is itself a cascade"),
        ("{a: {method: dynamic_int8}, c: {cascade: [a, a]}}", "routes 'a' to itself"),
        ("{a: {method: dynamic_int8}, c: {cascade: [a]}}", "variant 'c' is a cascade: give {cascade: [cheap, strong]}"),
        ("{a: {method: dynamic_int8}, c: {cascade: [a, baseline], threshold: 1.5}}", "threshold: Input should be less than or equal to 1"),
    ],
)
def test_a_bad_cascade_is_one_config_error(variants: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config("smoke", [f"compress.variants={variants}"])
    assert message in str(raised.value) and str(raised.value).count("bad value") == 1
