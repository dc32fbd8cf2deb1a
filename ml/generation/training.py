"""Fine-tuning a causal LM on prompt/response pairs: next-token cross-entropy on the response (and its end of sequence) only.

The loop of ml/training.py, for causal LMs: the same seeded length-grouped batches, optimizer and schedule, mixed-precision
step and checkpoints (ml/checkpoints.py; a killed run resumes at the step it reached and ends as the uninterrupted one
would). What differs is the rows (ml/generation/batches.py: token ids and labels, not texts and class ids) and the model
selection: the lowest val loss on response tokens, measured in fp32 (`TrainState.best_f1` holds the best score, higher is
better: here minus that loss).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from frugal.config import TrainConfig
from ml import checkpoints
from ml.checkpoints import TrainState
from ml.generation.batches import IGNORE, collate, encode_pair, pad_token_id, response_loss
from ml.training import _epoch_batches, _optimizer, _step, check_precision, resolve_device

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
Pair = tuple[list[int], list[int]]  # (input_ids, labels) of one row


@dataclass
class CausalTrainResult:
    best_val_loss: float  # mean cross-entropy per response token on val (nats), at the kept weights
    steps: int
    seconds: float
    device: str
    precision: str
    trainable_params: int
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int = 0

    def record(self, total_params: int) -> tuple[dict[str, Any], dict[str, float]]:
        """The params and metrics a generative fine-tune logs (those of ml/training.py's TrainResult, with val loss)."""
        params = {"train_device": self.device, "precision": self.precision, "train_steps": self.steps,
                  "trainable_params": self.trainable_params, "resumed_from_step": self.resumed_from_step}  # fmt: skip
        metrics = {"best_val_loss": self.best_val_loss, "trainable_share": self.trainable_params / total_params}
        return params, metrics


def encode_pairs(tokenizer: Any, frame: pd.DataFrame, chat: bool, max_length: int) -> list[Pair]:
    """Each row's (input_ids, labels): a frame of `prompt` and `response` columns (ml/generation/data.py's splits)."""
    return [encode_pair(tokenizer, p, r, chat, max_length) for p, r in zip(frame["prompt"], frame["response"], strict=True)]


def train_causal(
    model: torch.nn.Module,
    tokenizer: Any,
    train_pairs: list[Pair],
    val_pairs: list[Pair],
    cfg: TrainConfig,
    seed: int,
    checkpoint_dir: Path | None,
    resume_key: str,
    desc: str = "finetune",
) -> CausalTrainResult:
    """Train in place; on return the model holds the weights with the lowest val loss on response tokens."""
    import torch
    from tqdm.auto import tqdm

    pad_id = pad_token_id(tokenizer)
    lengths = np.array([len(ids) for ids, _ in train_pairs])
    steps_per_epoch = math.ceil(len(train_pairs) / cfg.batch_size)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)
    device, (optimizer, scheduler, scaler) = _prepare(model, cfg, total_steps)
    state = TrainState(best_f1=-math.inf, step=0, history=[], best=None)
    if checkpoint_dir is not None:
        state = checkpoints.resume(checkpoint_dir, resume_key, model, optimizer, scheduler, scaler) or state
    resumed_from = state.step
    started = time.perf_counter() - state.seconds
    bar = tqdm(total=total_steps, initial=state.step, desc=desc, mininterval=5, leave=False)
    for step in range(state.step, total_steps):
        epoch, within = divmod(step, steps_per_epoch)
        if within == 0 or step == state.step:
            batches = _epoch_batches(epoch, lengths, cfg.batch_size, seed)
        idx = batches[within]
        torch.manual_seed(seed * 1_000_003 + step)  # dropout noise depends on the step only: a resumed run repeats the original
        batch = {k: v.to(device) for k, v in collate([train_pairs[i] for i in idx], pad_id).items()}
        labels = batch.pop("labels")
        loss = _step(model, batch, labels, idx, _response_loss, None, cfg.precision, (optimizer, scheduler, scaler))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        done = step + 1
        if done % eval_every == 0 or done == total_steps:
            _evaluate(model, val_pairs, pad_id, cfg.batch_size, device, state, done, float(loss.item()))
        state.step, state.seconds = done, time.perf_counter() - started
        if checkpoint_dir is not None and (done % cfg.checkpoint_every_steps == 0) and done < total_steps:
            checkpoints.save(checkpoint_dir, resume_key, model, optimizer, scheduler, scaler, state)
    bar.close()
    if state.best is not None:
        model.load_state_dict(state.best)
    model.eval()  # the checkpoint stays until the caller has stored the model
    trainable = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    seconds = time.perf_counter() - started
    return CausalTrainResult(-state.best_f1, total_steps, seconds, device, cfg.precision, trainable, state.history, resumed_from)


def _prepare(model: torch.nn.Module, cfg: TrainConfig, total_steps: int) -> tuple[str, tuple[Any, Any, Any]]:
    """The device (model moved there, in train mode) and the optimizer, schedule and fp16 gradient scaler of ml/training.py."""
    import torch

    check_precision(cfg)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model.to(device).train()
    if cfg.freeze_embeddings:  # ml/training.py freezes encoders' `word_embeddings`; a causal LM's are its input embeddings
        model.get_input_embeddings().requires_grad_(False)
    optimizer, scheduler = _optimizer(model, cfg, total_steps)
    return device, (optimizer, scheduler, torch.amp.GradScaler(device, enabled=cfg.precision == "fp16"))


def _response_loss(logits: torch.Tensor, labels: torch.Tensor, _idx: np.ndarray) -> torch.Tensor:
    return response_loss(logits, labels)


def val_loss(model: torch.nn.Module, pairs: list[Pair], pad_id: int, batch_size: int, device: str) -> float:
    """Mean cross-entropy per response token over `pairs` (every scored token weighs the same), in fp32, no gradients."""
    import torch

    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in collate(pairs[start : start + batch_size], pad_id).items()}
            labels = batch.pop("labels")
            scored = int((labels[:, 1:] != IGNORE).sum())
            if scored:
                total += float(response_loss(model(**batch).logits, labels)) * scored
                tokens += scored
    model.train(was_training)
    return total / tokens if tokens else math.nan


def _evaluate(model: Any, pairs: list[Pair], pad_id: int, batch_size: int, device: str, state: TrainState, step: int, loss: float) -> None:
    value = val_loss(model, pairs, pad_id, batch_size, device)
    state.history.append({"step": step, "train_loss": loss, "val_loss": value})
    if -value > state.best_f1:  # NaN (no val tokens) never wins: the last weights stay
        state.best_f1 = -value
        state.best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    log.info("step %d: val loss %.4f (best %.4f)", step, value, -state.best_f1)
