"""One training loop for every stage that trains: fine-tuning, recovery after pruning, distillation, LoRA.

Seeded batch order, model selection on val macro-F1, checkpoints from which a crashed
run resumes at the step it reached, and mixed precision (`precision`: bf16 or fp16 autocast
over fp32 weights, fp16 with a gradient scaler).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from frugal.config import TrainConfig
from frugal.errors import ConfigError, ModelError
from frugal.hardware import PRECISION_DTYPES, training_precision_unsupported
from frugal.runtime import Tokenize
from ml import checkpoints
from ml.checkpoints import TrainState
from ml.data import label_ids

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
UNLABELLED = -100  # label id of a transfer row (no label; cross-entropy ignores it)
LossFn = Callable[["torch.Tensor", "torch.Tensor", np.ndarray], "torch.Tensor"]
OutputsLossFn = Callable[[Any, dict[str, "torch.Tensor"], np.ndarray], "torch.Tensor"]


@dataclass(frozen=True)
class OutputsLoss:
    """An extra loss term on the model's whole output (hidden states, attentions), added to `loss_fn`'s.

    `fn(outputs, batch, idx)` gets the forward's output, the tokenized batch (for its attention mask)
    and the rows' indices. Intermediate-layer distillation uses it; `loss_fn` alone only sees logits.
    """

    fn: OutputsLossFn
    hidden_states: bool = False  # ask the forward for every layer's hidden states
    attentions: bool = False  # ... and attention maps (the model must use eager attention)


@dataclass
class TrainResult:
    best_val_macro_f1: float
    steps: int
    seconds: float
    device: str
    precision: str  # the compute precision of the training steps (weights stay fp32)
    trainable_params: int  # what the optimizer updated: frozen embeddings and LoRA's frozen base are left out
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int = 0  # > 0: this run continued a killed one from its checkpoint
    gave_up_at_step: int = 0  # > 0: stopped there by a GiveUp rung (its val macro-F1 could not reach the bar)

    def record(self, total_params: int) -> tuple[dict[str, Any], dict[str, float]]:
        """Params and metrics every training step logs alike (fine-tuning, LoRA, distillation, pruning recovery)."""
        params = {"train_device": self.device, "precision": self.precision, "train_steps": self.steps,
                  "trainable_params": self.trainable_params, "resumed_from_step": self.resumed_from_step}  # fmt: skip
        metrics = {"best_val_macro_f1": self.best_val_macro_f1, "trainable_share": self.trainable_params / total_params}
        return params, metrics | ({"gave_up_at_step": float(self.gave_up_at_step)} if self.gave_up_at_step else {})


@dataclass(frozen=True)
class GiveUp:
    """One rung of successive halving for a single candidate: from `after` (a share of its steps) on, a val check whose best
    macro-F1 is still below `below` stops the training, because the rest of the steps would not lift it to the bar."""

    after: float
    below: float

    def now(self, step: int, total_steps: int, best_f1: float) -> bool:
        return step < total_steps and step >= self.after * total_steps and best_f1 < self.below


def ensure_pad_token_id(config: Any, tokenizer: Any) -> None:
    """Give a decoder config (Llama, Qwen2: none of their own) a pad id: the tokenizer's pad token, else end-of-sequence.

    A decoder classifier reads the logits at each text's last non-pad token, which it finds by this id;
    without one it refuses batches of more than one text.
    """
    if config.pad_token_id is not None:
        return
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ModelError(
            "The model has no pad token id and its tokenizer has neither a pad nor an end-of-sequence token.",
            "Use a tokenizer with a pad or eos token, or set pad_token_id in the model's config.json.",
        )
    config.pad_token_id = pad


def resolve_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("finetune.device is cuda but no CUDA device is visible.", "Set finetune.device: auto or cpu.")
    return choice


def precision_problem(cfg: TrainConfig) -> str | None:
    """Why `cfg.precision` cannot train on `cfg.device` on this machine, or None where it can."""
    return training_precision_unsupported(cfg.precision, resolve_device(cfg.device))


def check_precision(cfg: TrainConfig) -> None:
    """One ConfigError, before anything is loaded or written, where the hardware lacks the training precision."""
    reason = precision_problem(cfg)
    if reason:
        raise ConfigError(
            f"finetune.precision is {cfg.precision}, but {reason}.",
            "Set finetune.precision: fp32 (runs anywhere), or bf16 on CUDA or a CPU with avx512_bf16 or amx_bf16; "
            "fp16 needs a CUDA device.",
        )


def macro_f1(model: torch.nn.Module, tokenize: Tokenize, frame: pd.DataFrame, labels: list[str], device: str) -> float:
    from sklearn.metrics import f1_score

    predicted = predict_indices(model, tokenize, list(frame["text"]), device)
    truth = frame["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
    return float(f1_score(truth, predicted, average="macro", labels=list(range(len(labels))), zero_division=0))


def predict_logits(model: torch.nn.Module, tokenize: Tokenize, texts: list[str], device: str, batch_size: int = 64) -> np.ndarray:
    import torch

    was_training = model.training
    model.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: less padding
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = [texts[i] for i in order[start : start + batch_size]]
            batch = {k: torch.from_numpy(v).to(device) for k, v in tokenize(chunk).items()}
            out.append(model(**batch).logits.float().cpu().numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0, 0))
    stacked = np.concatenate(out)
    logits = np.empty_like(stacked)
    logits[order] = stacked
    return logits


def predict_indices(model: torch.nn.Module, tokenize: Tokenize, texts: list[str], device: str) -> np.ndarray:
    return predict_logits(model, tokenize, texts, device).argmax(axis=1)


def train(
    model: torch.nn.Module,
    tokenize: Tokenize,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    labels: list[str],
    cfg: TrainConfig,
    seed: int,
    checkpoint_dir: Path | None,
    resume_key: str,
    loss_fn: LossFn | None = None,
    desc: str = "train",
    outputs_loss: OutputsLoss | None = None,
    give_up: GiveUp | None = None,
) -> TrainResult:
    """Train in place; on return the model holds the weights with the best val macro-F1 (`give_up`: stopped early when
    the val checks show the bar out of reach).

    Parameters the caller attached to the model for an `outputs_loss` (a projection) train and resume with it.
    """
    import torch
    from tqdm.auto import tqdm

    check_precision(cfg)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model.to(device).train()
    row_labels = label_ids(train_df, labels, unknown=UNLABELLED)
    texts = list(train_df["text"])
    lengths = np.array([len(t) for t in texts])
    steps_per_epoch = math.ceil(len(texts) / cfg.batch_size)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)
    optimizer, scheduler = _optimizer(model, cfg, total_steps)
    # fp16's 5-bit exponent flushes small gradients to zero: the scaler multiplies the loss up before backward and
    # skips a step whose gradients overflowed. Disabled (a pass-through) for fp32 and bf16, which has fp32's range.
    scaler = torch.amp.GradScaler(device, enabled=cfg.precision == "fp16")
    state = TrainState(best_f1=-1.0, step=0, history=[], best=None)
    if checkpoint_dir is not None:
        state = checkpoints.resume(checkpoint_dir, resume_key, model, optimizer, scheduler, scaler) or state
    resumed_from = state.step
    loss_fn = loss_fn or (lambda logits, targets, _idx: torch.nn.functional.cross_entropy(logits, targets))
    started = time.perf_counter() - state.seconds
    bar = tqdm(total=total_steps, initial=state.step, desc=desc, mininterval=5, leave=False)
    gave_up = 0
    for step in range(state.step, total_steps):
        epoch, within = divmod(step, steps_per_epoch)
        if within == 0 or step == state.step:
            batches = _epoch_batches(epoch, lengths, cfg.batch_size, seed)
        idx = batches[within]
        torch.manual_seed(seed * 1_000_003 + step)  # dropout noise depends on the step only: a resumed run repeats the original
        batch = {k: torch.from_numpy(v).to(device) for k, v in tokenize([texts[i] for i in idx]).items()}
        targets = torch.from_numpy(row_labels[idx]).to(device)
        loss = _step(model, batch, targets, idx, loss_fn, outputs_loss, cfg.precision, (optimizer, scheduler, scaler))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", best_f1=f"{state.best_f1:.3f}", refresh=False)
        done = step + 1
        if done % eval_every == 0 or done == total_steps:
            _evaluate(model, tokenize, val_df, labels, device, state, done, float(loss.item()))
            if give_up is not None and give_up.now(done, total_steps, state.best_f1):
                log.info("step %d of %d: best val macro-F1 %.4f < %.4f, giving up", done, total_steps, state.best_f1, give_up.below)
                gave_up = done
                break
        state.step, state.seconds = done, time.perf_counter() - started
        if checkpoint_dir is not None and (done % cfg.checkpoint_every_steps == 0) and done < total_steps:
            checkpoints.save(checkpoint_dir, resume_key, model, optimizer, scheduler, scaler, state)
    bar.close()
    if state.best is not None:
        model.load_state_dict(state.best)
    model.eval()  # the checkpoint stays until the caller has stored the model (see tasks/finetune.py)
    trainable = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    seconds = time.perf_counter() - started
    steps = gave_up or total_steps
    return TrainResult(state.best_f1, steps, seconds, device, cfg.precision, trainable, state.history, resumed_from, gave_up)


def _step(model: Any, batch: dict[str, Any], targets: Any, idx: np.ndarray, loss_fn: LossFn, outputs_loss: OutputsLoss | None,
          precision: str, optim: tuple[Any, Any, Any]) -> Any:  # fmt: skip
    """One optimizer step on one batch; returns the loss."""
    import torch

    optimizer, scheduler, scaler = optim
    extra = {"output_hidden_states": outputs_loss.hidden_states, "output_attentions": outputs_loss.attentions} if outputs_loss else {}
    with _autocast(precision, targets.device.type):  # the forward only: losses take fp32 logits, backward follows the forward's dtypes
        outputs = model(**batch, **extra)
    loss = loss_fn(outputs.logits.float(), targets, idx)
    if outputs_loss is not None:
        loss = loss + outputs_loss.fn(outputs, batch, idx)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)  # skipped for fp16 when a gradient overflowed; the schedule moves on regardless
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def _epoch_batches(epoch: int, lengths: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
    """Seeded batches for one epoch, grouped by length so little compute goes to padding.

    Texts are shuffled, sorted by length within windows of 50 batches, cut into batches,
    and the batches shuffled. The same seed gives the same batches, so a resumed run
    continues the original one.
    """
    rng = np.random.default_rng(seed + epoch)
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, total_steps: int) -> tuple[Any, Any]:
    import torch

    if cfg.freeze_embeddings:
        for name, param in model.named_parameters():
            if "word_embeddings" in name:
                param.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _autocast(precision: str, device: str) -> Any:
    """Autocast to the precision's dtype: matmuls run in bf16/fp16, precision-sensitive ops (softmax, norms) stay fp32.

    Validation (`macro_f1`) runs outside it, in fp32: the model is saved and served in fp32, so model selection
    measures what will serve, and the val F1 of an fp32 and a bf16 run compare like for like.
    """
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=getattr(torch, PRECISION_DTYPES[precision]))


def _evaluate(
    model: Any, tokenize: Tokenize, val_df: pd.DataFrame, labels: list[str], device: str, state: TrainState, step: int, loss: float
) -> None:
    f1 = macro_f1(model, tokenize, val_df, labels, device)
    state.history.append({"step": step, "train_loss": loss, "val_macro_f1": f1})
    if f1 > state.best_f1:
        state.best_f1 = f1
        state.best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    log.info("step %d: val macro-F1 %.4f (best %.4f)", step, f1, state.best_f1)
