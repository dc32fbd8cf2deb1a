"""What the CPU is and which fast-math instructions it has, read from /proc/cpuinfo; the machine's fingerprint.

Measured costs only mean something next to the hardware they were measured on, and whether
int8 or half-precision variants can be fast depends on a handful of instruction-set flags.
Each function takes the cpuinfo text as an argument (default: this machine's), so callers and
tests can name a CPU that is not the one they run on. `machine_fingerprint` adds the cores and
cgroup quota this process gets and hashes it all: measurements compare only under one hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

CPUINFO = "/proc/cpuinfo"
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")

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


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: taskset, a container's cpuset), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def _ancestry(base: Path, path: str) -> list[Path]:
    """The cgroup folder `path` under `base` and each folder above it, up to `base`."""
    parts = [p for p in path.split("/") if p]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _quota_v2(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _quota_v1(folder: Path) -> float | None:
    try:
        quota, period = (int((folder / f"cpu.cfs_{name}_us").read_text()) for name in ("quota", "period"))
    except (OSError, ValueError):
        return None
    return None if quota < 0 else quota / period


def cpu_quota(root: Path = CGROUP_ROOT, membership: Path = SELF_CGROUP) -> float | None:
    """CPUs' worth of time this process's cgroup may use (the tightest quota on its path), or None where unlimited.

    A container limited to 2 CPUs on a 96-core host keeps all 96 in its affinity mask but gets two
    cores' time: its measurements are not the host's. cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us`).
    """
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    found: list[float | None] = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if not controllers:  # the v2 hierarchy
            found += [_quota_v2(folder) for folder in _ancestry(root, path)]
        elif "cpu" in controllers.split(","):  # v1 mounts the controller as e.g. cpu,cpuacct
            found += [_quota_v1(folder) for folder in _ancestry(root / controllers, path)]
    quotas = [q for q in found if q is not None]
    return min(quotas) if quotas else None


def fingerprint(threads: int, cpuinfo: str, cores: int, quota: float | None) -> dict[str, str]:
    """What a measured speed depends on besides the model, as MLflow params, and `machine_fingerprint`: a hash of them.

    Two measurements compare only under one hash: the same CPU model with the same fast-math flags
    (a hypervisor may hide some), as many cores and as much cgroup quota, timed with as many threads.
    """
    fields = {
        "machine_cpu": cpu_name(cpuinfo),
        "machine_isa": ",".join(cpu_features(cpuinfo)) or "-",
        "machine_cores": str(cores),
        "machine_cpu_quota": "-" if quota is None else f"{quota:g}",
        "machine_threads": str(threads),
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return {"machine_fingerprint": digest, **fields}


def machine_fingerprint(threads: int) -> dict[str, str]:
    """This process's fingerprint (see `fingerprint`) for a measurement with `threads` threads."""
    return fingerprint(threads, read_cpuinfo(), available_cores(), cpu_quota())


def quantized_engine() -> str | None:
    """torch's int8 kernel backend (x86, fbgemm, qnnpack, onednn) where this process already loaded torch, else None.

    Read, never imported: importing torch to name it would add torch to an ONNX variant's peak memory.
    It follows from the torch build and the CPU flags, so it is shown beside the fingerprint, not hashed into it.
    """
    torch = sys.modules.get("torch")
    return torch.backends.quantized.engine if torch is not None else None
