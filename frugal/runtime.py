"""Predict with any model folder. Evaluation and serving share this code, so what is measured is what ships.

The ONNX path imports neither torch nor transformers: an ONNX bundle serves with
onnxruntime + tokenizers alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from frugal.modelio import TOKENIZER_DIR, Manifest


class Tokenize:
    """Fast tokenizer with truncation and dynamic padding (each batch padded to its longest text)."""

    def __init__(self, model_dir: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(Path(model_dir) / TOKENIZER_DIR / "tokenizer.json"))
        self._tok.enable_truncation(max_length=max_length)
        pad_id = self._tok.token_to_id("[PAD]")
        self._tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]" if pad_id is not None else "<pad>")

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self._tok.encode_batch(list(texts))
        return {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
        }


class Predictor:
    """Turns texts into class probabilities."""

    def __init__(self, model_dir: Path, manifest: Manifest) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.labels = manifest.labels
        self.tokenize = Tokenize(model_dir, manifest.max_length)

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        chunks = [self._proba(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.labels)))

    def predict(self, texts: list[str], batch_size: int = 32) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts, batch_size).argmax(axis=1)]

    def _proba(self, texts: list[str]) -> np.ndarray:
        logits = self.logits(self.tokenize(texts)).astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


class TorchPredictor(Predictor):
    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None, device: str) -> None:
        import torch

        from frugal.modelio import load_torch

        super().__init__(model_dir, manifest)
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        model = load_torch(model_dir)
        self.model = model if manifest.format == "hf-nf4" else model.to(self.device)
        self._torch = torch

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        inputs = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            return self.model(**inputs).logits.float().cpu().numpy()


class OnnxPredictor(Predictor):
    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None, device: str) -> None:
        import onnxruntime as ort

        super().__init__(model_dir, manifest)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(Path(model_dir) / "model.onnx"), options, providers=providers)
        self._inputs = {i.name for i in self.session.get_inputs()}

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {k: v for k, v in batch.items() if k in self._inputs}
        return self.session.run(["logits"], feeds)[0]


def load_predictor(model_dir: str | Path, threads: int | None = None, device: str = "cpu") -> Predictor:
    manifest = Manifest.load(Path(model_dir))
    kinds: dict[str, Any] = {"hf": TorchPredictor, "torch-int8": TorchPredictor, "hf-nf4": TorchPredictor, "onnx": OnnxPredictor}
    if manifest.format not in kinds:
        raise ValueError(f"model format {manifest.format!r} cannot be served on {device}")
    return kinds[manifest.format](Path(model_dir), manifest, threads, device)
