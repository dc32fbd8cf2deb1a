"""A short stable hash of JSON-able parts: names checkpoint folders and on-disk caches by what they hold."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(*parts: Any) -> str:
    """sha256 of the parts as sorted JSON (pydantic models are dumped first), 16 hex digits."""
    plain = [p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]
