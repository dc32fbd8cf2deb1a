"""Artifacts as local folders: used in place when the store is a local folder, else downloaded once into a cache.

The pipeline's model store (tasks/plumbing/store.py) and the serving app's registry source
(frugal/serve/source.py) both fetch through here, so a model is never copied out of a local store
and a download never leaves half a folder in the cache.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse


def fetch_once(cached: Path, scratch: Path, download: Callable[[Path], Path]) -> Path:
    """`cached`, downloading it first if missing: `download(tmp)` fills a fresh folder under `scratch` (the cache's root,
    same file system), and what it returns is renamed to `cached`.

    A crash mid-download never leaves a partial folder in the cache; when two processes race, the first rename wins.
    """
    if cached.exists():
        return cached
    tmp = scratch / f".{uuid.uuid4().hex}"
    try:
        got = download(tmp)
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            got.rename(cached)
        except OSError:  # another process cached it first
            if not cached.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached


def in_place(artifact_uri: str) -> Path | None:
    """The artifact's own folder when its store is on this file system (file: or a bare path) and it exists there, else None."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path))
        if path.exists():
            return path
    return None
