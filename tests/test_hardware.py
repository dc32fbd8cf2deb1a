"""CPU naming and feature flags, and the half-precision rules (serving and training) built on them, checked on given cpuinfo."""

from __future__ import annotations

from pathlib import Path

import pytest

from frugal.hardware import FEATURES, cpu_features, cpu_flags, cpu_name, read_cpuinfo, training_precision_unsupported
from ml.compress.methods.half import unsupported

# Two cores of a Sapphire Rapids box, trimmed: every core repeats the block.
SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16 avx_vnni

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16 avx_vnni
"""
SKYLAKE = """\
processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw
"""


def cpuinfo_with(flags: set[str]) -> str:
    """A one-core cpuinfo reporting `flags`."""
    return f"processor\t: 0\nflags\t\t: fpu sse2 {' '.join(sorted(flags))}\n"


def test_cpu_name_is_the_model_name_line() -> None:
    assert cpu_name(SAPPHIRE_RAPIDS) == "Intel(R) Xeon(R) Platinum 8488C"
    assert cpu_name(SKYLAKE) == "Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz"


def test_cpu_name_without_cpuinfo_falls_back_to_the_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.processor", lambda: "")  # what Linux returns
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert cpu_name("") == "aarch64"
    assert cpu_name("processor\t: 0\nflags\t: fp asimd\n") == "aarch64"  # ARM cpuinfo has no model name line


def test_cpu_features_are_the_listed_flags_present_in_listed_order() -> None:
    assert cpu_features(SAPPHIRE_RAPIDS) == ["avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16"]
    assert cpu_features(SKYLAKE) == []
    assert cpu_features("") == []
    assert "avx512bw" in cpu_flags(SKYLAKE) and "amx_tile" not in FEATURES


def test_a_flag_is_matched_whole_not_as_a_prefix() -> None:
    # avx512_bf16_extra is not avx512_bf16; avx512_vnni must not be read off "avx512_vnnix"
    assert cpu_features("flags\t: avx512_bf16_extra avx512_vnnix") == []


def test_missing_cpuinfo_reads_as_empty(tmp_path: Path) -> None:
    assert read_cpuinfo(str(tmp_path / "nope")) == ""


@pytest.mark.parametrize(
    ("dtype", "flags", "missing"),
    [
        ("float16", set(), "avx512_fp16 nor amx_fp16"),
        ("float16", {"avx512_bf16", "amx_bf16"}, "avx512_fp16 nor amx_fp16"),  # bf16 support does not make fp16 fast
        ("bfloat16", set(), "avx512_bf16 nor amx_bf16"),
        ("bfloat16", {"avx512_fp16", "avx512f"}, "avx512_bf16 nor amx_bf16"),
    ],
)
def test_half_on_a_cpu_without_its_flags_is_skipped_naming_them(dtype: str, flags: set[str], missing: str) -> None:
    reason = unsupported(dtype, "cpu", cpuinfo_with(flags))
    assert reason is not None and dtype in reason and missing in reason


@pytest.mark.parametrize(
    ("dtype", "flags"),
    [("float16", {"avx512_fp16"}), ("float16", {"amx_fp16"}), ("bfloat16", {"avx512_bf16"}), ("bfloat16", {"amx_bf16"})],
)
def test_half_on_a_cpu_with_either_flag_runs(dtype: str, flags: set[str]) -> None:
    assert unsupported(dtype, "cpu", cpuinfo_with(flags)) is None


def test_half_reads_the_flags_of_a_real_cpuinfo() -> None:
    assert unsupported("float16", "cpu", SAPPHIRE_RAPIDS) is None
    assert unsupported("bfloat16", "cpu", SKYLAKE) is not None


def test_fp32_training_runs_on_any_cpu() -> None:
    assert training_precision_unsupported("fp32", "cpu", SKYLAKE) is None
    assert training_precision_unsupported("fp32", "cpu", "") is None  # no cpuinfo at all (macOS, a sandbox)


def test_bf16_training_needs_a_cpu_with_bf16_kernels() -> None:
    assert training_precision_unsupported("bf16", "cpu", SAPPHIRE_RAPIDS) is None
    assert training_precision_unsupported("bf16", "cpu", cpuinfo_with({"amx_bf16"})) is None
    reason = training_precision_unsupported("bf16", "cpu", SKYLAKE)
    assert reason is not None and "bfloat16" in reason and "avx512_bf16 nor amx_bf16" in reason


def test_fp16_training_is_refused_on_every_cpu_even_one_with_fp16_kernels() -> None:
    # Sapphire Rapids has avx512_fp16 and serves fp16 (above), but fp16 training needs CUDA's gradient scaler.
    reason = training_precision_unsupported("fp16", "cpu", SAPPHIRE_RAPIDS)
    assert reason is not None and "CUDA only" in reason
