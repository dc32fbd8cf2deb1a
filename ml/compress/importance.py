"""Which attention heads and feed-forward neurons matter, and cutting a model down to the ones that do.

Importance is first-order Taylor (|weight x gradient| summed over a head's or a neuron's weights, on
training batches): `prune` scores the model it prunes; `distill` with head/FFN fractions scores the
teacher and cuts each kept layer of the student by its teacher layer's scores, so one training both
shrinks and recovers it. A pretrained student of another model (`distill_student`) has no task gradient
worth reading before it trains (its classifier is random), so it is cut by weight magnitude (|weight|).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd

from frugal.runtime import Tokenize
from ml.compress.structure import per_unit, prune_ffn, prune_heads, sync_ffn_config, top
from ml.data import label_ids
from ml.families import Family, Proj

if TYPE_CHECKING:
    import torch

Scores = list[tuple["torch.Tensor", "torch.Tensor"]]  # per layer: (score of each head, score of each FFN neuron)


def _taylor(linear: torch.nn.Linear, dim: int) -> torch.Tensor:
    """|w x dL/dw| summed along `dim` (1: per output feature, 0: per input feature)."""
    return (linear.weight * linear.weight.grad).abs().sum(dim).detach()


def _magnitude(linear: torch.nn.Linear, dim: int) -> torch.Tensor:
    """|w| summed along `dim`."""
    return linear.weight.abs().sum(dim).detach()


def unit_scores(
    layer: torch.nn.Module, projs: tuple[Proj, ...], out_path: str, family: Family, width: int, score: Callable = _taylor
) -> torch.Tensor:  # fmt: skip
    """One layer's score per unit: its rows in every projection plus its columns in the Linear reading it back."""
    rows = sum(per_unit(score(linear, 1), width, proj.blocks) for proj, linear in family.projections(layer, projs))
    return rows + per_unit(score(layer.get_submodule(out_path), 0), width)


def magnitude_scores(model: torch.nn.Module, family: Family) -> Scores:
    """Per layer of `model`: (|weight| of each head, of each FFN neuron)."""
    d = family.head_dim(model)
    return [(unit_scores(layer, family.heads_in, family.heads_out, family, d, _magnitude),
             unit_scores(layer, family.ffn_in, family.ffn_out, family, 1, _magnitude)) for layer in family.layers(model)]  # fmt: skip


def taylor_scores(
    model: torch.nn.Module, family: Family, tokenize: Tokenize, train_df: pd.DataFrame, labels: list[str], batches: int, batch_size: int
) -> Scores:
    """Per layer of `model`: (score of each head, score of each FFN neuron), summed over `batches` labelled batches."""
    import torch

    d = family.head_dim(model)
    model.eval()
    row_labels = label_ids(train_df, labels)
    sums: Scores = []
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
    model.zero_grad(set_to_none=True)
    return sums


def cut(model: torch.nn.Module, family: Family, scores: Scores, heads_fraction: float, ffn_fraction: float) -> set[str]:
    """Keep, in every layer of `model` (scores[i] belongs to its layer i), the best heads and neurons; notes where the
    family cannot keep the number of heads asked."""
    notes = set()
    for layer, (heads, neurons) in zip(family.layers(model), scores, strict=True):
        if heads_fraction:
            wanted = max(1, round(len(heads) * (1 - heads_fraction)))
            kept = family.allowed_heads(model, wanted)
            if kept != wanted:
                notes.add(f"{family.name} keeps {kept} of {len(heads)} heads per layer, not {wanted}: {family.heads_constraint}.")
            prune_heads(model, family, layer, top(heads, count=kept))
        if ffn_fraction:
            prune_ffn(family, layer, top(neurons, ffn_fraction))
    sync_ffn_config(model, family)
    return notes


def shape_params(model: torch.nn.Module, family: Family) -> dict[str, list[int] | str]:
    """Heads and FFN neurons per layer, for a step run's params."""
    d = family.head_dim(model)
    return {"family": family.name, "heads_per_layer": [family.heads(layer, d) for layer in family.layers(model)],
            "ffn_per_layer": [family.ffn_width(layer) for layer in family.layers(model)]}  # fmt: skip
