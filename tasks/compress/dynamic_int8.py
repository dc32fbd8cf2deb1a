"""PyTorch dynamic int8 quantization: Linear weights stored as int8, activations quantized on the fly."""

from __future__ import annotations

from pathlib import Path

from frugal.modelio import Manifest, copy_tokenizer, count_params, load_torch, quantize_dynamic_int8, save_int8
from tasks.compress.base import CompressContext, Method, StepReport, register


@register
class DynamicInt8(Method):
    name = "dynamic_int8"

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        manifest = Manifest.load(src)
        if manifest.format != "hf":
            raise ValueError(f"dynamic_int8 needs a PyTorch (hf) model, got {manifest.format!r}")
        model = quantize_dynamic_int8(load_torch(src).float())
        save_int8(model, dst, manifest.derive(format="torch-int8", dtype="qint8", params=count_params(model)))
        copy_tokenizer(src, dst)
        return StepReport(notes=["Linear weights int8 (per-tensor); embeddings and LayerNorm stay fp32."])
