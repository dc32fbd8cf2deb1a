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
