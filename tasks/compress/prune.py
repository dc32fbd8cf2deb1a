"""Structured pruning: remove whole attention heads and feed-forward neurons, then recover with a short fine-tune.

Importance is first-order Taylor (|weight x gradient| summed over a head's or a neuron's
weights, on training batches). The pruned Linear layers really shrink, so the saved model
is smaller and faster on dense kernels; the loader sizes each layer from its saved tensor.
BERT-style encoders only (layer.attention.self.query/key/value, intermediate/output.dense).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import Field

from frugal.modelio import count_params, load_torch
from frugal.runtime import Tokenize
from tasks.compress._common import labelled_train, require_format, train_config, train_with_teacher, training_report
from tasks.compress.base import CompressContext, MethodOptions, StepReport, TorchMethod, register

if TYPE_CHECKING:
    import torch


class PruneOptions(MethodOptions):
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


def layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    try:
        return list(model.base_model.encoder.layer)
    except AttributeError:
        raise ValueError(f"structured pruning supports BERT-style encoders, not {type(model).__name__}") from None


def keep_rows(linear: torch.nn.Linear, keep: torch.Tensor) -> torch.nn.Linear:
    """A Linear with only the output features `keep`."""
    import torch

    out = torch.nn.Linear(linear.in_features, len(keep), bias=linear.bias is not None)
    out.weight.data = linear.weight.data[keep].clone()
    if linear.bias is not None:
        out.bias.data = linear.bias.data[keep].clone()
    return out


def keep_cols(linear: torch.nn.Linear, keep: torch.Tensor) -> torch.nn.Linear:
    """A Linear reading only the input features `keep`."""
    import torch

    out = torch.nn.Linear(len(keep), linear.out_features, bias=linear.bias is not None)
    out.weight.data = linear.weight.data[:, keep].clone()
    if linear.bias is not None:
        out.bias.data = linear.bias.data.clone()
    return out


def head_dim(model: torch.nn.Module) -> int:
    return model.config.hidden_size // model.config.num_attention_heads


def taylor_scores(model: torch.nn.Module, tokenize: Tokenize, train_df: pd.DataFrame, labels: list[str], batches: int, batch_size: int):
    """Per layer: (score of each head, score of each FFN neuron)."""
    import torch

    d = head_dim(model)
    model.eval()
    label_ids = np.array(train_df["label"].map({label: i for i, label in enumerate(labels)}), dtype=np.int64)
    sums = [(0.0, 0.0) for _ in layers(model)]
    for b in range(min(batches, math.ceil(len(train_df) / batch_size))):
        rows = slice(b * batch_size, (b + 1) * batch_size)
        batch = {k: torch.from_numpy(v) for k, v in tokenize(list(train_df["text"][rows])).items()}
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(**batch).logits, torch.from_numpy(label_ids[rows])).backward()
        for i, layer in enumerate(layers(model)):
            att, ffn_in, ffn_out = layer.attention.self, layer.intermediate.dense, layer.output.dense
            per_row = sum((m.weight * m.weight.grad).abs().sum(1) for m in (att.query, att.key, att.value))
            per_row = per_row + (layer.attention.output.dense.weight * layer.attention.output.dense.weight.grad).abs().sum(0)
            neurons = (ffn_in.weight * ffn_in.weight.grad).abs().sum(1) + (ffn_out.weight * ffn_out.weight.grad).abs().sum(0)
            heads, ffn = sums[i]
            sums[i] = (heads + per_row.detach().view(-1, d).sum(1), ffn + neurons.detach())
    model.zero_grad()
    return sums


def prune_heads(layer: torch.nn.Module, keep_heads: torch.Tensor, d: int) -> None:
    import torch

    rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep_heads.tolist()])
    att = layer.attention.self
    att.query, att.key, att.value = keep_rows(att.query, rows), keep_rows(att.key, rows), keep_rows(att.value, rows)
    att.num_attention_heads, att.all_head_size = len(keep_heads), len(rows)
    layer.attention.output.dense = keep_cols(layer.attention.output.dense, rows)


def prune_ffn(layer: torch.nn.Module, keep: torch.Tensor) -> None:
    layer.intermediate.dense = keep_rows(layer.intermediate.dense, keep)
    layer.output.dense = keep_cols(layer.output.dense, keep)


def top(scores: torch.Tensor, fraction_removed: float) -> torch.Tensor:
    """Indices of the highest scores, keeping at least one, in their original order."""
    keep = max(1, round(len(scores) * (1 - fraction_removed)))
    return scores.topk(keep).indices.sort().values


@register
class Prune(TorchMethod):
    name = "prune"
    Options = PruneOptions
    heavy = True

    def build(self, src: Path, ctx: CompressContext):
        opts: PruneOptions = self.options
        manifest = require_format(src, "hf", self.name)
        teacher = load_torch(src).float()
        model = copy.deepcopy(teacher)
        train_df = labelled_train(ctx)
        scores = taylor_scores(
            model, Tokenize(src, manifest.max_length), train_df, ctx.labels, opts.importance_batches, ctx.train.batch_size
        )
        before = count_params(model)
        for layer, (heads, neurons) in zip(layers(model), scores, strict=True):
            prune_heads(layer, top(heads, opts.heads_fraction), head_dim(model))
            prune_ffn(layer, top(neurons, opts.ffn_fraction))
        params = {"heads_per_layer": [layer.attention.self.num_attention_heads for layer in layers(model)],
                  "ffn_per_layer": [layer.intermediate.dense.out_features for layer in layers(model)]}  # fmt: skip
        after = count_params(model)
        report = StepReport(params=params)
        if opts.recovery_epochs > 0:
            cfg = train_config(ctx, epochs=opts.recovery_epochs, learning_rate=opts.learning_rate)
            result = train_with_teacher(
                model, teacher, src, ctx, cfg, opts.temperature, opts.distill_alpha, desc="prune recovery", transfer_rows=opts.transfer_rows
            )
            report = training_report(result, after, **params)
        model.eval()
        report.metrics["params_removed_share"] = 1 - after / before
        return model, manifest.derive(params=after, lineage=[*manifest.lineage, self.name]), report
