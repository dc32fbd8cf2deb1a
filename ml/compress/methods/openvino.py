"""OpenVINO: the model as OpenVINO IR, in fp32, with a bf16 compute hint, or NNCF static int8 (ml/compress/quantize.py).

int8 sets its activation ranges on `calibration_texts` train texts, as OpenVINO's own post-training recipe does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field

from frugal.errors import SkipVariant
from frugal.hardware import half_unsupported
from ml.compress.base import TORCH_FORMATS, CompressContext, Method, MethodOptions, StepReport, register
from ml.compress.common import calibration_texts, val_split
from ml.compress.onnx import agreement
from ml.compress.quantize import openvino_folder


class OpenVinoOptions(MethodOptions):
    precision: Literal["int8", "fp32", "bf16"] = Field("int8", description="int8: NNCF static; fp32; bf16: a bf16 compute hint.")
    calibration_texts: int = Field(300, ge=8, description="int8: train texts NNCF sets activation ranges on.")
    check_texts: int = Field(256, ge=1, description="Val texts on which label agreement with the source model is recorded.")


def unsupported(precision: str, serve_device: str) -> str | None:
    """Why this machine cannot serve the OpenVINO model at `precision` (the variant is then skipped), or None."""
    if serve_device != "cpu":
        return f"the openvino format is served on the CPU here; this run serves on {serve_device}"
    if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None:
        return "openvino and nncf are not installed (pip install -c requirements/lock.txt -e .)"
    return half_unsupported("bfloat16", "cpu") if precision == "bf16" else None


@register
class OpenVino(Method):
    name = "openvino"
    accepts = TORCH_FORMATS
    produces = ("openvino",)
    Options = OpenVinoOptions

    def unsupported(self, serve_device: str) -> str | None:
        return unsupported(self.options.precision, serve_device)

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        opts: OpenVinoOptions = self.options
        if reason := self.unsupported(ctx.serve_device):
            raise SkipVariant(reason)
        manifest = self.source(src)
        dst.mkdir(parents=True, exist_ok=True)
        openvino_folder(src, dst, manifest, opts.precision, calibration_texts(ctx, opts.calibration_texts))
        return StepReport(metrics={"agreement_with_source": agreement(src, dst, list(val_split(ctx)["text"][: opts.check_texts]))})
