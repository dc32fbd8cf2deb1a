"""The format registry: what each kind of model folder is, how it loads, what serving it needs.

A format is declared once, in its own module under frugal/runtime/formats/, with ``register``:
its name, how to load a predictor from a folder, how to save a model in it, the pip packages
its runtime needs (a bundle's requirements come from them), and whose loader reads the folder
as it is (``standard``: transformers, onnxruntime, ...; None for a format of frugal's own).
Modules are discovered on first use, so adding a format is adding its module.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frugal.runtime.generator import Generator
from frugal.runtime.manifest import Manifest
from frugal.runtime.predictor import Predictor

# Modules this one runs without importing them by name (discovered below): their code is part of anything that loads
# a model (frugal/codegraph.py reads this, so a cache key covers them).
CODE_DEPS = ("frugal.runtime.formats",)
FORMATS_PACKAGE = "frugal.runtime.formats"

# (model folder, its manifest, threads, device): a Predictor for a classifier, a Generator for a causal LM (manifest.task)
Loader = Callable[[Path, Manifest, "int | None", str], "Predictor | Generator"]


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    load: Loader
    save: Callable[[Any, Path, Manifest], None] | None  # (the format's in-memory model, folder, manifest); None: made by a method
    packages: tuple[str, ...]  # pip distributions serving it needs besides numpy (tokenizers included where used)
    standard: str | None  # whose own loader reads the folder unchanged ("transformers", "onnxruntime"); None: frugal's own
    parts: Callable[[Path], list[Path]] = field(default=lambda folder: [])  # nested model folders (a cascade's two parts)

    @property
    def module(self) -> str:
        """The module that declares the format: what a bundle must carry to serve it."""
        return self.load.__module__


REGISTRY: dict[str, Format] = {}
_discovered = False


def register(fmt: Format) -> Format:
    if fmt.name in REGISTRY and REGISTRY[fmt.name].module != fmt.module:
        raise ValueError(f"model format {fmt.name!r} registered twice ({REGISTRY[fmt.name].module} and {fmt.module})")
    REGISTRY[fmt.name] = fmt
    return fmt


def discover() -> None:
    """Import every format module there is (a bundle carries only the ones it serves)."""
    global _discovered
    if not _discovered:
        package = importlib.import_module(FORMATS_PACKAGE)
        for found in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{FORMATS_PACKAGE}.{found.name}")
        _discovered = True


def get_format(name: str) -> Format:
    discover()
    if name not in REGISTRY:
        raise ValueError(f"unknown model format {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def load_predictor(model_dir: str | Path, threads: int | None = None, device: str = "cpu") -> Predictor:
    """The predictor of a model folder of any registered format."""
    manifest = Manifest.load(Path(model_dir))
    return get_format(manifest.format).load(Path(model_dir), manifest, threads, device)


def load_generator(model_dir: str | Path, threads: int | None = None, device: str = "cpu") -> Generator:
    """The generator of a generative model folder (manifest task "generate") of any registered format."""
    manifest = Manifest.load(Path(model_dir))
    if manifest.task != "generate":
        raise ValueError(f"{model_dir} holds a {manifest.task} model ({manifest.format}), not a generative one")
    loaded = get_format(manifest.format).load(Path(model_dir), manifest, threads, device)
    assert isinstance(loaded, Generator)
    return loaded


def save_model(model: Any, dst: Path, manifest: Manifest) -> None:
    """Save `model` in the format `manifest` names (the manifest too)."""
    fmt = get_format(manifest.format)
    if fmt.save is None:
        raise ValueError(f"format {fmt.name!r} is written by the method that makes it, not saved from a model")
    dst.mkdir(parents=True, exist_ok=True)
    fmt.save(model, dst, manifest)


def formats_of(model_dir: Path) -> list[Format]:
    """The formats a folder needs to serve: its own and, for a composite (a cascade), its parts', depth first."""
    fmt = get_format(Manifest.load(model_dir).format)
    nested = [inner for part in fmt.parts(model_dir) for inner in formats_of(part)]
    return list({f.name: f for f in [fmt, *nested]}.values())


def packages(model_dir: Path) -> tuple[str, ...]:
    """The pip packages that serve a model folder (besides numpy), parts included, in order, without repeats."""
    return tuple(dict.fromkeys(name for fmt in formats_of(model_dir) for name in fmt.packages))
