"""Layer dropping and knowledge distillation for causal LMs: a fine-tuned model cut to fewer decoder layers learns from it.

The cut keeps whole decoder layers of the teacher (same width, same tokenizer), so the student can also be the teacher's
speculative draft. Training mixes two kinds of distillation (Hinton et al. 2015; Kim & Rush 2016):

- token level: on each response token, KL(teacher || student) of the next-token distributions at a temperature T (scaled
  by T^2 so its gradients keep their size), plus (1 - alpha) of the cross-entropy on the row's response;
- sequence level: rows whose responses are the teacher's own greedy answers (``teacher_answers``), learned like references.

Checkpoints and resume go through ml/checkpoints.py, like every other training of frugal.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from frugal.errors import ConfigError
from ml import checkpoints
from ml.checkpoints import TrainState
from ml.generation.batches import IGNORE, collate, render_prompt

if TYPE_CHECKING:
    import torch

    from frugal.config import TrainConfig

Row = tuple[list[int], list[int]]  # (input_ids, labels) of one pair: ml/generation/batches.py `encode_pair`


def kept_layers(depth: int, keep: int) -> list[int]:
    """Which of `depth` decoder layers a `keep`-layer student keeps: evenly spaced, the first and the last always among them.

    The first layer turns token embeddings into what every later layer reads and the last writes what the final norm and the
    LM head read: dropping either costs far more than any middle layer, whose neighbours are near-redundant (Men et al. 2024,
    ShortGPT; Gromov et al. 2024). One layer: the first, for the same reason.
    """
    if not 1 <= keep < depth:
        raise ConfigError(
            f"layer_drop keep_layers={keep} must be at least 1 and fewer than the model's {depth} decoder layers.",
            f"Set keep_layers between 1 and {depth - 1}.",
        )
    if keep == 1:
        return [0]
    return [round(i * (depth - 1) / (keep - 1)) for i in range(keep)]  # distinct: the spacing is at least 1


def cut_layers(model: torch.nn.Module, keep: int) -> tuple[torch.nn.Module, list[int]]:
    """A copy of `model` with only `keep` of its decoder layers (``kept_layers``), config and KV-cache indices renumbered."""
    import torch

    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(f"layer_drop cannot find the decoder layers of a {type(model).__name__}.",
                          "Use a Llama-style causal LM (model.layers), e.g. SmolLM2, Qwen2 or Llama.")  # fmt: skip
    kept = kept_layers(len(layers), keep)
    student = copy.deepcopy(model)
    student.get_decoder().layers = torch.nn.ModuleList([student.get_decoder().layers[i] for i in kept])
    for new, layer in enumerate(student.get_decoder().layers):
        for module in layer.modules():  # the KV cache is indexed by layer_idx: a gap would read another layer's keys
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    config = student.config
    config.num_hidden_layers = keep
    if getattr(config, "layer_types", None):  # per-layer attention kinds (sliding / full) follow their layers
        config.layer_types = [config.layer_types[i] for i in kept]
    return student, kept


def teacher_answers(teacher: Any, tokenizer: Any, prompts: list[str], chat: bool, max_new_tokens: int, batch_size: int,
                    eos_ids: list[int]) -> list[str]:  # fmt: skip
    """The teacher's greedy answer to each prompt (sequence-level KD's responses), cut at its first end of sequence (any of
    `eos_ids`, as serving stops) and without it: ``encode_pair`` appends the tokenizer's own."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    answers = []
    for start in range(0, len(prompts), batch_size):
        ids = [tokenizer.encode(render_prompt(tokenizer, p, chat), add_special_tokens=False) for p in prompts[start : start + batch_size]]
        width = max(map(len, ids))  # left padding: every row's answer starts at the same column
        inputs = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=teacher.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=teacher.device)
        with torch.inference_mode():
            out = teacher.generate(inputs, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_ids,
                                   pad_token_id=pad)  # fmt: skip
        for row in out[:, width:].tolist():
            end = next((i for i, token in enumerate(row) if token in eos_ids), len(row))
            answers.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return answers


@dataclass(frozen=True)
class KD:
    token: bool  # token-level KD on the teacher's logits (else the cross-entropy on each row's response only)
    temperature: float
    alpha: float  # weight of the token-level KD; 1 - alpha goes to the row's response


@dataclass
class DistillResult:
    steps: int
    seconds: float
    best_val_kl: float
    resumed_from: int
    history: list[dict[str, float]] = field(default_factory=list)


def scored(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict a scored token (the response's) and those tokens: logits at t predict the label at t + 1."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    return logits[:, :-1][keep].float(), targets[keep]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, kd: KD) -> torch.Tensor:
    """alpha * T^2 * KL(teacher || student) at temperature T + (1 - alpha) * cross-entropy, over the response tokens."""
    import torch.nn.functional as F

    s, targets = scored(student, labels)
    ce = F.cross_entropy(s, targets)
    if teacher is None or not kd.token:
        return ce
    t, _ = scored(teacher, labels)
    T = kd.temperature
    kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean")
    return kd.alpha * kl * T**2 + (1 - kd.alpha) * ce


def val_losses(student: Any, teacher: Any, rows: list[Row], pad_id: int, batch_size: int) -> dict[str, float]:
    """On the val pairs' response tokens: KL(teacher || student) at T = 1 (``kl``) and the student's cross-entropy (``ce``)."""
    import torch
    import torch.nn.functional as F

    kl = ce = 0.0
    tokens = 0
    student.eval()
    with torch.inference_mode():
        for batch in _batches(rows, np.arange(len(rows)), batch_size, pad_id, student.device):
            s, targets = scored(_logits(student, batch), batch["labels"])
            t, _ = scored(_logits(teacher, batch), batch["labels"])
            kl += float(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum"))
            ce += float(F.cross_entropy(s, targets, reduction="sum"))
            tokens += len(targets)
    return {"kl": kl / max(tokens, 1), "ce": ce / max(tokens, 1)}


def distill(student: Any, teacher: Any, train_rows: list[Row], val_rows: list[Row], kd: KD, cfg: TrainConfig, seed: int,
            pad_id: int, checkpoint: Path | None) -> DistillResult:  # fmt: skip
    """Train `student` in place on `train_rows`; on return it holds the weights with the lowest val KL to the teacher."""
    import torch

    device = student.device
    teacher.eval()
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)
    optimizer, scheduler = _optimizer(student, cfg, total)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")  # fp16's small gradients: see ml/training.py
    # TrainState's score slot is "higher is better" (a classifier's macro-F1): here the negated val KL.
    state = TrainState(best_f1=-math.inf, step=0, history=[], best=None)
    key = checkpoint.name if checkpoint else ""
    if checkpoint is not None:
        state = checkpoints.resume(checkpoint, key, student, optimizer, scheduler, scaler) or state
    resumed_from, started = state.step, time.perf_counter() - state.seconds
    for step in range(state.step, total):
        epoch, within = divmod(step, steps_per_epoch)
        if within == 0 or step == resumed_from:
            order = np.random.default_rng(seed + epoch).permutation(len(train_rows))  # seeded: a resumed run repeats the original
        student.train()
        batch = next(_batches(train_rows, order[within * cfg.batch_size :][: cfg.batch_size], cfg.batch_size, pad_id, device))
        with _autocast(cfg.precision, device.type):
            teacher_logits = _logits(teacher, batch) if kd.token else None
            loss = kd_loss(_logits(student, batch, grad=True), teacher_logits, batch["labels"], kd)
        _update(loss, student, optimizer, scheduler, scaler)
        done = step + 1
        if done % eval_every == 0 or done == total:
            _check(student, teacher, val_rows, pad_id, cfg.batch_size, state, done, loss.item())
        state.step, state.seconds = done, time.perf_counter() - started
        if checkpoint is not None and done % cfg.checkpoint_every_steps == 0 and done < total:
            checkpoints.save(checkpoint, key, student, optimizer, scheduler, scaler, state)
    if state.best is not None:
        student.load_state_dict(state.best)
    student.eval()
    return DistillResult(total, time.perf_counter() - started, -state.best_f1, resumed_from, state.history)


def _update(loss: torch.Tensor, model: Any, optimizer: Any, scheduler: Any, scaler: Any) -> None:
    """One optimizer step: gradients clipped at norm 1 (unscaled first under fp16), then the schedule moves on."""
    import torch

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _check(student: Any, teacher: Any, rows: list[Row], pad_id: int, batch_size: int, state: TrainState, step: int, loss: float) -> None:
    """One val check: record it, and keep the weights when their KL to the teacher is the lowest yet."""
    val = val_losses(student, teacher, rows, pad_id, batch_size)
    state.history.append({"step": step, "train_loss": loss, "val_kl": val["kl"], "val_loss": val["ce"]})
    if -val["kl"] > state.best_f1:
        state.best_f1 = -val["kl"]
        state.best = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}


def _batches(rows: list[Row], order: np.ndarray, batch_size: int, pad_id: int, device: Any) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(order), batch_size):
        batch = collate([rows[i] for i in order[start : start + batch_size]], pad_id)
        yield {k: v.to(device) for k, v in batch.items()}


def _logits(model: Any, batch: dict[str, torch.Tensor], grad: bool = False) -> torch.Tensor:
    import torch

    with torch.enable_grad() if grad else torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _optimizer(model: Any, cfg: TrainConfig, total: int) -> tuple[Any, Any]:
    """AdamW with linear warmup and decay (fine-tuning's schedule); a frozen embedding (finetune.freeze_embeddings) stays frozen."""
    import torch

    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total)

    def schedule(step: int) -> float:
        return (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _autocast(precision: str, device: str) -> Any:
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
