"""Structured pruning: remove whole attention heads and feed-forward neurons, then recover with a short fine-tune.

Importance is first-order Taylor (|weight x gradient| summed over a head's or a neuron's
weights, on training batches). The pruned Linear layers really shrink, so the saved model
is smaller and faster on dense kernels; the loader sizes each layer from its saved tensor.
Every encoder family in tasks/compress/_families.py (BERT, DistilBERT, RoBERTa, DeBERTa-v2,
ELECTRA, ModernBERT): the family says which Linears hold heads and neurons.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from pydantic import Field

from frugal.runtime import Tokenize
from frugal.runtime.formats.torch import count_params, load_torch
from ml.compress.base import TORCH_FORMATS, CompressContext, StepReport, TorchMethod, register
from ml.compress.common import TrainingOptions, labelled_train, train_config, train_with_teacher, training_report
from ml.compress.structure import per_unit, prune_ffn, prune_heads, sync_ffn_config, top
from ml.data import label_ids
from ml.families import Family, Proj, family_of

if TYPE_CHECKING:
    import torch


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


def _taylor(linear: torch.nn.Linear, dim: int) -> torch.Tensor:
    """|w x dL/dw| summed along `dim` (1: per output feature, 0: per input feature)."""
    return (linear.weight * linear.weight.grad).abs().sum(dim).detach()


def unit_scores(layer: torch.nn.Module, projs: tuple[Proj, ...], out_path: str, family: Family, width: int) -> torch.Tensor:
    """One layer's Taylor score per unit: its rows in every projection plus its columns in the Linear reading it back."""
    score = sum(per_unit(_taylor(linear, 1), width, proj.blocks) for proj, linear in family.projections(layer, projs))
    return score + per_unit(_taylor(layer.get_submodule(out_path), 0), width)


def taylor_scores(
    model: torch.nn.Module, family: Family, tokenize: Tokenize, train_df: pd.DataFrame, labels: list[str], batches: int, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: (score of each head, score of each FFN neuron)."""
    import torch

    d = family.head_dim(model)
    model.eval()
    row_labels = label_ids(train_df, labels)
    sums: list[tuple[torch.Tensor, torch.Tensor]] = []
    for b in range(min(batches, math.ceil(len(train_df) / batch_size))):
        rows = slice(b * batch_size, (b + 1) * batch_size)
        batch = {k: torch.from_numpy(v) for k, v in tokenize(list(train_df["text"][rows])).items()}
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(**batch).logits, torch.from_numpy(row_labels[rows])).backward()
        scores = [
            (unit_scores(layer, family.heads_in, family.heads_out, family, d), unit_scores(layer, family.ffn_in, family.ffn_out, family, 1))
            for layer in family.layers(model)
        ]
        sums = scores if not sums else [(h0 + h1, f0 + f1) for (h0, f0), (h1, f1) in zip(sums, scores, strict=True)]
    model.zero_grad()
    return sums


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
        notes = set()
        for layer, (heads, neurons) in zip(family.layers(model), scores, strict=True):
            wanted = max(1, round(len(heads) * (1 - opts.heads_fraction)))
            kept = family.allowed_heads(model, wanted)
            if kept != wanted:
                notes.add(f"{family.name} keeps {kept} of {len(heads)} heads per layer, not {wanted}: {family.heads_constraint}.")
            prune_heads(model, family, layer, top(heads, count=kept))
            prune_ffn(family, layer, top(neurons, opts.ffn_fraction))
        sync_ffn_config(model, family)
        d = family.head_dim(model)
        params = {"family": family.name, "heads_per_layer": [family.heads(layer, d) for layer in family.layers(model)],
                  "ffn_per_layer": [family.ffn_width(layer) for layer in family.layers(model)]}  # fmt: skip
        after = count_params(model)
        report = StepReport(params=params)
        if opts.recovery_epochs > 0:
            cfg = train_config(ctx, epochs=opts.recovery_epochs, learning_rate=opts.learning_rate, precision=opts.precision)
            result = train_with_teacher(
                model, teacher, src, ctx, cfg, opts.temperature, opts.distill_alpha, desc="prune recovery", transfer_rows=opts.transfer_rows
            )
            report = training_report(result, after, **params)
        model.eval()
        report.metrics["params_removed_share"] = 1 - after / before
        report.notes.extend(sorted(notes))
        return model, manifest.derive(params=after, lineage=[*manifest.lineage, self.name]), report
