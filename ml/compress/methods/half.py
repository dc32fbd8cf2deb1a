"""Half precision (fp16 or bf16) weights and compute, where the serving hardware has native support."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from frugal.errors import SkipVariant
from frugal.hardware import half_unsupported
from frugal.runtime.formats.torch import count_params, load_torch
from ml.compress.base import TORCH_FORMATS, CompressContext, MethodOptions, StepReport, TorchMethod, register


class HalfOptions(MethodOptions):
    dtype: Literal["float16", "bfloat16"] = Field(
        "bfloat16", description="Runs on CUDA; on CPU, float16 needs AVX512-FP16 or AMX-FP16 and bfloat16 AVX512-BF16 or AMX-BF16."
    )


def unsupported(dtype: str, device: str, cpuinfo: str | None = None) -> str | None:
    """Why `dtype` cannot be served fast on `device`, or None when it can (`cpuinfo`: another CPU's, default this one's)."""
    reason = half_unsupported(dtype, device, cpuinfo)
    if reason is None or device == "cuda":
        return reason
    return f"{reason}; serve on a CPU with one of them or on a CUDA device"


@register
class Half(TorchMethod):
    name = "half"
    accepts = TORCH_FORMATS
    produces = TORCH_FORMATS
    heavy = True  # converts and checks on the GPU it will serve on
    Options = HalfOptions

    def unsupported(self, serve_device: str) -> str | None:
        return unsupported(self.options.dtype, serve_device)

    def build(self, src: Path, ctx: CompressContext):
        dtype = self.options.dtype
        reason = unsupported(dtype, ctx.serve_device)
        if reason:
            raise SkipVariant(reason)
        manifest = self.source(src)
        import torch

        model = load_torch(src).to(getattr(torch, dtype))
        out = manifest.derive(dtype=dtype, params=count_params(model), lineage=[*manifest.lineage, f"{self.name}-{dtype}"])
        return model, out, StepReport()
