"""A model folder says what it holds: each method's output loads with the loader of the standard its format names.

`hf` folders load with plain transformers (no `ignore_mismatched_sizes`) and give the logits frugal's runtime
gives; `onnx` files run in ONNX Runtime; a format of frugal's own (heads pruned per layer, int8 safetensors) says
so, and plain transformers indeed cannot read it, while frugal's runtime does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import Built
from conftest import LocalSplits as Splits
from helpers import sample_texts

from frugal.config import RunConfig
from frugal.paths import ProjectPaths
from frugal.runtime import Manifest, get_format, load_predictor
from ml.compress import get_method
from tasks.compress import StepSettings, context

# method, options, the format its output must have here (the smoke model: a 2-layer BERT with 2 heads per layer)
CASES = {
    "distill-narrow": ("distill", {"layers": 1, "intermediate_size": 16, "epochs": 0.1}, "hf"),  # config says the new widths
    "prune-ffn": ("prune", {"heads_fraction": 0.0, "ffn_fraction": 0.5, "importance_batches": 1, "recovery_epochs": 0}, "hf"),
    "prune-heads": ("prune", {"heads_fraction": 0.5, "ffn_fraction": 0.5, "importance_batches": 1, "recovery_epochs": 0}, "hf-resized"),
    "sparsity": ("sparsity", {"sparsity": 0.5}, "hf"),
    "lora": ("lora", {"r": 2, "epochs": 0.1}, "hf"),
    "dynamic_int8": ("dynamic_int8", {}, "torch-int8"),
    "onnx_export": ("onnx_export", {}, "onnx"),
    "onnx_int8": ("onnx_int8", {"never_slower_than_plain": False}, "onnx"),
    "onnx_int8_plain": ("onnx_int8_plain", {}, "onnx"),
}


def transformers_logits(folder: Path, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Logits from the folder loaded by transformers alone; it must find every weight in the shape its config says."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.inference_mode():
        return model.eval()(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()


def check_standard(folder: Path, texts: list[str]) -> str:
    """Load `folder` with the loader its format names; returns the format."""
    fmt = get_format(Manifest.load(folder).format)
    ours = load_predictor(folder)
    batch = ours.tokenize(texts)
    if fmt.standard == "transformers":
        assert np.abs(transformers_logits(folder, batch) - ours.logits(batch)).max() < 1e-4
    elif fmt.standard == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        feeds = {i.name: batch[i.name] for i in session.get_inputs()}
        assert np.abs(session.run(["logits"], feeds)[0] - ours.logits(batch)).max() < 1e-5
    else:  # frugal's own: honest only if the standard loader really cannot read it
        with pytest.raises(Exception):  # noqa: B017 - transformers raises a shape error of its own kind
            transformers_logits(folder, batch)
        assert ours.predict_proba(texts).shape == (len(texts), len(ours.labels))
    return fmt.name


def test_the_fine_tuned_baseline_is_a_standard_hf_folder(baseline: Built, smoke_splits: Splits) -> None:
    assert check_standard(baseline.model_dir, sample_texts(smoke_splits, 8)) == "hf"


@pytest.mark.parametrize("case", list(CASES))
def test_each_methods_output_loads_with_its_formats_own_loader(
    case: str, baseline: Built, smoke_cfg: RunConfig, smoke_splits: Splits, store: ProjectPaths, tmp_path: Path
) -> None:
    method, options, expected = CASES[case]
    ctx = context(StepSettings.of(smoke_cfg), smoke_splits.dir, store)
    get_method(method).from_config(options).apply(baseline.model_dir, tmp_path / case, ctx)
    assert check_standard(tmp_path / case, sample_texts(smoke_splits, 8)) == expected
    assert expected in get_method(method).produces
