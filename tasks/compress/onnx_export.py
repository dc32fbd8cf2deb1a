"""Export a PyTorch model to ONNX, with ONNX Runtime's transformer graph fusions, checked against PyTorch."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from frugal.modelio import Manifest, copy_tokenizer, load_torch
from frugal.runtime import Tokenize
from tasks.compress._common import require_format, val_split
from tasks.compress.base import CompressContext, Method, MethodOptions, StepReport, register

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# fp32 export agrees with PyTorch to float rounding; anything larger means a broken graph.
FP32_TOLERANCE = 1e-3


class OnnxExportOptions(MethodOptions):
    opset: int = Field(17, ge=14, description="ONNX opset of the exported graph.")
    optimize: bool = Field(True, description="Fuse attention, LayerNorm and GELU (onnxruntime.transformers optimizer).")
    check_texts: int = Field(64, ge=1, description="Validation texts on which ONNX and PyTorch outputs are compared.")


def export(src: Path, onnx_path: Path, opset: int, optimize: bool) -> dict[str, int]:
    """Write src's model to `onnx_path`; return the counts of fused operators."""
    import torch

    model = load_torch(src).float()
    model.set_attn_implementation("eager")  # plain MatMul/Softmax: the pattern ONNX Runtime's fusions recognise

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    sample = Tokenize(src, Manifest.load(src).max_length)(["an example text to trace", "a second one"])
    args = tuple(torch.from_numpy(sample[name]) for name in INPUTS)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {"logits": {0: "batch"}}
    raw = onnx_path.with_name("raw.onnx")
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        Logits().eval(), args, str(raw), input_names=list(INPUTS), output_names=["logits"],
        dynamic_axes=axes, opset_version=opset, dynamo=False,
    )  # fmt: skip
    if not optimize:
        raw.rename(onnx_path)
        return {}
    fused = _optimize(raw, onnx_path, model)
    raw.unlink()
    return fused


def _optimize(raw: Path, out: Path, model: Any) -> dict[str, int]:
    from onnxruntime.transformers import optimizer

    head_dim = model.config.hidden_size // model.config.num_attention_heads
    try:
        heads = {layer.attention.self.query.out_features // head_dim for layer in model.base_model.encoder.layer}
    except AttributeError:  # not a BERT-style encoder: let the optimizer detect what it can
        heads = set()
    # Attention fusion needs one head count for all layers; after uneven pruning it is left unfused.
    num_heads = heads.pop() if len(heads) == 1 else 0
    hidden = num_heads * head_dim  # the fusion's "hidden size" is the q/k/v width, which pruning narrows
    optimized = optimizer.optimize_model(str(raw), model_type="bert", num_heads=num_heads, hidden_size=hidden)
    optimized.save_model_to_file(str(out))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def max_abs_diff(src: Path, onnx_dir: Path, texts: list[str]) -> float:
    """Largest logit difference between the PyTorch source and the ONNX model on `texts`."""
    import torch

    from frugal.runtime import load_predictor

    predictor = load_predictor(onnx_dir, threads=None)
    batch = predictor.tokenize(texts)
    with torch.inference_mode():
        reference = load_torch(src).float()(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    return float(np.abs(predictor.logits(batch) - reference).max())


def finish(src: Path, dst: Path, manifest: Manifest) -> None:
    """Manifest, tokenizer and config next to model.onnx, so the folder serves on its own."""
    manifest.save(dst)
    copy_tokenizer(src, dst)
    if (src / "config.json").is_file():
        shutil.copy(src / "config.json", dst / "config.json")


@register
class OnnxExport(Method):
    name = "onnx_export"
    Options = OnnxExportOptions

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        opts: OnnxExportOptions = self.options
        manifest = require_format(src, "hf", self.name)
        fused = export(src, dst / "model.onnx", opts.opset, opts.optimize)
        finish(src, dst, manifest.derive(format="onnx", lineage=[*manifest.lineage, self.name]))
        texts = list(val_split(ctx)["text"][: opts.check_texts])
        diff = max_abs_diff(src, dst, texts)
        if diff > FP32_TOLERANCE:
            raise RuntimeError(f"ONNX logits differ from PyTorch by {diff:.2e} (> {FP32_TOLERANCE}); the export is wrong")
        return StepReport(params={f"fused_{k}": v for k, v in fused.items()}, metrics={"onnx_max_abs_diff": diff})
