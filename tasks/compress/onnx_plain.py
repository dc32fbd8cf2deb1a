"""The reference recipe frugal's own int8 must beat: ONNX Runtime's documented export + dynamic quantization.

`torch.onnx.export` of the model as it is, then `quantize_dynamic` with the library's defaults: no graph
fusions, no per-channel scales, no quantized embeddings. The benchmark keeps it as a row so "frugal's int8 is
never slower than the plain recipe" is measured, not assumed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from frugal.modelio import Manifest
from tasks.compress._common import require_format, val_split
from tasks.compress.base import CompressContext, Method, MethodOptions, StepReport, register
from tasks.compress.onnx_export import export, finish
from tasks.compress.onnx_int8 import agreement


@register
class OnnxInt8Plain(Method):
    name = "onnx_int8_plain"
    Options = MethodOptions

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        manifest: Manifest = require_format(src, "hf", self.name)
        dst.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "model.onnx"
            export(src, fp32, opset=17, optimize=False)
            # DefaultTensorType is what ORT's own error message prescribes when shape inference misses a MatMul output type
            # (it does on transformers 5 exports of MiniLM); it changes no quantization choice.
            extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
            quantize_dynamic(str(fp32), str(dst / "model.onnx"), weight_type=QuantType.QInt8, extra_options=extra)
        finish(src, dst, manifest.derive(format="onnx", dtype="int8", lineage=[*manifest.lineage, self.name]))
        return StepReport(metrics={"agreement_with_source": agreement(src, dst, list(val_split(ctx)["text"][:256]))})
