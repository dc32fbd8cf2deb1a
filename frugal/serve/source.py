"""Where the served model comes from: a registry alias (`models:/NAME@ALIAS`) or a folder, and its measured figures.

A source answers two questions: which version is current (cheap, polled) and where that
version's model folder is on this machine (a download at most once per version). Nothing is
unpickled: the folder is loaded by `frugal.runtime`, never through `mlflow.pyfunc`. A registry version
whose files are gone from the artifact store is refused (frugal/artifacts.py): at startup, one error;
on a reload, the poller keeps serving the version it has.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Protocol

from frugal import artifacts, bundle
from frugal.config.serve import ServeSettings
from frugal.errors import ConfigError, ModelError
from frugal.fetch import fetch_once, in_place
from frugal.paths import tracking_uri
from frugal.runtime.manifest import MANIFEST, Manifest

FIGURES = ("macro_f1", "f1_retained", "usd_per_1m", "latency_p50_ms", "throughput_per_s", "usd_per_1m_tokens")  # the last: generative


@dataclass(frozen=True)
class Release:
    """One loadable version: its identity, where its model folder is, and what evaluation measured for it."""

    version: str
    uri: str  # models:/NAME/VERSION, or the folder
    model_dir: Path
    variant: str | None = None
    figures: dict[str, float | None] = field(default_factory=dict)


class LoadedRelease:
    """One release loaded in memory, either task's: its version, manifest and load time, and what serving it costs us."""

    cost_figure: ClassVar[str]  # the release's measured price per 1M units: texts (classify) or output tokens (generate)

    def __init__(self, release: Release, manifest: Manifest) -> None:
        self.release, self.manifest = release, manifest
        self.loaded_at = datetime.now(UTC)

    @property
    def version(self) -> str:
        return self.release.version

    def cost_usd(self, units: int) -> float:
        """What serving `units` (texts, or output tokens) costs us at the variant's measured price; 0 when it is unknown (a
        folder source)."""
        usd_per_1m = self.release.figures.get(self.cost_figure)
        return units / 1e6 * usd_per_1m if usd_per_1m is not None else 0.0


class Source(Protocol):
    uri: str

    def current(self) -> str:
        """The version that should be served now."""

    def fetch(self, version: str) -> Release:
        """That version's model folder on this machine, and its figures."""


def source_for(settings: ServeSettings, project_root: Path) -> Source:
    if settings.model.startswith("models:/"):
        tracking = tracking_uri(settings.tracking_uri, project_root)  # the pipeline's rule: the same store `frugal run` wrote
        source = RegistrySource(settings.model, tracking, project_root / ".frugal" / "cache" / "registry")
        source.refuse_missing()  # before the server starts: a champion without files is one error, not a server that never gets ready
        return source
    return FolderSource(Path(settings.model).expanduser().resolve())


class RegistrySource:
    """`models:/NAME@ALIAS` (polled: the alias moves) or `models:/NAME/VERSION` (fixed)."""

    def __init__(self, uri: str, tracking: str, cache: Path) -> None:
        from mlflow import MlflowClient

        rest = uri.removeprefix("models:/")
        name, at, alias = rest.partition("@")
        if not at:
            name, _, alias = rest.rpartition("/")
        if not name or not alias or (not at and not alias.isdigit()):
            raise ConfigError(f"model={uri!r} is neither models:/NAME@ALIAS nor models:/NAME/VERSION.",
                              "Set model to e.g. models:/frugal-default@champion, or to a bundle folder.")  # fmt: skip
        self.uri, self.name, self.alias, self.pinned = uri, name, alias, not at
        self.tracking, self.cache = tracking, cache
        self.client = MlflowClient(tracking, tracking)

    def current(self) -> str:
        if self.pinned:
            return self.alias
        return str(self.client.get_model_version_by_alias(self.name, self.alias).version)

    def refuse_missing(self) -> None:
        """One ModelError when the current version's files are not in the artifact store.

        A registry that does not answer yet, or an alias not set yet, is left to the poller, which waits for it.
        """
        from mlflow.exceptions import MlflowException

        try:
            version = self.current()
            gone = artifacts.missing(self.client, self.name, version)
        except MlflowException:
            return
        if gone is not None:
            raise self._missing(version, gone)

    def _missing(self, version: str, gone: str) -> ModelError:
        return ModelError(f"{self.uri} is version {version} of {self.name}, whose files are missing from the artifact store ({gone}).",
                          "Run `frugal run` to register a new champion, or restore the artifact store.")  # fmt: skip

    def fetch(self, version: str) -> Release:
        gone = artifacts.missing(self.client, self.name, version)
        if gone is not None:  # a download would be an empty folder: a model folder without a model
            raise self._missing(version, gone)
        found = self.client.get_model_version(self.name, version)
        folder = self._local(self.client.get_model_version_download_uri(self.name, version), version)
        model_dir = bundle.model_dir(folder)
        tags = found.tags or {}
        return Release(str(version), f"models:/{self.name}/{version}", model_dir, tags.get("variant"), self._figures(tags))

    def _local(self, artifact_uri: str, version: str) -> Path:
        """The bundle in place when the artifact store is a local folder, else downloaded once into the project's cache."""
        found = in_place(artifact_uri)
        if found is not None and found.is_dir():
            return found
        import mlflow.artifacts

        def download(tmp: Path) -> Path:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(tmp), tracking_uri=self.tracking))

        # The layout tasks/plumbing/store.py uses: measurement and serving share the cache.
        return fetch_once(self.cache / self.name / version, self.cache, download)

    def _figures(self, tags: dict[str, str]) -> dict[str, float | None]:
        """The variant run's metrics (register tags the version with its variant_run_id); the version's own tags as fallback."""
        metrics: dict[str, float] = {}
        if tags.get("variant_run_id"):
            metrics = self.client.get_run(tags["variant_run_id"]).data.metrics
        return {name: metrics.get(name, _float(tags.get(name))) for name in FIGURES}


class FolderSource:
    """A bundle folder (package output) or a model folder. Its version is a fingerprint of its files, so SIGHUP after
    replacing the folder's content loads the new model; a bundle's serving.json gives the measured figures."""

    def __init__(self, folder: Path) -> None:
        self.uri = str(folder)
        self.model_dir = bundle.model_dir(folder)
        if not (self.model_dir / MANIFEST).is_file():
            raise ConfigError(f"model={folder} is neither a registry URI nor a bundle or model folder (no {MANIFEST} found).",
                              "Set model to models:/NAME@ALIAS, or to a folder that `frugal run` packaged.")  # fmt: skip

    def current(self) -> str:
        digest = hashlib.sha256((self.model_dir / MANIFEST).read_bytes())
        for path in sorted(p for p in self.model_dir.iterdir() if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return f"local-{digest.hexdigest()[:12]}"

    def fetch(self, version: str) -> Release:
        """A bundle carries the figures evaluation measured (serving.json, written by the package step); a bare model folder none."""
        recorded = Path(self.uri) / bundle.FIGURES
        if not recorded.is_file():
            return Release(version, self.uri, self.model_dir, figures=dict.fromkeys(FIGURES))
        data = json.loads(recorded.read_text())
        figures = {name: _float(str(data["metrics"][name])) if name in data["metrics"] else None for name in FIGURES}
        return Release(version, self.uri, self.model_dir, variant=data.get("variant"), figures=figures)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
