"""Structured pruning: remove whole attention heads and feed-forward neurons, then recover with a short fine-tune.

Importance is first-order Taylor (|weight x gradient| summed over a head's or a neuron's
weights, on training batches). The pruned Linear layers really shrink, so the saved model
is smaller and faster on dense kernels; the loader sizes each layer from its saved tensor.
Every encoder family in ml/families.py (BERT, DistilBERT, RoBERTa, DeBERTa-v2,
ELECTRA, ModernBERT): the family says which Linears hold heads and neurons.
"""

from __future__ import annotations

import copy
from pathlib import Path

from pydantic import Field

from frugal.runtime import Tokenize
from frugal.runtime.formats.torch import count_params, load_torch
from ml.compress.base import TORCH_FORMATS, CompressContext, StepReport, TorchMethod, register
from ml.compress.common import TrainingOptions, labelled_train, train_config, train_with_teacher, training_report
from ml.compress.importance import cut, shape_params, taylor_scores
from ml.families import family_of


class PruneOptions(TrainingOptions):
    heads_fraction: float = Field(0.5, ge=0, lt=1, description="Share of attention heads removed in every layer.")
    ffn_fraction: float = Field(0.5, ge=0, lt=1, description="Share of feed-forward neurons removed in every layer.")
    importance_batches: int = Field(16, ge=1, description="Training batches the importance scores are summed over.")
    recovery_epochs: float = Field(1.0, ge=0, description="Epochs of recovery fine-tuning after pruning (0 = none).")
    learning_rate: float | None = Field(None, gt=0, description="Recovery learning rate; null = the fine-tuning rate.")
    distill_alpha: float = Field(0.5, ge=0, le=1, description="Weight of the unpruned model's soft targets in recovery.")
    transfer_rows: int = Field(
        0, ge=0, description="Extra train rows, labels hidden, that the student learns on from the teacher's soft targets."
    )
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the soft targets.")

    def trains(self) -> bool:
        return self.recovery_epochs > 0  # no recovery: nothing trains, so no precision to lack


@register
class Prune(TorchMethod):
    name = "prune"
    accepts = TORCH_FORMATS
    produces = TORCH_FORMATS
    Options = PruneOptions
    heavy = True

    def build(self, src: Path, ctx: CompressContext):
        opts: PruneOptions = self.options
        manifest = self.source(src)
        teacher = load_torch(src).float()
        family = family_of(teacher, self.name)
        model = copy.deepcopy(teacher)
        train_df = labelled_train(ctx)
        scores = taylor_scores(
            model, family, Tokenize(src, manifest.max_length), train_df, ctx.labels, opts.importance_batches, ctx.train.batch_size
        )
        before = count_params(model)
        notes = cut(model, family, scores, opts.heads_fraction, opts.ffn_fraction)
        params = shape_params(model, family)
        after = count_params(model)
        report = StepReport(params=params)
        if opts.recovery_epochs > 0:
            cfg = train_config(ctx, epochs=opts.recovery_epochs, learning_rate=opts.learning_rate, precision=opts.precision)
            result = train_with_teacher(
                model, teacher, src, ctx, cfg, opts.temperature, opts.distill_alpha, desc="prune recovery",
                transfer_rows=opts.transfer_rows, give_up=opts.give_up(),
            )  # fmt: skip
            report = training_report(result, after, **params)
        model.eval()
        report.metrics["params_removed_share"] = 1 - after / before
        report.notes.extend(sorted(notes))
        return model, manifest.derive(params=after, lineage=[*manifest.lineage, self.name]), report
