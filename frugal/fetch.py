"""Fill a cache folder once, atomically: model stores in tasks/ and the serving app share this."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


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
