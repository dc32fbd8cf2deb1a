"""CPU naming and feature flags, the half-precision rules (serving and training) built on them, and the machine's
fingerprint, checked on given cpuinfo and cgroup files."""

from __future__ import annotations

from pathlib import Path

import pytest

from frugal import hardware
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


def cgroup(tmp_path: Path, membership: str, files: dict[str, str]) -> float | None:
    """cpu_quota over a made-up /proc/self/cgroup and /sys/fs/cgroup tree."""
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    (tmp_path / "self").write_text(membership)
    return hardware.cpu_quota(root, tmp_path / "self")


def test_the_cgroup_quota_is_the_tightest_on_the_process_path_v2(tmp_path: Path) -> None:
    files = {"cpu.max": "max 100000\n", "box/cpu.max": "400000 100000\n", "box/job/cpu.max": "150000 100000\n"}
    assert cgroup(tmp_path, "0::/box/job\n", files) == 1.5
    assert cgroup(tmp_path, "0::/box\n", files) == 4.0  # a sibling's tighter quota is not this process's


def test_the_cgroup_quota_of_cgroup_v1(tmp_path: Path) -> None:
    limited = {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"}
    assert cgroup(tmp_path, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n", limited) == 2.0
    unlimited = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert cgroup(tmp_path, "1:cpu:/\n", unlimited) is None


def test_no_cgroup_quota_reads_as_unlimited(tmp_path: Path) -> None:
    assert cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"}) is None
    assert cgroup(tmp_path, "0::/\n", {}) is None  # no cpu controller files at all
    assert hardware.cpu_quota(tmp_path, tmp_path / "no-proc") is None  # macOS: no /proc


def test_the_fingerprint_names_the_machine_and_hashes_what_a_speed_depends_on() -> None:
    here = hardware.fingerprint(4, SAPPHIRE_RAPIDS, cores=8, quota=None)
    assert here == hardware.fingerprint(4, SAPPHIRE_RAPIDS, cores=8, quota=None)  # stable: a hash, not a timestamp or a pid
    assert here["machine_cpu"] == "Intel(R) Xeon(R) Platinum 8488C" and here["machine_cores"] == "8"
    assert here["machine_isa"] == "avx512_vnni,avx_vnni,avx512_bf16,amx_bf16,amx_int8,avx512_fp16"
    assert here["machine_cpu_quota"] == "-" and here["machine_threads"] == "4"
    assert len(here["machine_fingerprint"]) == 12
    others = [
        hardware.fingerprint(4, SKYLAKE, cores=8, quota=None),  # another CPU
        hardware.fingerprint(4, SAPPHIRE_RAPIDS.replace(" amx_int8", ""), cores=8, quota=None),  # the same CPU, a flag hidden by a VM
        hardware.fingerprint(4, SAPPHIRE_RAPIDS, cores=2, quota=None),  # fewer cores in the affinity mask
        hardware.fingerprint(4, SAPPHIRE_RAPIDS, cores=8, quota=2.0),  # a container's quota
        hardware.fingerprint(2, SAPPHIRE_RAPIDS, cores=8, quota=None),  # measured with fewer threads
    ]
    assert len({here["machine_fingerprint"], *(o["machine_fingerprint"] for o in others)}) == 6
    assert hardware.fingerprint(4, SKYLAKE, cores=8, quota=None)["machine_isa"] == "-"


def test_this_machines_fingerprint_and_the_quantized_engine_only_where_torch_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    here = hardware.machine_fingerprint(1)
    assert here == hardware.machine_fingerprint(1) and here != hardware.machine_fingerprint(2)
    assert int(here["machine_cores"]) >= 1
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert hardware.quantized_engine() is None
