"""int8, raced: build every int8 candidate this machine can run, keep the fastest that keeps the quality.

Candidates: ONNX Runtime dynamic (the fused graph), ONNX Runtime static QDQ and OpenVINO + NNCF static
(ranges from `calibration_texts` train texts; ml/compress/quantize.py). Each is timed the way evaluation
measures (length-ordered batches of evaluate.batch_size, evaluate.threads, median of interleaved passes on
val texts) and scored on the whole val split; the fastest whose val macro-F1 is within select.tolerance of
the source's is kept. Which runtime wins depends on the CPU's int8 kernels (VNNI, AMX): measuring beats
guessing. Every candidate's figures are recorded on the step run, and `pick` builds one candidate without
racing: `frugal reproduce` sets it to the recorded winner, so a rerun keeps the same graph.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from frugal.errors import SkipVariant
from frugal.runtime import load_predictor
from frugal.runtime.manifest import Manifest
from ml.compress.base import TORCH_FORMATS, CompressContext, Method, MethodOptions, StepReport, register
from ml.compress.common import calibration_texts, val_split
from ml.compress.onnx import race
from ml.compress.quantize import openvino_folder, ort_folder
from ml.quality import quality

Candidate = Literal["onnx-dynamic", "onnx-static", "openvino-static"]
CANDIDATES: tuple[Candidate, ...] = ("onnx-dynamic", "onnx-static", "openvino-static")
MIN_CALIBRATION = 32  # fewer train texts than this give static ranges from noise: the static candidates are skipped


class Int8Options(MethodOptions):
    candidates: list[Candidate] = Field(list(CANDIDATES), min_length=1, description="The int8 candidates to build and race.")
    pick: Literal["auto", "onnx-dynamic", "onnx-static", "openvino-static"] = Field(
        "auto", description="auto: race the candidates; a name: build only that one (frugal reproduce sets the recorded winner)."
    )
    calibration_texts: int = Field(300, ge=1, description="Train texts the static candidates set their activation ranges on.")
    timing_texts: int = Field(512, ge=32, description="Val texts each candidate is timed on (3 interleaved passes).")


def build(name: Candidate, src: Path, dst: Path, manifest: Manifest, calibration: list[str]) -> None:
    """One candidate's model folder; SkipVariant where this machine or the data cannot make it."""
    import importlib.util

    static = name.endswith("static")
    if static and len(calibration) < MIN_CALIBRATION:
        raise SkipVariant(f"{name}: {len(calibration)} calibration texts, fewer than the {MIN_CALIBRATION} static int8 needs")
    if name == "openvino-static":
        if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None:
            raise SkipVariant(f"{name}: openvino and nncf are not installed")
        openvino_folder(src, dst, manifest, "int8", calibration)
    else:
        ort_folder(src, dst, manifest, "static" if static else "dynamic", calibration)


def val_macro_f1(folder: Path, texts: list[str], truth: list[str], ctx: CompressContext) -> float:
    predictor = load_predictor(folder, threads=ctx.serve_threads)
    return quality(truth, predictor.predict(texts, ctx.serve_batch_size), ctx.labels)["macro_f1"]


@register
class Int8(Method):
    name = "int8"
    accepts = TORCH_FORMATS
    produces = ("onnx", "openvino")
    Options = Int8Options

    def unsupported(self, serve_device: str) -> str | None:
        return None if serve_device == "cpu" else f"int8 is raced for CPU serving; this run serves on {serve_device}"

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        opts: Int8Options = self.options
        manifest = self.source(src)
        names = [opts.pick] if opts.pick != "auto" else list(dict.fromkeys(opts.candidates))
        calibration = calibration_texts(ctx, opts.calibration_texts)
        report = StepReport(params={"candidates": ",".join(names), "raced": opts.pick == "auto"})
        with tempfile.TemporaryDirectory() as tmp:
            built = {}
            for name in names:
                try:
                    build(name, src, Path(tmp) / name, manifest, calibration)
                    built[name] = Path(tmp) / name
                except SkipVariant as skip:
                    report.notes.append(f"candidate {skip.reason}")
            if not built:
                raise SkipVariant("no int8 candidate could be built here: " + "; ".join(report.notes))
            winner = self._race(built, src, ctx, opts, report) if opts.pick == "auto" else opts.pick
            shutil.copytree(built[winner], dst, dirs_exist_ok=True)
        report.params["winner"] = winner
        return report

    @staticmethod
    def _race(built: dict[str, Path], src: Path, ctx: CompressContext, opts: Int8Options, report: StepReport) -> str:
        """The fastest candidate whose val macro-F1 is within select.tolerance of the source's; figures into `report`."""
        val = val_split(ctx)
        texts, truth = list(val["text"]), list(val["label"])
        floor = val_macro_f1(src, texts, truth, ctx) - ctx.tolerance
        f1 = {name: val_macro_f1(folder, texts, truth, ctx) for name, folder in built.items()}
        speeds = dict(zip(built, race(list(built.values()), texts[: opts.timing_texts], ctx.serve_threads), strict=True))
        for name in built:
            report.metrics |= {f"candidate_{name}_per_s": speeds[name], f"candidate_{name}_val_macro_f1": f1[name]}
        report.metrics["val_macro_f1_floor"] = floor
        kept = [name for name in built if f1[name] >= floor]
        if not kept:
            figures = ", ".join(f"{name} {f1[name]:.4f}" for name in built)
            raise SkipVariant(f"no int8 candidate keeps val macro-F1 >= {floor:.4f} (source - select.tolerance): {figures}")
        winner = max(kept, key=lambda name: speeds[name])
        others = ", ".join(f"{name} {speeds[name]:.0f}" for name in built if name != winner)
        report.notes.append(f"kept {winner}: {speeds[winner]:.0f} texts/s here" + (f" (vs {others})" if others else ""))
        return winner
