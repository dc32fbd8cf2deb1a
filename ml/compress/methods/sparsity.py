"""Unstructured magnitude sparsity: zero the smallest weights of every encoder Linear layer.

Recorded honestly: the tensors keep their shapes, so dense CPU kernels run no faster and
the safetensors file is no smaller. It is here to compare against structured pruning.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from frugal.runtime.formats.torch import count_params, load_torch
from ml.compress.base import TORCH_FORMATS, CompressContext, MethodOptions, StepReport, TorchMethod, register

NO_SPEEDUP = "Unstructured sparsity brings no speedup on dense CPU kernels and no smaller file: the zeros are still stored and multiplied."


class SparsityOptions(MethodOptions):
    sparsity: float = Field(0.5, gt=0, lt=1, description="Share of each encoder Linear layer's weights set to zero (smallest |w| first).")


@register
class Sparsity(TorchMethod):
    name = "sparsity"
    accepts = TORCH_FORMATS
    produces = TORCH_FORMATS
    Options = SparsityOptions

    def build(self, src: Path, ctx: CompressContext):
        import torch

        manifest = self.source(src)
        model = load_torch(src).float()
        zeroed = total = 0
        with torch.no_grad():
            for module in model.base_model.encoder.modules():
                if isinstance(module, torch.nn.Linear):
                    k = int(module.weight.numel() * self.options.sparsity)
                    threshold = module.weight.abs().flatten().kthvalue(k).values if k else -1
                    module.weight[module.weight.abs() <= threshold] = 0.0
                    zeroed += int((module.weight == 0).sum())
                    total += module.weight.numel()
        report = StepReport(metrics={"weight_sparsity": zeroed / total}, notes=[NO_SPEEDUP])
        return model, manifest.derive(params=count_params(model), lineage=[*manifest.lineage, self.name]), report
