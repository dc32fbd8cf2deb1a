"""ONNX helpers the ONNX methods share: export a PyTorch model (with ONNX Runtime's fusions, checked against
PyTorch), the plain reference recipe, and the checks and timings that compare ONNX graphs.

The graph takes exactly the inputs the model's forward takes and the tokenizer gives it
(DistilBERT, DeBERTa-v2 and ModernBERT have no token types). Fusion settings come from the
model's family (ml/families.py). ONNX Runtime's fusions target BERT-shaped graphs: where one
fails or changes the outputs for a family, the plain exported graph is kept and the step's report
says so, instead of failing the variant.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frugal.errors import SkipVariant
from frugal.runtime import Tokenize, load_predictor
from frugal.runtime.formats.torch import load_torch
from frugal.runtime.manifest import Manifest, copy_tokenizer
from ml.families import Family, family_of

INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # in this order when the model takes them
# fp32 export agrees with PyTorch to float rounding; anything larger means a broken graph.
FP32_TOLERANCE = 1e-3


@dataclass
class Exported:
    """What an export produced: the graph's inputs, the fused operator counts, and why fusion was dropped if it was."""

    inputs: list[str]
    fused: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def model_inputs(model: Any, batch: dict[str, np.ndarray]) -> list[str]:
    """The inputs both the tokenizer gives and the model's forward accepts, in INPUTS order."""
    accepted = inspect.signature(model.forward).parameters
    return [name for name in INPUTS if name in batch and name in accepted]


def export(src: Path, onnx_path: Path, opset: int, optimize: bool, method: str = "onnx_export") -> Exported:
    """Write src's model to `onnx_path`, fused where ONNX Runtime's fusions keep the outputs unchanged."""
    import torch

    model = load_torch(src).float()
    model.set_attn_implementation("eager")  # plain MatMul/Softmax: the pattern ONNX Runtime's fusions recognise
    sample = Tokenize(src, Manifest.load(src).max_length)(["an example text to trace", "a second one"])
    names = model_inputs(model, sample)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(names, inputs, strict=True))).logits

    args = tuple(torch.from_numpy(sample[name]) for name in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    raw = onnx_path.with_name("raw.onnx")
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.onnx.export(
            Logits().eval(), args, str(raw), input_names=names, output_names=["logits"],
            dynamic_axes=axes, opset_version=opset, dynamo=False,
        )  # fmt: skip
    except Exception as exc:
        if _family(model) is not None:  # every known family exports (tested): this is a bug, not a limitation
            raise
        raise SkipVariant(f"{method}: torch.onnx.export cannot export {type(model).__name__}: {type(exc).__name__}: {exc}") from exc
    exported = Exported(inputs=names)
    if optimize:
        exported.fused, exported.notes = _optimize(raw, onnx_path, model, {k: sample[k] for k in names})
    if not onnx_path.is_file():
        raw.rename(onnx_path)
    raw.unlink(missing_ok=True)
    return exported


def _family(model: Any) -> Family | None:
    try:
        return family_of(model, "onnx_export")
    except SkipVariant:
        return None


def _optimize(raw: Path, out: Path, model: Any, sample: dict[str, np.ndarray]) -> tuple[dict[str, int], list[str]]:
    """Fuse `raw` into `out` with the family's settings; on failure or changed outputs write nothing and say why."""
    from onnxruntime.transformers import optimizer

    family = _family(model)
    name = family.name if family else type(model).__name__
    # 0 heads: attention left unfused (uneven pruning), or for an unknown family detected by the optimizer where it can.
    model_type, (num_heads, hidden) = (family.onnx_model_type, family.onnx_fusion(model)) if family else ("bert", (0, 0))
    try:
        optimized = optimizer.optimize_model(str(raw), model_type=model_type, num_heads=num_heads, hidden_size=hidden)
        optimized.save_model_to_file(str(out))
    except Exception as exc:
        out.unlink(missing_ok=True)
        return {}, [f"{name}: ONNX Runtime graph fusion failed ({type(exc).__name__}: {exc}); the unfused graph is kept."]
    diff = _graph_diff(raw, out, sample)
    if not diff <= FP32_TOLERANCE:  # also catches NaN
        out.unlink()
        return {}, [f"{name}: the fused graph's logits differ from the unfused one by {diff:.2e}; the unfused graph is kept."]
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}, []


def _graph_diff(a: Path, b: Path, feeds: dict[str, np.ndarray]) -> float:
    import onnxruntime as ort

    def run(path: Path) -> np.ndarray:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]

    return float(np.abs(run(a) - run(b)).max())


def max_abs_diff(src: Path, onnx_dir: Path, texts: list[str]) -> float:
    """Largest logit difference between the PyTorch source and the ONNX model on `texts`."""
    import torch

    predictor = load_predictor(onnx_dir, threads=None)
    batch = predictor.tokenize(texts)
    with torch.inference_mode():
        reference = load_torch(src).float()(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    return float(np.abs(predictor.logits(batch) - reference).max())


def finish(src: Path, dst: Path, manifest: Manifest) -> None:
    """Manifest, tokenizer and config next to model.onnx, so the folder serves on its own."""
    manifest.save(dst)
    copy_tokenizer(src, dst)
    if (src / "config.json").is_file():
        shutil.copy(src / "config.json", dst / "config.json")


def agreement(src: Path, dst: Path, texts: list[str]) -> float:
    """Share of texts on which the quantized model predicts the same label as its source."""
    return float(np.mean(np.array(load_predictor(src).predict(texts)) == np.array(load_predictor(dst).predict(texts))))


def plain_int8(src: Path, out: Path) -> None:
    """The recipe, verbatim: export without fusions, then quantize_dynamic with int8 weights and nothing else set."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export(src, fp32, opset=17, optimize=False)
        # DefaultTensorType is what ORT's own error message prescribes when shape inference misses a MatMul output type
        # (it does on transformers 5 exports of MiniLM); it changes no quantization choice.
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, extra_options=extra)


def race(folders: list[Path], texts: list[str], threads: int, passes: int = 3) -> list[float]:
    """Median texts/s of each model folder on `texts`, passes interleaved so every candidate sees the same machine noise."""
    predictors = [load_predictor(folder, threads=threads) for folder in folders]
    for predictor in predictors:
        # Warm-up on every text: the first call at each batch shape allocates and picks kernels (OpenVINO compiles for it),
        # so timing a first pass made the pricing's predictions 1.6-1.9x too dear (docs/search.md).
        predictor.predict_proba(texts)
    timings: list[list[float]] = [[] for _ in predictors]
    for _ in range(passes):
        for predictor, runs in zip(predictors, timings, strict=True):
            started = time.perf_counter()
            predictor.predict_proba(texts)
            runs.append(len(texts) / (time.perf_counter() - started))
    return [float(np.median(runs)) for runs in timings]
