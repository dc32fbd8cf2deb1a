"""Knowledge distillation into a shallower (optionally narrower) student initialised from the teacher's layers.

The student keeps every k-th teacher layer (the last one of each block, so the top layer
is always kept), optionally with a narrower feed-forward block (the teacher's neurons with
the largest weight norms). It trains on the teacher's soft targets at a temperature, mixed
with the labels.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from frugal.runtime.formats.torch import count_params, load_torch
from ml.compress.base import TORCH_FORMATS, CompressContext, TorchMethod, register
from ml.compress.common import TrainingOptions, train_config, train_with_teacher, training_report
from ml.compress.structure import make_student
from ml.families import family_of, kept_layers


class DistillOptions(TrainingOptions):
    layers: int = Field(3, ge=1, description="Student depth; its layers start as evenly spaced teacher layers.")
    intermediate_size: int | None = Field(None, ge=1, description="Narrower feed-forward width for the student; null = the teacher's.")
    transfer_rows: int = Field(
        0, ge=0, description="Extra train rows, labels hidden, that the student learns on from the teacher's soft targets."
    )
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the teacher's soft targets.")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the soft-target loss; 1 - alpha goes to the labels.")
    epochs: float | None = Field(None, gt=0, description="Training epochs; null = the fine-tuning epochs.")
    learning_rate: float | None = Field(None, gt=0, description="Learning rate; null = the fine-tuning rate.")


@register
class Distill(TorchMethod):
    name = "distill"
    accepts = TORCH_FORMATS
    produces = TORCH_FORMATS
    Options = DistillOptions
    heavy = True

    def build(self, src: Path, ctx: CompressContext):
        opts: DistillOptions = self.options
        manifest = self.source(src)
        teacher = load_torch(src).float()
        student, notes = make_student(teacher, opts.layers, opts.intermediate_size, self.name)
        cfg = train_config(ctx, epochs=opts.epochs, learning_rate=opts.learning_rate, precision=opts.precision)
        result = train_with_teacher(
            student, teacher, src, ctx, cfg, opts.temperature, opts.alpha, desc=f"distill {opts.layers}L", transfer_rows=opts.transfer_rows
        )
        params = count_params(student)
        depth = len(family_of(teacher, self.name).layers(teacher))
        report = training_report(result, params, student_layers=kept_layers(depth, opts.layers))
        report.metrics["params_vs_teacher"] = params / count_params(teacher)
        report.notes.extend(notes)
        return student.eval(), manifest.derive(params=params, lineage=[*manifest.lineage, f"{self.name}-{opts.layers}L"]), report
