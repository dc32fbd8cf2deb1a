"""ONNX export: the PyTorch model as an ONNX graph for ONNX Runtime, fused where the fusions keep its outputs (ml/compress/onnx.py)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ml.compress.base import TORCH_FORMATS, CompressContext, Method, MethodOptions, StepReport, register
from ml.compress.common import val_split
from ml.compress.onnx import FP32_TOLERANCE, export, finish, max_abs_diff


class OnnxExportOptions(MethodOptions):
    opset: int = Field(17, ge=14, description="ONNX opset of the exported graph.")
    optimize: bool = Field(True, description="Fuse attention, LayerNorm and GELU (onnxruntime.transformers optimizer).")
    check_texts: int = Field(64, ge=1, description="Validation texts on which ONNX and PyTorch outputs are compared.")


@register
class OnnxExport(Method):
    name = "onnx_export"
    accepts = TORCH_FORMATS
    produces = ("onnx",)
    Options = OnnxExportOptions

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        opts: OnnxExportOptions = self.options
        manifest = self.source(src)
        exported = export(src, dst / "model.onnx", opts.opset, opts.optimize, self.name)
        finish(src, dst, manifest.derive(format="onnx", lineage=[*manifest.lineage, self.name]))
        texts = list(val_split(ctx)["text"][: opts.check_texts])
        diff = max_abs_diff(src, dst, texts)
        if diff > FP32_TOLERANCE:
            raise RuntimeError(f"ONNX logits differ from PyTorch by {diff:.2e} (> {FP32_TOLERANCE}); the export is wrong")
        params = {"onnx_inputs": ",".join(exported.inputs), "fused": bool(exported.fused)}
        params |= {f"fused_{k}": v for k, v in exported.fused.items()}
        return StepReport(params=params, metrics={"onnx_max_abs_diff": diff}, notes=exported.notes)
