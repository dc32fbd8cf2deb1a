"""Half precision (fp16 or bf16) weights and compute, where the serving hardware has native support."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from frugal.errors import SkipVariant
from frugal.hardware import cpu_flags, cpu_name
from frugal.modelio import count_params, load_torch
from tasks.compress._common import require_format
from tasks.compress.base import CompressContext, MethodOptions, StepReport, TorchMethod, register


class HalfOptions(MethodOptions):
    dtype: Literal["float16", "bfloat16"] = Field(
        "bfloat16", description="Runs on CUDA; on CPU, float16 needs AVX512-FP16 or AMX-FP16 and bfloat16 AVX512-BF16 or AMX-BF16."
    )


# Any one of these flags gives the CPU native matmul kernels for the dtype (oneDNN uses them);
# without one, PyTorch emulates the dtype in fp32 and the variant is slower than the baseline.
CPU_FLAGS = {"float16": ("avx512_fp16", "amx_fp16"), "bfloat16": ("avx512_bf16", "amx_bf16")}


def unsupported(dtype: str, device: str, flags: set[str] | None = None) -> str | None:
    """Why `dtype` cannot be served fast on `device`, or None when it can.

    `flags` are the CPU's /proc/cpuinfo flags (default: this machine's), so the rule can be
    checked for a CPU other than the one running it.
    """
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            return "serving device is cuda but no CUDA device is visible"
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bfloat16 support"
        return None
    needed = CPU_FLAGS[dtype]
    if set(needed) & (cpu_flags() if flags is None else flags):
        return None
    which = f" ({cpu_name()})" if flags is None else ""  # given flags may be another CPU's
    return (
        f"{dtype} has no native matmul kernels on this CPU{which}: its /proc/cpuinfo flags have neither "
        f"{' nor '.join(needed)}; serve on a CPU with one of them or on a CUDA device"
    )


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
