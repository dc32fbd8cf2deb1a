"""int8, raced: each runtime's int8 reloads without torch and agrees with fp32; the race keeps the fastest candidate that keeps
the quality; a static candidate without enough calibration texts is skipped with the reason; `pick` builds one candidate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import Built
from conftest import LocalSplits as Splits
from helpers import sample_texts

from frugal.config import RunConfig
from frugal.paths import ProjectPaths
from frugal.runtime import Manifest, load_predictor
from ml.compress import get_method
from ml.compress.methods import int8
from tasks.compress import StepSettings, context

# int8 of the smoke model against its fp32 PyTorch self, on 50 test texts: labels agree on at least this share, and no
# class probability moves more than this (measured here: see the closing note of the change that added the race).
MIN_AGREEMENT = 0.9
MAX_PROBA_CHANGE = 0.1
NO_TORCH = """
import json, sys
sys.modules["torch"] = sys.modules["transformers"] = None  # importing either now fails: the runtime must not need them
from frugal.runtime import load_predictor
texts = json.loads(sys.stdin.read())
print(json.dumps(load_predictor(sys.argv[1], threads=1).predict_proba(texts).tolist()))
"""


@pytest.fixture
def ctx(smoke_cfg: RunConfig, smoke_splits: Splits, store: ProjectPaths):
    return context(StepSettings.of(smoke_cfg), smoke_splits.dir, store)


@pytest.mark.parametrize(("candidate", "fmt"), [("onnx-dynamic", "onnx"), ("onnx-static", "onnx"), ("openvino-static", "openvino")])
def test_each_runtimes_int8_reloads_without_torch_and_agrees_with_fp32(
    candidate: str, fmt: str, baseline: Built, smoke_splits: Splits, ctx, tmp_path: Path
) -> None:
    report = get_method("int8").from_config({"pick": candidate}).apply(baseline.model_dir, tmp_path / "m", ctx)
    assert report.params["winner"] == candidate and report.params["raced"] is False
    manifest = Manifest.load(tmp_path / "m")
    assert (manifest.format, manifest.dtype) == (fmt, "int8")
    texts = sample_texts(smoke_splits)
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path / "m")], input=json.dumps(texts), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    quantized, full = np.array(json.loads(proc.stdout)), load_predictor(baseline.model_dir).predict_proba(texts)
    assert (quantized.argmax(1) == full.argmax(1)).mean() >= MIN_AGREEMENT
    assert np.abs(quantized - full).max() <= MAX_PROBA_CHANGE


@pytest.mark.parametrize(("speeds", "winner", "fmt"), [((100.0, 300.0, 200.0), "onnx-static", "onnx"),
                                                       ((100.0, 200.0, 300.0), "openvino-static", "openvino")])  # fmt: skip
def test_the_race_keeps_the_fastest_candidate(
    speeds: tuple[float, ...], winner: str, fmt: str, baseline: Built, ctx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Known speeds (which runtime is faster depends on the CPU): the kept folder is the fastest candidate's, every figure recorded."""
    monkeypatch.setattr(int8, "race", lambda folders, texts, threads: list(speeds[: len(folders)]))
    report = get_method("int8").from_config({"calibration_texts": 64}).apply(baseline.model_dir, tmp_path / "m", ctx)
    assert report.params["winner"] == winner and Manifest.load(tmp_path / "m").format == fmt
    for name, speed in zip(int8.CANDIDATES, speeds, strict=True):
        assert report.metrics[f"candidate_{name}_per_s"] == speed and f"candidate_{name}_val_macro_f1" in report.metrics


def test_a_candidate_below_the_quality_floor_is_never_kept(baseline: Built, ctx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fastest candidate loses 0.10 val macro-F1, more than select.tolerance allows: the next fastest is kept."""
    quality = {"m": 0.80, "onnx-dynamic": 0.80, "onnx-static": 0.70, "openvino-static": 0.795}
    monkeypatch.setattr(int8, "val_macro_f1", lambda folder, texts, truth, c: quality.get(Path(folder).name, 0.80))
    monkeypatch.setattr(int8, "race", lambda folders, texts, threads: [100.0, 300.0, 200.0])
    src = tmp_path / "m"
    import shutil

    shutil.copytree(baseline.model_dir, src)
    report = get_method("int8").from_config({"calibration_texts": 64}).apply(src, tmp_path / "out", ctx)
    assert ctx.tolerance < 0.10 and report.params["winner"] == "openvino-static"


def test_too_few_calibration_texts_skip_the_static_candidates_with_the_reason(baseline: Built, ctx, tmp_path: Path) -> None:
    report = get_method("int8").from_config({"calibration_texts": 8}).apply(baseline.model_dir, tmp_path / "m", ctx)
    assert report.params["winner"] == "onnx-dynamic"
    skipped = [n for n in report.notes if "fewer than the 32 static int8 needs" in n]
    assert len(skipped) == 2 and any("onnx-static" in n for n in skipped) and any("openvino-static" in n for n in skipped)
