"""The model folder every stage reads and writes: its manifest, its tokenizer, its size.

A model folder holds ``frugal.json`` (the manifest: format, labels, lineage), the files of its
format (frugal/runtime/formats/: one module per format says what they are and how they load),
and ``tokenizer/`` (the fast tokenizer serving counts and encodes with).

Weights are only ever read from safetensors, ONNX or OpenVINO IR: nothing here unpickles.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "frugal.json"
TOKENIZER_DIR = "tokenizer"


@dataclass
class Manifest:
    format: str
    labels: list[str]
    max_length: int
    params: int
    dtype: str = "float32"
    lineage: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    task: str = "classify"  # generate: a causal LM (labels empty; max_length = the context, prompt + new tokens)

    def save(self, model_dir: Path) -> None:
        (model_dir / MANIFEST).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, model_dir: Path) -> Manifest:
        path = Path(model_dir) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} is not a frugal model folder (no {MANIFEST})")
        return cls(**json.loads(path.read_text()))

    def derive(self, **changes: Any) -> Manifest:
        """A manifest for a model made from this one by a further step."""
        data = asdict(self) | changes
        return Manifest(**data)


def copy_tokenizer(src_dir: Path, dst_dir: Path) -> None:
    shutil.copytree(Path(src_dir) / TOKENIZER_DIR, Path(dst_dir) / TOKENIZER_DIR, dirs_exist_ok=True)


def model_size_mb(model_dir: Path) -> float:
    """Size on disk of what serving loads besides the tokenizer: weights, graph and config."""
    model_dir = Path(model_dir)
    files = [p for p in model_dir.rglob("*") if p.is_file() and TOKENIZER_DIR not in p.relative_to(model_dir).parts]
    return sum(p.stat().st_size for p in files) / 1e6
