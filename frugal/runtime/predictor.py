"""What every format's predictor shares: tokenizing, length-ordered batching, probabilities in the caller's order.

Evaluation and serving predict through this code, so what is measured is what ships. It needs
numpy and tokenizers only; each format (frugal/runtime/formats/) adds the runtime it runs on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from frugal.runtime.manifest import TOKENIZER_DIR, Manifest


class Tokenize:
    """Fast tokenizer with truncation and dynamic padding (each batch padded to its longest text).

    Pads with the model's own pad id and gives `token_type_ids` only to models that have token types
    (DistilBERT, ModernBERT and decoder models take none), so every family gets the inputs its forward expects.
    """

    def __init__(self, model_dir: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        config = _read_json(model_dir / "config.json")
        self._tok = Tokenizer.from_file(str(model_dir / TOKENIZER_DIR / "tokenizer.json"))
        self._tok.no_padding()  # padded here, per batch, after the texts are sorted by length
        self._tok.enable_truncation(max_length=max_length)
        self.pad_id = _pad_id(self._tok, config)
        # A folder without config.json is a BERT-style export of an older frugal: it took token types.
        self.token_types = config.get("type_vocab_size", 0) > 0 if config else True

    def encode(self, texts: list[str]) -> list[Any]:
        """Token ids of each text, unpadded."""
        return self._tok.encode_batch(list(texts))

    def pad(self, encodings: list[Any]) -> dict[str, np.ndarray]:
        """One batch, right-padded to its longest member."""
        width = max((len(e.ids) for e in encodings), default=0)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)], mask[row, : len(e.ids)], types[row, : len(e.ids)] = e.ids, 1, e.type_ids
        batch = {"input_ids": ids, "attention_mask": mask}
        return batch | {"token_type_ids": types} if self.token_types else batch

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.pad(self.encode(texts))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _pad_id(tok: Any, config: dict[str, Any]) -> int:
    """The id the model treats as padding: decoder classifiers find each text's last token by it."""
    if isinstance(config.get("pad_token_id"), int):
        return config["pad_token_id"]
    for token in ("[PAD]", "<pad>", "<|pad|>"):
        if tok.token_to_id(token) is not None:
            return tok.token_to_id(token)
    return 0


def length_ordered(encodings: list[Any], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar token length: each batch pads to little more than its texts hold.

    A stable sort keeps equal-length texts in arrival order, so the batches are deterministic.
    """
    order = np.argsort([len(e.ids) for e in encodings], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class Predictor:
    """Turns texts into class probabilities."""

    def __init__(self, model_dir: Path, manifest: Manifest) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.labels = manifest.labels
        self.tokenize = Tokenize(model_dir, manifest.max_length)

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, texts: list[str], batch_size: int = 32, sort_by_length: bool = True) -> np.ndarray:
        """Probabilities in the caller's order; batches are length-ordered unless `sort_by_length` is False (arrival order)."""
        return self._proba_of(self.tokenize.encode(texts), batch_size, sort_by_length)

    def predict_flagged(self, texts: list[str], batch_size: int = 32) -> tuple[np.ndarray, list[bool]]:
        """`predict_proba`, and which texts were truncated to `max_length` (from the same tokenization: serving needs both)."""
        encodings = self.tokenize.encode(texts)
        return self._proba_of(encodings, batch_size, True), [bool(e.overflowing) for e in encodings]

    def _proba_of(self, encodings: list[Any], batch_size: int, sort_by_length: bool) -> np.ndarray:
        if sort_by_length:
            batches = length_ordered(encodings, batch_size)
        else:
            batches = [np.arange(i, min(i + batch_size, len(encodings))) for i in range(0, len(encodings), batch_size)]
        out = np.zeros((len(encodings), len(self.labels)))
        for rows in batches:
            out[rows] = self._proba(self.tokenize.pad([encodings[i] for i in rows]))
        return out

    def predict(self, texts: list[str], batch_size: int = 32) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts, batch_size).argmax(axis=1)]

    def _proba(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        logits = self.logits(batch).astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)
