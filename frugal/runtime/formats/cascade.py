"""A confidence cascade: a cheap model answers the texts it is sure of, a strong model the rest.

Model folder format ``cascade``: ``cheap/`` and ``strong/`` (each a normal model folder of its
own format), ``tokenizer/`` (the cheap part's: serving counts tokens with the folder's
tokenizer) and ``frugal.json`` whose ``notes`` hold the ``threshold`` and how it was chosen.
The cheap part answers a text when its top probability is >= threshold; the strong part
answers the others. Imports only the runtime's registry and numpy, so a bundle serves a cascade
with its parts' runtimes alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from frugal.runtime.manifest import Manifest
from frugal.runtime.predictor import Predictor
from frugal.runtime.registry import Format, load_predictor, register

CHEAP, STRONG = "cheap", "strong"
PARTS = (CHEAP, STRONG)


def deferred(cheap_proba: np.ndarray, threshold: float) -> np.ndarray:
    """The rows the cheap part is not sure enough of: its top probability is below the threshold."""
    return cheap_proba.max(axis=1) < threshold


def combine(cheap_proba: np.ndarray, strong_proba: np.ndarray, threshold: float) -> np.ndarray:
    """The cascade's answer from both parts' answers on the same texts (what CascadePredictor computes lazily)."""
    return np.where(deferred(cheap_proba, threshold)[:, None], strong_proba, cheap_proba)


class CascadePredictor(Predictor):
    """Two predictors behind one; the strong part sees only the texts the cheap part defers."""

    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None, device: str) -> None:
        self.model_dir, self.manifest, self.labels = Path(model_dir), manifest, manifest.labels
        self.threshold = float(manifest.notes["threshold"])
        self.cheap = load_predictor(self.model_dir / CHEAP, threads, device)
        self.strong = load_predictor(self.model_dir / STRONG, threads, device)
        for part in (self.cheap, self.strong):
            if list(part.labels) != list(self.labels):
                raise ValueError(f"cascade part {part.model_dir} has labels {part.labels}, the cascade {self.labels}")
        self.tokenize = self.cheap.tokenize
        self.last_rows = self.last_deferred = 0  # the last call's texts and how many the strong part answered
        self._largest = (0, 0)  # the same for the largest call: in frugal.measure, a pass over the whole test split

    def predict_proba(self, texts: list[str], batch_size: int = 32, sort_by_length: bool = True) -> np.ndarray:
        return self._route(texts, self.cheap.predict_proba(texts, batch_size, sort_by_length), batch_size, sort_by_length)

    def predict_flagged(self, texts: list[str], batch_size: int = 32) -> tuple[np.ndarray, list[bool]]:
        """The cascade's probabilities; truncation as the cheap part (the folder's tokenizer) cuts the texts."""
        proba, truncated = self.cheap.predict_flagged(texts, batch_size)
        return self._route(texts, proba, batch_size, True), truncated

    def _route(self, texts: list[str], proba: np.ndarray, batch_size: int, sort_by_length: bool) -> np.ndarray:
        """The cheap part's probabilities, with the rows it is unsure of answered by the strong part."""
        rows = np.flatnonzero(deferred(proba, self.threshold))
        if len(rows):
            proba[rows] = self.strong.predict_proba([texts[i] for i in rows], batch_size, sort_by_length)
        self.last_rows, self.last_deferred = len(texts), len(rows)
        if len(texts) >= self._largest[0]:
            self._largest = (len(texts), len(rows))
        return proba

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError("a cascade routes texts, not token batches: call predict_proba")

    def extra_metrics(self) -> dict[str, float]:
        """What frugal.measure adds to a cascade's metrics: the share it deferred on the largest call (the test split) and its
        calibration. Measured after latency timing too, hence the largest call rather than the last one (a single text)."""
        rows, deferred_rows = self._largest
        notes = self.manifest.notes
        figures = {"deferred_share": deferred_rows / rows if rows else 0.0, "cascade_threshold": self.threshold}
        return figures | ({"deferred_share_val": float(notes["deferred_share_val"])} if "deferred_share_val" in notes else {})


register(Format("cascade", "cheap/ and strong/ model folders routed by the cheap part's confidence (frugal's own)", CascadePredictor,
                save=None, packages=(), standard=None, parts=lambda folder: [folder / part for part in PARTS]))  # fmt: skip
