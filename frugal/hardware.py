"""What the CPU is and which fast-math instructions it has, read from /proc/cpuinfo.

Measured costs only mean something next to the hardware they were measured on, and whether
int8 or half-precision variants can be fast depends on a handful of instruction-set flags.
Each function takes the cpuinfo text as an argument (default: this machine's), so callers and
tests can name a CPU that is not the one they run on.
"""

from __future__ import annotations

import platform

CPUINFO = "/proc/cpuinfo"

# Flags that decide whether quantized or half-precision matmuls have native kernels:
# VNNI (int8 dot products), BF16 and FP16 vector instructions, and AMX tile units.
FEATURES = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16", "amx_fp16")


def read_cpuinfo(path: str = CPUINFO) -> str:
    """The cpuinfo text, or "" where there is none (macOS, Windows, a sandbox without /proc)."""
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def _field(cpuinfo: str, name: str) -> str | None:
    """The value of the first `name : value` line (every core repeats the same block)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """Every flag the CPU reports (empty where cpuinfo is unavailable)."""
    flags = _field(read_cpuinfo() if cpuinfo is None else cpuinfo, "flags")
    return set(flags.split()) if flags else set()


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """Which of FEATURES the CPU has, in FEATURES' order."""
    flags = cpu_flags(cpuinfo)
    return [name for name in FEATURES if name in flags]


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's marketing name ("AMD EPYC 9R14 96-Core Processor"); the architecture where cpuinfo has none."""
    name = _field(read_cpuinfo() if cpuinfo is None else cpuinfo, "model name")
    return name or platform.processor() or platform.machine() or "unknown"


# Any one of these flags gives the CPU native matmul kernels for the dtype (oneDNN uses them);
# without one, PyTorch emulates the dtype in fp32 and half precision is slower than fp32.
HALF_CPU_FLAGS = {"float16": ("avx512_fp16", "amx_fp16"), "bfloat16": ("avx512_bf16", "amx_bf16")}
PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # training precision -> torch dtype name


def half_unsupported(dtype: str, device: str, cpuinfo: str | None = None) -> str | None:
    """Why `dtype` ("float16"/"bfloat16") matmuls have no native kernels on `device` ("cpu"/"cuda"), or None.

    The one rule behind serving a half-precision variant and training under autocast.
    """
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            return "the device is cuda but no CUDA device is visible"
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bfloat16 support"
        return None
    needed = HALF_CPU_FLAGS[dtype]
    if set(needed) & cpu_flags(cpuinfo):
        return None
    which = f" ({cpu_name()})" if cpuinfo is None else ""  # given cpuinfo may be another CPU's
    return f"{dtype} has no native matmul kernels on this CPU{which}: its /proc/cpuinfo flags have neither {' nor '.join(needed)}"


def training_precision_unsupported(precision: str, device: str, cpuinfo: str | None = None) -> str | None:
    """Why training in `precision` ("fp32"/"bf16"/"fp16") cannot run on `device`, or None where it can.

    fp16 trains on CUDA only: its narrow exponent needs a gradient scaler, and CPUs with fp16
    kernels (AVX512-FP16) are rare; bf16 has fp32's range, so it needs no scaler, only kernels.
    """
    if precision == "fp32":
        return None
    if precision == "fp16" and device != "cuda":
        return "fp16 training runs on CUDA only (fp16 autocast with a gradient scaler), and this training device is the CPU"
    return half_unsupported(PRECISION_DTYPES[precision], device, cpuinfo)
