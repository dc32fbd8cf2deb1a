"""Knowledge distillation into a shallower (optionally narrower) student initialised from the teacher's layers.

The student keeps every k-th teacher layer (the last one of each block, so the top layer
is always kept), optionally with a narrower feed-forward block (the teacher's neurons with
the largest weight norms). It trains on the teacher's soft targets at a temperature, mixed
with the labels.
"""

from __future__ import annotations

import copy
from pathlib import Path

from pydantic import Field

from frugal.modelio import count_params, load_torch
from tasks.compress._common import require_format, train_config, train_with_teacher, training_report
from tasks.compress.base import CompressContext, MethodOptions, TorchMethod, register
from tasks.compress.prune import layers, prune_ffn, top


class DistillOptions(MethodOptions):
    layers: int = Field(3, ge=1, description="Student depth; its layers start as evenly spaced teacher layers.")
    intermediate_size: int | None = Field(None, ge=1, description="Narrower feed-forward width for the student; null = the teacher's.")
    transfer_rows: int = Field(
        0, ge=0, description="Extra train rows, labels hidden, that the student learns on from the teacher's soft targets."
    )
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the teacher's soft targets.")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the soft-target loss; 1 - alpha goes to the labels.")
    epochs: float | None = Field(None, gt=0, description="Training epochs; null = the fine-tuning epochs.")
    learning_rate: float | None = Field(None, gt=0, description="Learning rate; null = the fine-tuning rate.")


def kept_layers(teacher_depth: int, student_depth: int) -> list[int]:
    """Evenly spaced teacher layers, the last of each block: 6 -> 3 keeps [1, 3, 5]."""
    if student_depth > teacher_depth:
        raise ValueError(f"a {student_depth}-layer student cannot come from a {teacher_depth}-layer teacher")
    return [round((i + 1) * teacher_depth / student_depth) - 1 for i in range(student_depth)]


def make_student(teacher, depth: int, intermediate_size: int | None):  # -> torch.nn.Module
    import torch

    student = copy.deepcopy(teacher)
    keep = kept_layers(len(layers(teacher)), depth)
    student.base_model.encoder.layer = torch.nn.ModuleList([student.base_model.encoder.layer[i] for i in keep])
    student.config.num_hidden_layers = depth
    if intermediate_size is not None:
        for layer in layers(student):
            prune_ffn(
                layer, top(layer.intermediate.dense.weight.norm(dim=1), 1 - intermediate_size / layer.intermediate.dense.out_features)
            )
    return student


@register
class Distill(TorchMethod):
    name = "distill"
    Options = DistillOptions
    heavy = True

    def build(self, src: Path, ctx: CompressContext):
        opts: DistillOptions = self.options
        manifest = require_format(src, "hf", self.name)
        teacher = load_torch(src).float()
        student = make_student(teacher, opts.layers, opts.intermediate_size)
        cfg = train_config(ctx, epochs=opts.epochs, learning_rate=opts.learning_rate)
        result = train_with_teacher(
            student, teacher, src, ctx, cfg, opts.temperature, opts.alpha, desc=f"distill {opts.layers}L", transfer_rows=opts.transfer_rows
        )
        params = count_params(student)
        report = training_report(result, params, student_layers=kept_layers(len(layers(teacher)), opts.layers))
        report.metrics["params_vs_teacher"] = params / count_params(teacher)
        return student.eval(), manifest.derive(params=params, lineage=[*manifest.lineage, f"{self.name}-{opts.layers}L"]), report
