"""The plain ONNX Runtime recipe (export + quantize_dynamic with defaults): the reference row frugal's int8 must beat."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Built, LocalSplits
from helpers import sample_texts

from frugal.config import RunConfig
from frugal.paths import ProjectPaths
from frugal.runtime import load_predictor
from frugal.runtime.manifest import Manifest
from ml.compress import get_method
from tasks.compress import StepSettings, context

MIN_AGREEMENT = 0.9  # int8 rounding may flip a few near-tie labels of the tiny model, not most


def test_plain_recipe_is_an_unfused_int8_graph_that_agrees_with_its_source(
    baseline: Built, smoke_cfg: RunConfig, smoke_splits: LocalSplits, store: ProjectPaths, tmp_path: Path
) -> None:
    import onnx

    ctx = context(StepSettings.of(smoke_cfg), smoke_splits.dir, store)
    report = get_method("onnx_int8_plain").from_config({}).apply(baseline.model_dir, tmp_path / "plain", ctx)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "plain" / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops  # weights really int8
    assert not ops & {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"}  # no fusions: the plain recipe
    texts = sample_texts(smoke_splits)
    plain, source = load_predictor(tmp_path / "plain").predict(texts), load_predictor(baseline.model_dir).predict(texts)
    assert sum(a == b for a, b in zip(plain, source, strict=True)) >= MIN_AGREEMENT * len(texts)
    assert report.metrics["agreement_with_source"] >= MIN_AGREEMENT
    assert Manifest.load(tmp_path / "plain").lineage[-1] == "onnx_int8_plain"


FUSED_OPS = {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization", "QAttention"}


@pytest.mark.parametrize(("timings", "kept"), [([200.0, 100.0], "fused"), ([100.0, 200.0], "plain")])
def test_onnx_int8_keeps_whichever_graph_is_faster_here(
    timings: list[float], kept: str, baseline: Built, smoke_cfg: RunConfig, smoke_splits: LocalSplits, store: ProjectPaths,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The race's figures decide (set here, since which graph is faster depends on the CPU); the kept file is that graph."""
    import onnx

    from ml.compress.methods import onnx_int8

    monkeypatch.setattr(onnx_int8, "race", lambda folders, texts, threads: timings)
    ctx = context(StepSettings.of(smoke_cfg), smoke_splits.dir, store)
    report = get_method("onnx_int8").from_config({"timing_texts": 32}).apply(baseline.model_dir, tmp_path / "int8", ctx)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node}
    assert report.params["graph"] == kept
    assert (report.metrics["candidate_fused_per_s"], report.metrics["candidate_plain_per_s"]) == tuple(timings)
    assert bool(ops & FUSED_OPS) is (kept == "fused")
    assert report.metrics["agreement_with_source"] >= MIN_AGREEMENT


def test_race_times_every_candidate_in_order(baseline: Built, smoke_splits: LocalSplits, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two candidates that take a known time per pass (the model's own predictor, slowed by a sleep): the race reports
    each one's texts/s, in the order given; a race that swapped, mixed or mis-timed them fails."""
    import time

    from frugal.runtime import load_predictor
    from ml.compress import onnx

    texts = sample_texts(smoke_splits)
    delays = {"fast": 0.05, "slow": 0.2}

    def slowed(folder: Path, threads: int | None = None):  # noqa: ANN202
        predictor, delay = load_predictor(baseline.model_dir, threads=threads), delays[Path(folder).name]
        real = predictor.predict_proba
        predictor.predict_proba = lambda batch, *a, **k: (time.sleep(delay if len(batch) == len(texts) else 0), real(batch, *a, **k))[1]
        return predictor

    monkeypatch.setattr(onnx, "load_predictor", slowed)
    fast, slow = onnx.race([Path("fast"), Path("slow")], texts, threads=1, passes=3)
    assert len(texts) / (delays["fast"] + 1.0) < fast < len(texts) / delays["fast"]  # at most the sleep, plus at most 1 s of model
    assert len(texts) / (delays["slow"] + 1.0) < slow < len(texts) / delays["slow"]
    assert fast > slow
