"""4-bit weight-only quantization (bitsandbytes NF4) for GPU serving; recorded as skipped elsewhere."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from frugal.errors import SkipVariant
from frugal.runtime.manifest import copy_tokenizer
from ml.compress.base import CompressContext, Method, MethodOptions, StepReport, register


class Nf4Options(MethodOptions):
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit/weight).")
    compute_dtype: str = Field("bfloat16", description="dtype the 4-bit weights are dequantized to for matmuls.")


@register
class Nf4(Method):
    name = "nf4"
    produces = ("hf-nf4",)
    Options = Nf4Options
    heavy = True

    def unsupported(self, serve_device: str) -> str | None:
        import importlib.util

        import torch

        if serve_device != "cuda" or not torch.cuda.is_available():
            return f"4-bit NF4 (bitsandbytes) runs only on CUDA; this run serves on {serve_device}"
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed (pip install -e '.[gpu]')"
        return None

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        import torch

        reason = self.unsupported(ctx.serve_device)
        if reason:
            raise SkipVariant(reason)
        from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

        manifest = self.source(src)
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=self.options.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, self.options.compute_dtype),
        )  # fmt: skip
        model = AutoModelForSequenceClassification.from_pretrained(src, quantization_config=config, device_map="cuda")
        model.save_pretrained(dst)
        manifest.derive(format="hf-nf4", dtype="nf4", lineage=[*manifest.lineage, self.name]).save(dst)
        copy_tokenizer(src, dst)
        return StepReport()
