"""Structured edits of an encoder: keep some attention heads and feed-forward neurons of a layer, drop the rest.

The Linear layers really shrink (prune and distill's narrower student use these). Which Linears hold
heads and neurons in each family is ml/families.py.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from ml.compress.transfer import kept_layers
from ml.families import Family, Proj, family_of

if TYPE_CHECKING:
    import torch


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


def unit_rows(units: torch.Tensor, width: int, total: int, blocks: int) -> torch.Tensor:
    """Feature indices of `units` (each `width` features) in every one of `blocks` stacked blocks of `total` units."""
    import torch

    within = torch.cat([torch.arange(u * width, (u + 1) * width) for u in units.tolist()])
    return torch.cat([within + b * total * width for b in range(blocks)])


def per_unit(values: torch.Tensor, width: int, blocks: int = 1) -> torch.Tensor:
    """Sum a per-feature score over each unit's features in every block."""
    return values.view(blocks, -1, width).sum(dim=(0, 2))


def _slice(
    layer: torch.nn.Module, projs: list[tuple[Proj, torch.nn.Linear]], out_path: str, keep: torch.Tensor, width: int, total: int
) -> None:
    """Keep the units `keep` (of `total`, each `width` features): rows of the projections, columns of `out_path`."""
    for proj, linear in projs:
        layer.set_submodule(proj.path, keep_rows(linear, unit_rows(keep, width, total, proj.blocks)))
    layer.set_submodule(out_path, keep_cols(layer.get_submodule(out_path), unit_rows(keep, width, total, 1)))


def prune_heads(model: torch.nn.Module, family: Family, layer: torch.nn.Module, keep_heads: torch.Tensor) -> None:
    d = family.head_dim(model)
    total = family.heads(layer, d)
    _slice(layer, family.projections(layer, family.heads_in), family.heads_out, keep_heads, d, total)
    family.set_heads(model, layer, len(keep_heads), d)


def prune_ffn(family: Family, layer: torch.nn.Module, keep: torch.Tensor) -> None:
    _slice(layer, family.projections(layer, family.ffn_in), family.ffn_out, keep, 1, family.ffn_width(layer))


def ffn_norms(family: Family, layer: torch.nn.Module) -> torch.Tensor:
    """Each FFN neuron's squared weight norm over its rows in the input projection(s): a data-free importance."""
    return sum(per_unit(linear.weight.detach().pow(2).sum(1), 1, proj.blocks) for proj, linear in family.projections(layer, family.ffn_in))


def top(scores: torch.Tensor, fraction_removed: float | None = None, count: int | None = None) -> torch.Tensor:
    """Indices of the highest scores (`count` of them, or all but `fraction_removed`, at least one), in their original order."""
    keep = count if count is not None else max(1, round(len(scores) * (1 - (fraction_removed or 0.0))))
    return scores.topk(max(1, keep)).indices.sort().values


def sync_ffn_config(model: torch.nn.Module, family: Family) -> None:
    """Write the feed-forward width into the config when every layer has the same one (what pruning and a narrower student
    give), so the saved folder's config.json says the weights' true shape and plain transformers loads it."""
    widths = {family.ffn_width(layer) for layer in family.layers(model)}
    if len(widths) == 1:
        setattr(model.config, family.ffn_config, widths.pop())


def shape_suffix(heads_fraction: float, ffn_fraction: float) -> str:
    """How names say the heads and FFN neurons removed: "-h50-f50", "-f50", or "" for none."""
    return (f"-h{round(100 * heads_fraction)}" if heads_fraction else "") + (f"-f{round(100 * ffn_fraction)}" if ffn_fraction else "")


def make_student(teacher, depth: int, intermediate_size: int | None, method: str = "distill"):  # -> (torch.nn.Module, notes)
    """The teacher's kept layers (optionally with their strongest FFN neurons only), and notes on family-specific changes."""
    family = family_of(teacher, method)
    student = copy.deepcopy(teacher)
    notes = family.set_layers(student, kept_layers(len(family.layers(teacher)), depth))
    if intermediate_size is not None:
        for layer in family.layers(student):
            prune_ffn(family, layer, top(ffn_norms(family, layer), count=min(intermediate_size, family.ffn_width(layer))))
        sync_ffn_config(student, family)
    return student, notes
