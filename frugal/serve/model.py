"""The served model and its hot reload.

`ModelHolder.current` is the one reference requests read. A reload loads the new version
beside the old one and then rebinds that reference in a single assignment: a request that
already took the old model finishes on it, the next one gets the new model, none is dropped.
A background thread checks the source every `reload_seconds`; SIGHUP (see app.py) wakes it at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from frugal.runtime import Predictor, load_predictor
from frugal.runtime.manifest import Manifest
from frugal.runtime.registry import load_generator
from frugal.serve.generation import Generating
from frugal.serve.source import LoadedRelease, Release, Source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Classified:
    label: str
    probabilities: dict[str, float]
    truncated: bool


class Loaded(LoadedRelease):
    """One loaded classifier version: the runtime's predictor plus what the API reports about it."""

    cost_figure = "usd_per_1m"

    def __init__(self, release: Release, predictor: Predictor, batch_size: int) -> None:
        super().__init__(release, predictor.manifest)
        self.predictor, self.batch_size = predictor, batch_size

    @property
    def labels(self) -> list[str]:
        return list(self.predictor.labels)

    def classify(self, texts: list[str]) -> list[Classified]:
        proba, truncated = self.predictor.predict_flagged(texts, self.batch_size)
        labels = self.labels
        return [
            Classified(labels[int(np.argmax(row))], {label: float(p) for label, p in zip(labels, row, strict=True)}, cut)
            for row, cut in zip(proba, truncated, strict=True)
        ]


class ModelHolder:
    def __init__(self, source: Source, threads: int, batch_size: int, reload_seconds: float) -> None:
        self.source, self.threads, self.batch_size, self.reload_seconds = source, threads, batch_size, reload_seconds
        self.current: Loaded | Generating | None = None
        self.last_error: str | None = None
        self.on_swap: Callable[[Loaded | Generating], None] | None = None
        self._check_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Load the source's current version if it is not the one served; True when a new model was swapped in."""
        with self._check_lock:  # the poller and a SIGHUP never load the same version twice
            version = self.source.current()
            if self.current is not None and self.current.version == version:
                return False
            release = self.source.fetch(version)
            loaded = self._load(release)
            old, self.current = self.current, loaded  # the swap: one reference assignment
            self.last_error = None
        log.info("Serving %s (version %s%s)%s", release.uri, version, f", {release.variant}" if release.variant else "",
                 f", replacing version {old.version}" if old else "")  # fmt: skip
        if self.on_swap:
            self.on_swap(loaded)
        return True

    def _load(self, release: Release) -> Loaded | Generating:
        """A classifier behind /v1/predict, or a generative model (manifest task "generate") behind /v1/chat/completions."""
        if Manifest.load(release.model_dir).task == "generate":
            return Generating(release, load_generator(release.model_dir, threads=self.threads))
        return Loaded(release, load_predictor(release.model_dir, threads=self.threads), self.batch_size)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="frugal-model-reload", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Check now instead of at the next poll (SIGHUP)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception as exc:  # a registry hiccup or a broken new version: keep serving the old one, retry later
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("Model check of %s failed (still serving %s): %s", self.source.uri,
                          self.current.version if self.current else "nothing", self.last_error)  # fmt: skip
            self._wake.wait(self.reload_seconds)
            self._wake.clear()
