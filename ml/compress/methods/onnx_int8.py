"""ONNX Runtime int8 quantization: dynamic (weights int8, activations quantized per call) or static
(activation ranges calibrated on the val split). Takes a PyTorch model (exported first) or an ONNX one."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from frugal.runtime import Tokenize
from ml.compress.base import TORCH_FORMATS, CompressContext, Method, MethodOptions, StepReport, register
from ml.compress.common import val_split
from ml.compress.onnx import agreement, export, finish, plain_int8, race
from ml.compress.quantize import ort_int8


class OnnxInt8Options(MethodOptions):
    mode: Literal["dynamic", "static"] = Field("dynamic", description="static calibrates activation ranges on val texts.")
    per_channel: bool = Field(True, description="One scale per output channel: better accuracy than one per tensor.")
    quantize_embeddings: bool = Field(True, description="Store the embedding tables int8 too (most of a small model's size).")
    calibration_texts: int = Field(256, ge=8, description="static: val texts used to calibrate activation ranges.")
    calibration_method: Literal["minmax", "percentile", "entropy"] = Field("minmax", description="static: how ranges are set.")
    check_texts: int = Field(256, ge=1, description="Val texts on which label agreement with the source model is recorded.")
    never_slower_than_plain: bool = Field(
        True,
        description="dynamic, from a PyTorch model: also build ONNX Runtime's plain recipe (export + quantize_dynamic, no fusions), "
        "time both on val texts on this machine with the serving threads, and keep the faster graph.",
    )
    timing_texts: int = Field(512, ge=32, description="Val texts each candidate graph is timed on (3 interleaved passes).")


@register
class OnnxInt8(Method):
    name = "onnx_int8"
    accepts = (*TORCH_FORMATS, "onnx")
    produces = ("onnx",)
    Options = OnnxInt8Options

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        opts: OnnxInt8Options = self.options
        manifest = self.source(src)
        val = list(val_split(ctx)["text"])
        dst.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = src / "model.onnx"
            if manifest.format in TORCH_FORMATS:  # static QDQ quantizes the plain graph; dynamic the fused one
                fp32 = Path(tmp) / "model.onnx"
                notes = export(src, fp32, opset=17, optimize=opts.mode == "dynamic", method=self.name).notes
            ort_int8(fp32, dst / "model.onnx", opts.mode, Tokenize(src, manifest.max_length), val[: opts.calibration_texts],
                     per_channel=opts.per_channel, quantize_embeddings=opts.quantize_embeddings, calibration_method=opts.calibration_method)
        lineage = [*manifest.lineage, *([] if manifest.format == "onnx" else ["onnx_export"]), f"{self.name}-{opts.mode}"]
        finish(src, dst, manifest.derive(format="onnx", dtype="int8", lineage=lineage))
        report = StepReport(metrics={}, notes=notes)
        if opts.mode == "dynamic" and manifest.format in TORCH_FORMATS and opts.never_slower_than_plain:
            report = keep_faster(src, dst, val[: opts.timing_texts], ctx.serve_threads, report)
        report.metrics["agreement_with_source"] = agreement(src, dst, val[: opts.check_texts])
        return report


def keep_faster(src: Path, dst: Path, texts: list[str], threads: int, report: StepReport) -> StepReport:
    """Race frugal's fused int8 graph in `dst` against the plain recipe on this machine; `dst` ends up holding the faster.

    Which graph wins depends on the CPU's int8 kernels (VNNI, AMX): measuring beats guessing.
    """
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain"
        shutil.copytree(dst, plain, ignore=shutil.ignore_patterns("model.onnx"))
        plain_int8(src, plain / "model.onnx")
        fused_tps, plain_tps = race([dst, plain], texts, threads)
        report.metrics |= {"candidate_fused_per_s": fused_tps, "candidate_plain_per_s": plain_tps}
        report.params["graph"] = "fused" if fused_tps >= plain_tps else "plain"
        if plain_tps > fused_tps:
            shutil.copy(plain / "model.onnx", dst / "model.onnx")
            report.notes.append(f"kept the plain recipe's graph: {plain_tps:.0f} vs {fused_tps:.0f} texts/s for the fused one here")
    return report
