"""Load the pretrained model and tokenizer the config names: embedded, local folder, hub id, or tiny."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frugal.config import ModelConfig
from frugal.errors import ModelError
from frugal.runtime.manifest import TOKENIZER_DIR
from ml import embedded

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def embedded_model_path(name: str | None = None) -> Path:
    """The folder of an embedded model (ml/embedded.py; None: the default, all-MiniLM-L6-v2)."""
    return embedded.path(name)


def other_model(base: ModelConfig, source: str, name_or_path: str | None, revision: str | None = None, tiny: Any = None) -> ModelConfig:
    """The model section `base` with another model in it (a student), so its trust_remote_code allowlist still applies."""
    return base.model_copy(update={"source": source, "name_or_path": name_or_path, "revision": revision, "tiny": tiny or base.tiny})


def fitting_max_length(config: Any, max_length: int) -> int:
    """`max_length`, or fewer tokens where the model's position table is shorter (a student may have fewer positions)."""
    return min(max_length, getattr(config, "max_position_embeddings", None) or max_length)


def _source(cfg: ModelConfig) -> tuple[str, dict[str, Any]]:
    """Where from_pretrained reads, and with which extra arguments."""
    if cfg.source == "tiny":  # a random model with the default's tokenizer
        return str(embedded_model_path()), {"local_files_only": True}
    if cfg.source == "embedded":
        return str(embedded_model_path(cfg.name_or_path)), {"local_files_only": True}
    if cfg.source == "path":
        path = Path(cfg.name_or_path or "")
        if not (path / "config.json").is_file():
            raise ModelError(
                f"Model folder {path} does not exist or has no config.json.",
                "Point model.name_or_path at a folder saved with save_pretrained, or use model.source: embedded.",
            )
        return str(path), {"local_files_only": True}
    name = cfg.name_or_path or ""
    pinned = cfg.trust_remote_code.get(name)
    if pinned is not None and cfg.revision != pinned:
        raise ModelError(
            f"{name} is allowed to run its own code only at revision {pinned}, but model.revision is {cfg.revision!r}.",
            f"Set model.revision: {pinned} (or update the allowlist after reviewing the new code).",
        )
    return name, {"revision": cfg.revision, "trust_remote_code": pinned is not None}


def check_source(cfg: ModelConfig) -> None:
    """Fail before any data is touched when a local model folder is missing (hub ids are checked on load)."""
    _source(cfg)


def load_tokenizer(cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    where, kwargs = _source(cfg)
    try:
        return AutoTokenizer.from_pretrained(where, **kwargs)
    except OSError as exc:
        raise ModelError(f"Could not load the tokenizer of {where}: {exc}", "Check model.name_or_path and model.revision.") from None


def load_pretrained(cfg: ModelConfig, labels: list[str], seed: int) -> torch.nn.Module:
    """The pretrained encoder with a fresh classification head for `labels` (tiny: all random)."""
    return load_pretrained_with_notes(cfg, labels, seed)[0]


def load_pretrained_with_notes(cfg: ModelConfig, labels: list[str], seed: int) -> tuple[torch.nn.Module, list[str]]:
    """`load_pretrained`, plus notes the run should record (a checkpoint's own head of another shape replaced)."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "classifier weights newly initialised" report is expected
    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in id2label.items()}
    torch.manual_seed(seed)
    if cfg.source == "tiny":
        vocab = load_tokenizer(cfg).vocab_size
        config = BertConfig(vocab_size=vocab, **cfg.tiny.model_dump(), num_labels=len(labels), id2label=id2label, label2id=label2id)
        return BertForSequenceClassification(config), []
    where, kwargs = _source(cfg)
    try:
        # A checkpoint fine-tuned for other labels (a 2-label sentiment head reused for 3 classes) has a head of
        # another shape: it is replaced by a fresh one, and only the head may be (checked below).
        model, info = AutoModelForSequenceClassification.from_pretrained(
            where, num_labels=len(labels), id2label=id2label, label2id=label2id, use_safetensors=True,
            ignore_mismatched_sizes=True, output_loading_info=True, **kwargs,
        )  # fmt: skip
    except OSError as exc:
        raise ModelError(
            f"Could not load model {where}: {exc}",
            "Check model.name_or_path (a hub id needs internet; a folder needs model.safetensors).",
        ) from None
    note = _replaced_head(model, where, info.get("mismatched_keys", ()), len(labels))
    if note:
        log.warning(note)
    return model, [note] if note else []


def _replaced_head(model: torch.nn.Module, where: str, mismatched: Any, num_labels: int) -> str | None:
    """What was re-initialised because its shape differs from the checkpoint's; a ModelError if it is not only the head."""
    if not mismatched:
        return None
    shapes = {key: (tuple(old), tuple(new)) for key, old, new in mismatched}
    body = sorted(key for key in shapes if key.startswith(f"{model.base_model_prefix}."))
    if body:
        raise ModelError(
            f"Model {where} does not match its own config.json: {', '.join(body[:3])} have other shapes than the config describes.",
            "Re-save the checkpoint with save_pretrained, or point model.name_or_path at an intact copy.",
        )
    listed = ", ".join(f"{key} {list(old)} -> {list(new)}" for key, (old, new) in sorted(shapes.items()))
    return f"The checkpoint's classification head has other shapes than {num_labels} labels need ({listed}); a fresh head replaced it."


def tiny_family_config(model_type: str, labels: list[str], layers: int = 2, heads: int = 4, hidden: int = 32, intermediate: int = 64):
    """A tiny random config of one encoder family, sized for tests and benchmarks/families.py.

    Vocabulary and pad id are the embedded BERT WordPiece tokenizer's (30522, [PAD] = 0), so any family can use it.
    """
    from transformers import AutoConfig

    common = {"vocab_size": 30522, "pad_token_id": 0, "num_labels": len(labels), "id2label": dict(enumerate(labels)),
              "label2id": {label: i for i, label in enumerate(labels)}}  # fmt: skip
    size = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": intermediate}
    special = {
        "distilbert": {"dim": hidden, "n_layers": layers, "n_heads": heads, "hidden_dim": intermediate},
        # RoBERTa counts positions from pad id + 1: room for max_length 128.
        "roberta": {**size, "max_position_embeddings": 256},
        "xlm-roberta": {**size, "max_position_embeddings": 256},
        # v3's attention: relative positions through the shared query/key projections, no absolute positions.
        "deberta-v2": {**size, "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "share_att_key": True,
                       "position_biased_input": False, "position_buckets": 32, "max_relative_positions": -1, "norm_rel_ebd": "layer_norm"},
        "electra": {**size, "embedding_size": hidden // 2},
        # ModernBERT's defaults name special ids of its own 50k vocabulary: use the WordPiece ones.
        "modernbert": {**size, "bos_token_id": 101, "eos_token_id": 102, "cls_token_id": 101, "sep_token_id": 102},
    }  # fmt: skip
    return AutoConfig.for_model(model_type, **common, **special.get(model_type, size))


def save_tokenizer(tokenizer: Any, model_dir: Path) -> None:
    out = model_dir / TOKENIZER_DIR
    tokenizer.save_pretrained(out)
    if not (out / "tokenizer.json").is_file():
        raise ModelError(
            "The tokenizer has no fast (tokenizers) version, which serving needs.",
            "Use a model whose tokenizer ships tokenizer.json.",
        )


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each text's hidden states averaged over its real tokens (`mask`: the attention mask): one vector per text."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
