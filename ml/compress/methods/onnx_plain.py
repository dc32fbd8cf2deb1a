"""The reference recipe frugal's own int8 must beat: ONNX Runtime's documented export + dynamic quantization.

`torch.onnx.export` of the model as it is, then `quantize_dynamic` with the library's defaults: no graph
fusions, no per-channel scales, no quantized embeddings. The benchmark keeps it as a row so "frugal's int8 is
never slower than the plain recipe" is measured, not assumed.
"""

from __future__ import annotations

from pathlib import Path

from frugal.runtime.manifest import Manifest
from ml.compress.base import TORCH_FORMATS, CompressContext, Method, MethodOptions, StepReport, register
from ml.compress.common import val_split
from ml.compress.onnx import agreement, finish, plain_int8


@register
class OnnxInt8Plain(Method):
    name = "onnx_int8_plain"
    accepts = TORCH_FORMATS
    produces = ("onnx",)
    Options = MethodOptions

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        manifest: Manifest = self.source(src)
        dst.mkdir(parents=True, exist_ok=True)
        plain_int8(src, dst / "model.onnx")
        finish(src, dst, manifest.derive(format="onnx", dtype="int8", lineage=[*manifest.lineage, self.name]))
        return StepReport(metrics={"agreement_with_source": agreement(src, dst, list(val_split(ctx)["text"][:256]))})
