"""The reference recipe frugal's own int8 must beat: ONNX Runtime's documented export + dynamic quantization.

`torch.onnx.export` of the model as it is, then `quantize_dynamic` with the library's defaults: no graph
fusions, no per-channel scales, no quantized embeddings. The benchmark keeps it as a row so "frugal's int8 is
never slower than the plain recipe" is measured, not assumed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from frugal.modelio import Manifest
from frugal.runtime import load_predictor
from tasks.compress._common import require_format, val_split
from tasks.compress.base import CompressContext, Method, MethodOptions, StepReport, register
from tasks.compress.onnx_export import export, finish
from tasks.compress.onnx_int8 import agreement


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
    import time

    predictors = [load_predictor(folder, threads=threads) for folder in folders]
    for predictor in predictors:
        predictor.predict_proba(texts[:32])  # warm-up: first calls allocate and pick kernels
    timings: list[list[float]] = [[] for _ in predictors]
    for _ in range(passes):
        for predictor, runs in zip(predictors, timings, strict=True):
            started = time.perf_counter()
            predictor.predict_proba(texts)
            runs.append(len(texts) / (time.perf_counter() - started))
    return [float(np.median(runs)) for runs in timings]


@register
class OnnxInt8Plain(Method):
    name = "onnx_int8_plain"
    Options = MethodOptions

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        manifest: Manifest = require_format(src, "hf", self.name)
        dst.mkdir(parents=True, exist_ok=True)
        plain_int8(src, dst / "model.onnx")
        finish(src, dst, manifest.derive(format="onnx", dtype="int8", lineage=[*manifest.lineage, self.name]))
        return StepReport(metrics={"agreement_with_source": agreement(src, dst, list(val_split(ctx)["text"][:256]))})
