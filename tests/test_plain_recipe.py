"""The plain ONNX Runtime recipe (export + quantize_dynamic with defaults): the reference row frugal's int8 must beat."""

from __future__ import annotations

from pathlib import Path

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
