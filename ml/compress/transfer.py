"""What a student learns from its teacher beyond the labels: soft targets and, where shapes allow, hidden states and attention.

The teacher reads every training text once (`teacher_view`) before the student trains; `intermediate_loss`
compares the student's outputs with that view. `distill` (a student cut from the teacher) and
`distill_student` (a different pretrained model) both use it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from frugal.hashing import digest
from frugal.runtime import Tokenize
from ml.modeling import mean_pool
from ml.training import OutputsLoss

if TYPE_CHECKING:
    import torch


def kept_layers(teacher_depth: int, student_depth: int) -> list[int]:
    """Evenly spaced teacher layers, the last of each block: 6 -> 3 keeps [1, 3, 5]."""
    if student_depth > teacher_depth:
        raise ValueError(f"a {student_depth}-layer student cannot come from a {teacher_depth}-layer teacher")
    return [round((i + 1) * teacher_depth / student_depth) - 1 for i in range(student_depth)]


def layer_pairs(student_depth: int, teacher_depth: int) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs, 0-based: each layer of the shallower model with an evenly spaced one of the other."""
    if student_depth <= teacher_depth:
        return list(enumerate(kept_layers(teacher_depth, student_depth)))
    return [(s, t) for t, s in enumerate(kept_layers(student_depth, teacher_depth))]


@dataclass
class TeacherView:
    """What the student learns from, computed once per text before it trains."""

    logits: np.ndarray  # [rows, labels]
    hidden: np.ndarray | None  # [rows, pairs, teacher width]: mean-pooled hidden states of the mapped layers
    attention: list[np.ndarray] | None  # per row [pairs, tokens, tokens]: head-averaged attention of the mapped layers


def teacher_view(
    model: Any, tokenize: Tokenize, texts: list[str], device: str, layers: list[int], hidden: bool, attention: bool
) -> TeacherView:
    """Logits, and for `layers` the pooled hidden states and attention maps (cut to each text's tokens), in `texts` order."""
    import torch

    logits, pooled, maps = [], [], []
    model.to(device).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            batch = {k: torch.from_numpy(v).to(device) for k, v in tokenize([texts[i] for i in order[start : start + 32]]).items()}
            out = model(**batch, output_hidden_states=hidden, output_attentions=attention)
            logits.append(out.logits.float().cpu().numpy())
            if hidden:
                pooled.append(torch.stack([mean_pool(out.hidden_states[t + 1].float(), batch["attention_mask"]) for t in layers], 1))
            if attention:
                heads = torch.stack([out.attentions[t].float().mean(1) for t in layers], 1).cpu().numpy()  # [batch, pairs, L, L]
                maps += [m[:, :n, :n] for m, n in zip(heads, batch["attention_mask"].sum(1).tolist(), strict=True)]
    back = np.argsort(order, kind="stable")  # sorted position of each original row
    return TeacherView(
        np.concatenate(logits)[back],
        torch.cat(pooled).cpu().numpy()[back] if hidden else None,
        [maps[i] for i in back] if attention else None,
    )


def intermediate_loss(view: TeacherView, pairs: list[tuple[int, int]], projections: Any, weight: float) -> OutputsLoss:
    """MSE of layer-normalised pooled hidden states and/or KL of attention maps, averaged over the layer pairs."""
    import torch
    import torch.nn.functional as F

    hidden = torch.from_numpy(view.hidden) if view.hidden is not None else None

    def loss(outputs: Any, batch: dict[str, torch.Tensor], idx: np.ndarray) -> torch.Tensor:
        mask, total = batch["attention_mask"], torch.zeros((), device=batch["attention_mask"].device)
        rows = torch.from_numpy(np.asarray(idx))
        for p, (s, _) in enumerate(pairs):
            if hidden is not None:
                target = hidden[rows, p].to(mask.device)
                mine = projections[p](mean_pool(outputs.hidden_states[s + 1].float(), mask))
                total = total + F.mse_loss(F.layer_norm(mine, mine.shape[-1:]), F.layer_norm(target, target.shape[-1:]))
            if view.attention is not None:
                mine = outputs.attentions[s].float().mean(1)  # [batch, L, L]
                target = torch.zeros_like(mine)
                for b, i in enumerate(idx):
                    n = view.attention[i].shape[-1]
                    target[b, :n, :n] = torch.from_numpy(view.attention[i][p])
                kl = torch.where(target > 0, target * (target.clamp(min=1e-12).log() - mine.clamp(min=1e-12).log()), 0.0)
                total = total + kl.sum() / mask.sum()  # mean KL per real query token
        return weight * total / len(pairs)

    return OutputsLoss(loss, hidden_states=hidden is not None, attentions=view.attention is not None)


def folder_digest(folder: Path) -> str:
    """sha256 of every file's relative path and bytes: the same model gives the same digest wherever it is stored."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(file.relative_to(folder)).encode())
        h.update(file.read_bytes())
    return h.hexdigest()[:16]


def cached_teacher_view(
    cache: Path, src: Path, max_length: int, model: Any, texts: list[str], device: str, layers: list[int], hidden: bool
) -> TeacherView:
    """`teacher_view` (the teacher in `src`, its tokenizer truncating at `max_length`) without attention maps, kept in `cache`
    under the teacher's and the texts' content: the search's candidates all learn from the same teacher on the same texts,
    so only the first pays for the teacher's pass."""
    layers = layers if hidden else []  # without hidden states the layers change nothing: one entry, whoever asks
    key = digest(folder_digest(src), max_length, hashlib.sha256("\x00".join(texts).encode()).hexdigest(), layers, hidden)
    file = Path(cache) / f"teacher-{key}.npz"
    if file.exists():
        saved = np.load(file)
        return TeacherView(saved["logits"], saved["hidden"] if hidden else None, None)
    view = teacher_view(model, Tokenize(src, max_length), texts, device, layers, hidden, attention=False)
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(".partial.npz")  # a crash mid-write leaves no half file under the real name
    np.savez(partial, logits=view.logits, hidden=view.hidden if hidden else np.zeros(0))
    partial.replace(file)
    return view
