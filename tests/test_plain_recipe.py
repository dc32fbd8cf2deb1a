"""The plain ONNX Runtime recipe (export + quantize_dynamic with defaults): the reference row frugal's int8 must beat."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Built, LocalSplits
from helpers import sample_texts

from frugal.config import RunConfig
from frugal.modelio import Manifest
from frugal.paths import ProjectPaths
from frugal.runtime import load_predictor
from tasks.compress import get_method
from tasks.compression import StepSettings, context

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

    from tasks.compress import onnx_plain

    monkeypatch.setattr(onnx_plain, "race", lambda folders, texts, threads: timings)
    ctx = context(StepSettings.of(smoke_cfg), smoke_splits.dir, store)
    report = get_method("onnx_int8").from_config({"timing_texts": 32}).apply(baseline.model_dir, tmp_path / "int8", ctx)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node}
    assert report.params["graph"] == kept
    assert (report.metrics["candidate_fused_per_s"], report.metrics["candidate_plain_per_s"]) == tuple(timings)
    assert bool(ops & FUSED_OPS) is (kept == "fused")
    assert report.metrics["agreement_with_source"] >= MIN_AGREEMENT


def test_race_times_every_candidate(baseline: Built, smoke_splits: LocalSplits) -> None:
    from tasks.compress.onnx_plain import race

    texts = sample_texts(smoke_splits)
    speeds = race([baseline.model_dir, baseline.model_dir], texts, threads=1, passes=2)
    assert len(speeds) == 2 and min(speeds) > 0
