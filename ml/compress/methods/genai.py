"""ONNX Runtime GenAI: a causal LM as one ONNX graph (fp32, or weight-only int8 / int4 ``MatMulNBits``) decoded by
onnxruntime-genai's C++ loop (format ``causal-ort``, frugal/runtime/formats/genai.py).

The conversion is onnxruntime-genai's own model builder, run as its documented command in a child process: the builder
puts its folder on ``sys.path`` (top-level ``builders``, ``quantization``, ``loaders`` modules), prints a page per model
and holds the whole model in memory while it works; none of that belongs in the pipeline's process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from frugal.errors import ModelError, SkipVariant
from frugal.runtime.formats.genai import GENAI_CONFIG
from frugal.runtime.manifest import TOKENIZER_DIR, copy_tokenizer
from ml.compress.base import CompressContext, Method, MethodOptions, StepReport, register

DTYPES = {"fp32": "float32", "int8": "int8", "int4": "int4"}  # the manifest's dtype: what the weights are stored as


class GenAIOptions(MethodOptions):
    precision: Literal["fp32", "int8", "int4"] = Field(
        "int4", description="fp32: the same weights in ONNX Runtime GenAI's decode loop; int8 / int4: weight-only MatMulNBits."
    )
    int4_block_size: Literal[16, 32, 64, 128, 256] = Field(
        32, description="int4 / int8: weights per quantization scale (smaller: closer to fp32, larger file)."
    )
    int4_accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4, description="int4 / int8: the MatMulNBits compute type (4: int8 activations, the fast CPU kernels; 1: fp32; 0: unset)."
    )


@register
class GenAI(Method):
    name = "genai"
    accepts = ("causal-hf",)
    produces = ("causal-ort",)
    Options = GenAIOptions

    def unsupported(self, serve_device: str) -> str | None:
        if importlib.util.find_spec("onnxruntime_genai") is None:
            return "onnxruntime-genai is not installed (pip install -c requirements/lock.txt -e .)"
        if serve_device != "cpu":
            return f"causal-ort graphs are built for the CPU execution provider here; this run serves on {serve_device}"
        return None

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        opts: GenAIOptions = self.options
        if reason := self.unsupported(ctx.serve_device):
            raise SkipVariant(reason)
        manifest = self.source(src)
        ctx.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ctx.scratch, prefix="genai-") as tmp:
            stage = staged_input(src, Path(tmp) / "input")
            build(stage, dst, opts, Path(tmp) / "cache", ctx.serve_threads)
        set_eos(dst, manifest.notes.get("eos_token_ids", []))
        copy_tokenizer(src, dst)
        notes = manifest.notes | {"precision": opts.precision}
        if opts.precision != "fp32":
            notes |= {"block_size": opts.int4_block_size, "accuracy_level": opts.int4_accuracy_level}
        lineage = [*manifest.lineage, f"{self.name}-{opts.precision}"]
        manifest.derive(format="causal-ort", dtype=DTYPES[opts.precision], lineage=lineage, notes=notes).save(dst)
        return StepReport(params={"precision": opts.precision, **{k: notes[k] for k in ("block_size", "accuracy_level") if k in notes}})


def staged_input(src: Path, stage: Path) -> Path:
    """The builder reads one Hugging Face folder: the model's files and, beside them, its tokenizer's (links, no copies)."""
    stage.mkdir(parents=True)
    files = [p for p in src.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors") and p.name != "frugal.json"]
    for path in [*files, *(p for p in (src / TOKENIZER_DIR).iterdir() if p.is_file())]:
        (stage / path.name).symlink_to(path.resolve())
    return stage


def build(stage: Path, dst: Path, opts: GenAIOptions, cache: Path, threads: int) -> None:
    """Run onnxruntime-genai's model builder for the CPU; a ModelError with its last lines when it refuses the model."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(stage), "-o", str(dst), "-p", opts.precision,
               "-e", "cpu", "-c", str(cache)]  # fmt: skip
    if opts.precision != "fp32":
        command += ["--extra_options", f"block_size={opts.int4_block_size}", f"accuracy_level={opts.int4_accuracy_level}"]
    env = {"OMP_NUM_THREADS": str(threads)}  # the builder's torch quantizes on as many threads as serving has, not all cores
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise ModelError(
            f"onnxruntime-genai's model builder could not convert {stage} to {opts.precision}:\n{tail}",
            "Use an architecture the builder supports (Llama, Mistral, Qwen, Phi, Gemma, SmolLM, ...) or drop the genai variant.",
        )


def set_eos(dst: Path, eos_ids: list[int]) -> None:
    """Stop onnxruntime-genai's search at the tokens the manifest names: the same ends as every other format of the model."""
    if not eos_ids:
        return
    path = dst / GENAI_CONFIG
    config = json.loads(path.read_text())
    config["model"]["eos_token_id"] = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    path.write_text(json.dumps(config, indent=4))
