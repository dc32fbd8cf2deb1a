"""Knowledge distillation into a shallower (optionally narrower) student initialised from the teacher's layers.

The student keeps every k-th teacher layer (the last one of each block, so the top layer
is always kept), optionally with a narrower feed-forward block (the teacher's neurons with
the largest weight norms), and optionally without a share of each layer's attention heads and
feed-forward neurons (the least important by the teacher's Taylor scores: ml/compress/importance.py),
so one training both shrinks and recovers it. It trains on the teacher's soft targets at a
temperature, mixed with the labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from frugal.runtime import Tokenize
from frugal.runtime.formats.torch import count_params, load_torch
from ml.compress.base import TORCH_FORMATS, CompressContext, TorchMethod, register
from ml.compress.common import TrainingOptions, labelled_train, train_config, train_with_teacher, training_report
from ml.compress.importance import cut, shape_params, taylor_scores
from ml.compress.structure import make_student, shape_suffix
from ml.compress.transfer import kept_layers
from ml.families import family_of


class DistillOptions(TrainingOptions):
    layers: int = Field(3, ge=1, description="Student depth; its layers start as evenly spaced teacher layers.")
    intermediate_size: int | None = Field(None, ge=1, description="Narrower feed-forward width for the student; null = the teacher's.")
    heads_fraction: float = Field(0.0, ge=0, lt=1, description="Share of attention heads removed in every student layer.")
    ffn_fraction: float = Field(0.0, ge=0, lt=1, description="Share of feed-forward neurons removed in every student layer.")
    importance_batches: int = Field(16, ge=1, description="Training batches the teacher's head/neuron scores are summed over.")
    transfer_rows: int = Field(
        0, ge=0, description="Extra train rows, labels hidden, that the student learns on from the teacher's soft targets."
    )
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the teacher's soft targets.")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the soft-target loss; 1 - alpha goes to the labels.")
    hidden_weight: float = Field(
        0.0, ge=0, description="Weight of a hidden-state loss (each student layer's pooled state against its teacher layer's); 0 = none."
    )
    epochs: float | None = Field(None, gt=0, description="Training epochs; null = the fine-tuning epochs.")
    learning_rate: float | None = Field(None, gt=0, description="Learning rate; null = the fine-tuning rate.")

    @model_validator(mode="after")
    def _one_ffn_cut(self) -> DistillOptions:
        if self.intermediate_size is not None and self.ffn_fraction:
            raise ValueError("give intermediate_size (a width, by weight norms) or ffn_fraction (a share, by importance), not both")
        return self


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
        tokenize = Tokenize(src, manifest.max_length)
        shape = self._cut(student, teacher, tokenize, ctx, notes) if opts.heads_fraction or opts.ffn_fraction else {}
        cfg = train_config(ctx, epochs=opts.epochs, learning_rate=opts.learning_rate, precision=opts.precision)
        result = train_with_teacher(
            student, teacher, src, ctx, cfg, opts.temperature, opts.alpha, desc=f"distill {opts.layers}L",
            transfer_rows=opts.transfer_rows, hidden_weight=opts.hidden_weight, give_up=opts.give_up(),
        )  # fmt: skip
        params = count_params(student)
        depth = len(family_of(teacher, self.name).layers(teacher))
        report = training_report(result, params, student_layers=kept_layers(depth, opts.layers), **shape)
        report.metrics["params_vs_teacher"] = params / count_params(teacher)
        report.notes.extend(notes)
        lineage = [*manifest.lineage, f"{self.name}-{opts.layers}L{shape_suffix(opts.heads_fraction, opts.ffn_fraction)}"]
        return student.eval(), manifest.derive(params=params, lineage=lineage), report

    def _cut(self, student: Any, teacher: Any, tokenize: Tokenize, ctx: CompressContext, notes: list[str]) -> dict[str, Any]:
        """Prune the student's heads and neurons by its teacher layers' importance, before it trains; its shape, for the run."""
        opts: DistillOptions = self.options
        family = family_of(teacher, self.name)
        scores = taylor_scores(teacher, family, tokenize, labelled_train(ctx), ctx.labels, opts.importance_batches, ctx.train.batch_size)
        mine = [scores[t] for t in kept_layers(len(scores), opts.layers)]
        notes.extend(sorted(cut(student, family, mine, opts.heads_fraction, opts.ffn_fraction)))
        return shape_params(student, family)
