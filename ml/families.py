"""Where each encoder family keeps the parts structural compression edits (not a method: discovery skips modules starting with _).

Pruning, layer-dropping distillation and ONNX export need the same few facts about a
``*ForSequenceClassification`` model: its layer list, per layer the projections whose output
rows are attention heads or feed-forward neurons, the Linear reading them back, and what
the forward takes the head count from. transformers names these differently per family, so
each family is one small record here, keyed by ``config.model_type``. A family not listed,
or a method a family cannot support, raises ``SkipVariant`` naming both.

Paths are attribute paths: the layer list from ``model.base_model``, the parts from one layer.
A projection may stack several blocks on its output axis (ModernBERT's fused q|k|v ``Wqkv``
is 3 blocks of heads; its gated ``Wi`` is 2 blocks of neurons): a unit keeps its rows in every block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from frugal.errors import SkipVariant

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Proj:
    """A Linear inside a layer whose output features are units (heads x head_dim, or neurons), `blocks` times stacked."""

    path: str
    blocks: int = 1
    optional: bool = False  # present only in some configs (DeBERTa's unshared relative-position projections)


class Family:
    """The BERT layout; other families override what differs. Instances are stateless."""

    name = "BERT"
    model_types: tuple[str, ...] = ("bert",)
    stack = "encoder.layer"
    heads_in: tuple[Proj, ...] = (Proj("attention.self.query"), Proj("attention.self.key"), Proj("attention.self.value"))
    heads_out = "attention.output.dense"
    ffn_in: tuple[Proj, ...] = (Proj("intermediate.dense"),)
    ffn_out = "output.dense"
    attention = "attention.self"  # the module whose forward splits heads
    head_dim_attr = "attention_head_size"  # its head width, fixed by the config; pruning never changes it
    ffn_config = "intermediate_size"  # the config field that says the feed-forward width
    onnx_model_type = "bert"  # onnxruntime.transformers.optimizer model_type (its fusions for BERT-style graphs)

    # -- reading the structure

    def layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(model.base_model.get_submodule(self.stack))

    def head_dim(self, model: torch.nn.Module) -> int:
        return int(getattr(self.layers(model)[0].get_submodule(self.attention), self.head_dim_attr))

    def projections(self, layer: torch.nn.Module, projs: tuple[Proj, ...]) -> list[tuple[Proj, torch.nn.Linear]]:
        """The layer's Linear for each projection that exists in this config."""
        found = []
        for proj in projs:
            try:
                found.append((proj, layer.get_submodule(proj.path)))
            except AttributeError:
                if not proj.optional:
                    raise
        return found

    def heads(self, layer: torch.nn.Module, head_dim: int) -> int:
        """The layer's head count, read from its query projection's width (what the forward computes with)."""
        proj, linear = self.projections(layer, self.heads_in)[0]
        return linear.out_features // proj.blocks // head_dim

    def ffn_width(self, layer: torch.nn.Module) -> int:
        proj, linear = self.projections(layer, self.ffn_in)[0]
        return linear.out_features // proj.blocks

    # -- changing it

    heads_constraint = ""  # why allowed_heads may round a head count, for the step's notes

    def allowed_heads(self, model: torch.nn.Module, wanted: int) -> int:
        """The head count to keep when `wanted` are asked for (families whose loader constrains it round it)."""
        return wanted

    def set_heads(self, model: torch.nn.Module, layer: torch.nn.Module, heads: int, head_dim: int) -> None:
        """Tell the attention module how many heads remain (BERT reshapes by head width, so this keeps its attributes honest)."""
        attention = layer.get_submodule(self.attention)
        attention.num_attention_heads, attention.all_head_size = heads, heads * head_dim

    def set_layers(self, model: torch.nn.Module, keep: list[int]) -> list[str]:
        """Keep only the layers `keep` (in order), in the module and the config; returns notes on what else changed."""
        import torch

        old = self.layers(model)
        parent, _, attr = self.stack.rpartition(".")
        owner = model.base_model.get_submodule(parent) if parent else model.base_model
        setattr(owner, attr, torch.nn.ModuleList([old[i] for i in keep]))
        model.config.num_hidden_layers = len(keep)
        return []

    # -- ONNX Runtime

    def onnx_fusion(self, model: torch.nn.Module) -> tuple[int, int]:
        """(num_heads, hidden_size) for optimize_model: one head count for all layers, or 0 (attention left unfused).

        The fusion's hidden size is the q/k/v width, which pruning narrows.
        """
        d = self.head_dim(model)
        counts = {self.heads(layer, d) for layer in self.layers(model)}
        heads = counts.pop() if len(counts) == 1 else 0
        return heads, heads * d


class Roberta(Family):
    name = "RoBERTa"
    model_types = ("roberta", "xlm-roberta")


class Electra(Family):
    name = "ELECTRA"
    model_types = ("electra",)


class DistilBert(Family):
    name = "DistilBERT"
    model_types = ("distilbert",)
    stack = "transformer.layer"
    heads_in = (Proj("attention.q_lin"), Proj("attention.k_lin"), Proj("attention.v_lin"))
    heads_out = "attention.out_lin"
    ffn_in = (Proj("ffn.lin1"),)
    ffn_out = "ffn.lin2"
    attention = "attention"
    ffn_config = "hidden_dim"

    def set_heads(self, model: torch.nn.Module, layer: torch.nn.Module, heads: int, head_dim: int) -> None:
        attention = layer.get_submodule(self.attention)
        attention.n_heads, attention.dim = heads, heads * head_dim  # the forward reshapes by head width alone

    def set_layers(self, model: torch.nn.Module, keep: list[int]) -> list[str]:
        notes = super().set_layers(model, keep)
        model.base_model.transformer.n_layers = len(keep)  # config.num_hidden_layers maps to n_layers already
        return notes


class DebertaV2(Family):
    """DeBERTa-v2 and v3 (one class). Its attention splits heads by ``num_attention_heads`` read from the config at load.

    So a pruned count goes into config.json (``num_attention_heads`` plus ``attention_head_size`` to keep the head
    width), which needs the same count in every layer (pruning keeps one count for all) and one that divides
    hidden_size (the constructor checks it). With ``share_att_key`` (v3) the relative-position projections are
    query_proj/key_proj themselves; without it pos_key_proj/pos_query_proj are sliced with the same heads.
    """

    name = "DeBERTa-v2"
    model_types = ("deberta-v2",)
    stack = "encoder.layer"
    heads_in = (
        Proj("attention.self.query_proj"), Proj("attention.self.key_proj"), Proj("attention.self.value_proj"),
        Proj("attention.self.pos_key_proj", optional=True), Proj("attention.self.pos_query_proj", optional=True),
    )  # fmt: skip

    heads_constraint = "its loader reads one head count for every layer from config.json and needs it to divide hidden_size"

    def allowed_heads(self, model: torch.nn.Module, wanted: int) -> int:
        hidden, most = model.config.hidden_size, model.config.num_attention_heads
        divisors = [n for n in range(1, most + 1) if hidden % n == 0]
        return min(divisors, key=lambda n: (abs(n - wanted), -n))  # nearest; a tie keeps more heads

    def set_heads(self, model: torch.nn.Module, layer: torch.nn.Module, heads: int, head_dim: int) -> None:
        super().set_heads(model, layer, heads, head_dim)
        model.config.num_attention_heads, model.config.attention_head_size = heads, head_dim


class ModernBert(Family):
    """ModernBERT: fused q|k|v (``Wqkv``, reshaped by head width) and a gated MLP (``Wi`` = input|gate halves).

    Layer 0 is built without a pre-attention LayerNorm, and every layer reads its sliding/full attention kind
    from ``config.layer_types`` by index: dropping layers updates both so the saved student reloads as trained.
    """

    name = "ModernBERT"
    model_types = ("modernbert",)
    stack = "layers"
    heads_in = (Proj("attn.Wqkv", blocks=3),)
    heads_out = "attn.Wo"
    ffn_in = (Proj("mlp.Wi", blocks=2),)
    ffn_out = "mlp.Wo"
    attention = "attn"
    head_dim_attr = "head_dim"

    def set_heads(self, model: torch.nn.Module, layer: torch.nn.Module, heads: int, head_dim: int) -> None:
        pass  # the forward infers the head count from Wqkv's width; nothing else caches it

    def set_layers(self, model: torch.nn.Module, keep: list[int]) -> list[str]:
        import torch

        types = list(model.config.layer_types)
        notes = super().set_layers(model, keep)
        model.config.layer_types = [types[i] for i in keep]
        for index, layer in enumerate(self.layers(model)):
            layer.layer_idx = layer.attn.layer_idx = index
        first = self.layers(model)[0]
        if not isinstance(first.attn_norm, torch.nn.Identity):  # layer 0 reads the already-normalised embeddings
            first.attn_norm = torch.nn.Identity()
            notes.append(
                f"ModernBERT: the student's first layer (teacher layer {keep[0]}) drops its attention LayerNorm, as layer 0 has none."
            )
        return notes


FAMILIES: tuple[Family, ...] = (Family(), DistilBert(), Roberta(), DebertaV2(), Electra(), ModernBert())


def family_of(model: torch.nn.Module, method: str) -> Family:
    """The family of a loaded model, or SkipVariant naming the model and the method that cannot handle it."""
    model_type = getattr(model.config, "model_type", "")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = ", ".join(family.name for family in FAMILIES)
    raise SkipVariant(f"{method} does not support {type(model).__name__} (model_type {model_type!r}); supported families: {known}")
