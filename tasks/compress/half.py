"""Half precision (fp16 or bf16) weights and compute, where the serving hardware has native support."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from frugal.errors import SkipVariant
from frugal.modelio import count_params, load_torch
from tasks.compress._common import require_format
from tasks.compress.base import CompressContext, MethodOptions, StepReport, TorchMethod, register


class HalfOptions(MethodOptions):
    dtype: Literal["float16", "bfloat16"] = Field(
        "bfloat16", description="float16 needs CUDA; bfloat16 runs on CUDA or on CPUs with AVX512-BF16/AMX."
    )


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def unsupported(dtype: str, device: str) -> str | None:
    """Why `dtype` cannot be served fast on `device`, or None when it can."""
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            return "serving device is cuda but no CUDA device is visible"
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bfloat16 support"
        return None
    if dtype == "float16":
        return "float16 has no native matmul kernels on this CPU (no AVX512-FP16/AMX-FP16); it needs a CUDA serving device"
    if not ({"avx512_bf16", "amx_bf16"} & cpu_flags()):
        return "bfloat16 needs a CPU with AVX512-BF16 or AMX (not found in /proc/cpuinfo) or a CUDA serving device"
    return None


@register
class Half(TorchMethod):
    name = "half"
    heavy = True  # converts and checks on the GPU it will serve on
    Options = HalfOptions

    def unsupported(self, serve_device: str) -> str | None:
        return unsupported(self.options.dtype, serve_device)

    def build(self, src: Path, ctx: CompressContext):
        dtype = self.options.dtype
        reason = unsupported(dtype, ctx.serve_device)
        if reason:
            raise SkipVariant(reason)
        manifest = require_format(src, "hf", self.name)
        import torch

        model = load_torch(src).to(getattr(torch, dtype))
        out = manifest.derive(dtype=dtype, params=count_params(model), lineage=[*manifest.lineage, f"{self.name}-{dtype}"])
        return model, out, StepReport()
