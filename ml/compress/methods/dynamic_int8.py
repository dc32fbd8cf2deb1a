"""PyTorch dynamic int8 quantization: Linear weights stored as int8, activations quantized on the fly."""

from __future__ import annotations

from pathlib import Path

from frugal.runtime.formats.torch import count_params, load_torch, quantize_dynamic_int8
from ml.compress.base import TORCH_FORMATS, CompressContext, StepReport, TorchMethod, register


@register
class DynamicInt8(TorchMethod):
    name = "dynamic_int8"
    accepts = TORCH_FORMATS
    produces = ("torch-int8",)

    def build(self, src: Path, ctx: CompressContext):
        manifest = self.source(src)
        model = quantize_dynamic_int8(load_torch(src).float())
        out = manifest.derive(format="torch-int8", dtype="qint8", params=count_params(model), lineage=[*manifest.lineage, self.name])
        return model, out, StepReport(notes=["Linear weights int8 (per-tensor); embeddings and LayerNorm stay fp32."])
