"""Training checkpoints: where a crashed or killed training run resumes, at the step it reached.

A checkpoint is a `step-<n>/` folder (weights, the best weights so far, optimizer, scheduler and
gradient-scaler state) plus `progress.json` naming it, replaced by one atomic rename. `key` ties a
checkpoint to its config and data version: another run's checkpoint is ignored, not resumed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frugal.hashing import digest
from frugal.paths import ProjectPaths

log = logging.getLogger(__name__)


def checkpoint_dir(paths: ProjectPaths, stage_name: str, *inputs: object) -> Path:
    """Where a training stage keeps its resume point: named by what it trains on, so only the same work resumes it."""
    return paths.work / "checkpoints" / f"{stage_name}-{digest(*inputs)}"


@dataclass
class TrainState:
    """Where a training run stands: what a checkpoint saves besides the tensors."""

    best_f1: float
    step: int
    history: list[dict[str, float]]
    best: dict[str, Any] | None
    seconds: float = 0.0


def save(ckpt: Path, key: str, model: Any, optimizer: Any, scheduler: Any, scaler: Any, state: TrainState) -> None:
    """Write the step's folder in full, then point progress.json at it with one atomic rename.

    A process killed at any instant (SIGKILL, out of memory) leaves progress.json naming a complete
    folder: the previous step's until the rename, this one's after. (Removing the old folder before
    renaming the new one in its place left a window with no checkpoint at all.)
    """
    import torch
    from safetensors.torch import save_file

    folder = ckpt / f"step-{state.step:09d}"
    tmp = ckpt / f".writing-{state.step:09d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_unshared(model.state_dict()), str(tmp / "model.safetensors"))
    if state.best is not None:
        save_file(_unshared(state.best), str(tmp / "best.safetensors"))
    # The scaler's current loss scale resumes with the run (an empty dict when disabled).
    states = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}
    torch.save(states, tmp / "optimizer.pt")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    progress = {"key": key, "step": state.step, "folder": folder.name, "best_f1": state.best_f1, "history": state.history,
                "seconds": state.seconds}  # fmt: skip
    (ckpt / "progress.json.tmp").write_text(json.dumps(progress))
    os.replace(ckpt / "progress.json.tmp", ckpt / "progress.json")
    for old in ckpt.glob("step-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def _unshared(tensors: dict[str, Any]) -> dict[str, Any]:
    """Contiguous tensors, a copy of any that shares memory with an earlier one: safetensors refuses shared tensors, and a
    causal LM's tied embedding and LM head are one (loading writes the same values into both names)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone().contiguous() if pointer in seen else tensor.contiguous()
        seen.add(pointer)
    return out


def resume(ckpt: Path, key: str, model: Any, optimizer: Any, scheduler: Any, scaler: Any) -> TrainState | None:
    import torch
    from safetensors.torch import load_file

    progress_file = ckpt / "progress.json"
    if not progress_file.is_file():
        return None
    progress = json.loads(progress_file.read_text())
    if progress["key"] != key:
        log.info("Ignoring checkpoint in %s: it belongs to another config or data version", ckpt)
        return None
    if "folder" not in progress:  # written by an older frugal, which kept the files beside progress.json
        log.info("Ignoring checkpoint in %s: an older checkpoint layout", ckpt)
        return None
    folder = ckpt / progress["folder"]
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    states = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    if states["scaler"]:  # empty when the scaler was off (fp32, bf16)
        scaler.load_state_dict(states["scaler"])
    best = load_file(str(folder / "best.safetensors")) if (folder / "best.safetensors").is_file() else None
    log.info("Resuming from checkpoint at step %d", progress["step"])
    return TrainState(progress["best_f1"], progress["step"], progress["history"], best, progress.get("seconds", 0.0))
