"""Helpers the compression methods share (not a method: discovery skips modules starting with _)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from frugal.config import TrainConfig
from frugal.errors import SkipVariant
from frugal.runtime import Tokenize
from frugal.runtime.manifest import Manifest
from ml.compress.base import CompressContext, MethodOptions, StepReport
from ml.compress.transfer import cached_teacher_view, intermediate_loss, layer_pairs
from ml.data import labelled_rows
from ml.training import UNLABELLED, GiveUp, LossFn, TrainResult, precision_problem, resolve_device, train

if TYPE_CHECKING:
    import torch


def labelled_train(ctx: CompressContext) -> pd.DataFrame:
    """The train rows fine-tuning learned labels from."""
    return labelled_rows(pd.read_parquet(ctx.data / "train.parquet"), ctx.train.max_rows, ctx.seed)


def val_split(ctx: CompressContext) -> pd.DataFrame:
    return pd.read_parquet(ctx.data / "val.parquet")


def calibration_texts(ctx: CompressContext, n: int) -> list[str]:
    """`n` train texts (a seeded sample of the rows fine-tuning saw) that static int8 sets its activation ranges on."""
    train = labelled_train(ctx)
    return list(train.sample(n=min(n, len(train)), random_state=ctx.seed)["text"])


def with_transfer_rows(labelled: pd.DataFrame, ctx: CompressContext, transfer_rows: int) -> pd.DataFrame:
    """`labelled` plus up to `transfer_rows` other train rows with their labels hidden (teacher targets only).

    The student never sees more labels than the fine-tuned teacher did, so the comparison stays fair.
    """
    if transfer_rows <= 0:
        return labelled
    rest = pd.read_parquet(ctx.data / "train.parquet")
    rest = rest[~rest["text"].isin(set(labelled["text"]))]
    extra = rest.sample(n=min(transfer_rows, len(rest)), random_state=ctx.seed).assign(label=None)
    return pd.concat([labelled, extra], ignore_index=True)


class TrainingOptions(MethodOptions):
    """Options of a method that trains (distill, prune recovery, LoRA, distill_student)."""

    precision: Literal["fp32", "bf16", "fp16"] | None = Field(
        None, description="Training precision (see finetune.precision); null = finetune.precision. Skipped where the hardware lacks it."
    )
    give_up_below: float | None = Field(
        None, ge=0, le=1, description="Stop training at a val check past `give_up_after` whose best macro-F1 is below this; null = never."
    )
    give_up_after: float = Field(0.5, gt=0, le=1, description="Share of the training steps before `give_up_below` is checked.")

    def give_up(self) -> GiveUp | None:
        return None if self.give_up_below is None else GiveUp(self.give_up_after, self.give_up_below)

    def trains(self) -> bool:
        return True


def train_config(ctx: CompressContext, **overrides: Any) -> TrainConfig:
    """The fine-tuning settings with a method's own overrides (None = keep the fine-tuning value)."""
    return training_settings(ctx.train, **overrides)


def training_settings(train: TrainConfig, **overrides: Any) -> TrainConfig:
    """`train` with the non-None overrides; SkipVariant where this machine cannot train in the resulting precision.

    (A variant, unlike the baseline, can be left out, with the reason.)
    """
    cfg = train.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    reason = precision_problem(cfg)
    if reason:
        raise SkipVariant(f"training precision {cfg.precision} is not available here: {reason}")
    return cfg


def check_training_precision(options: MethodOptions, train: TrainConfig) -> None:
    """SkipVariant before a training method's step run starts, where this machine lacks its precision."""
    if isinstance(options, TrainingOptions) and options.trains():
        training_settings(train, precision=options.precision)


def distillation_loss(teacher_logits: np.ndarray, temperature: float, alpha: float) -> LossFn:
    """alpha * KL(student || teacher) at temperature T (scaled by T^2) + (1 - alpha) * cross-entropy on labels."""
    import torch
    import torch.nn.functional as F

    targets = torch.from_numpy(teacher_logits).float()

    def loss(logits: torch.Tensor, labels: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        teacher = targets[torch.from_numpy(np.asarray(idx))].to(logits.device)
        soft = F.kl_div(
            F.log_softmax(logits / temperature, -1), F.log_softmax(teacher / temperature, -1), log_target=True, reduction="batchmean"
        )
        return alpha * soft * temperature**2 + (1 - alpha) * labelled_cross_entropy(logits, labels)

    return loss


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled rows; 0 for a batch of transfer rows only.

    (PyTorch's mean over zero unignored rows is NaN, and one NaN step ruins every weight.)
    """
    import torch.nn.functional as F

    labelled = int((labels != UNLABELLED).sum())
    return F.cross_entropy(logits, labels, ignore_index=UNLABELLED, reduction="sum") / max(labelled, 1)


def train_with_teacher(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    src: Path,
    ctx: CompressContext,
    cfg: TrainConfig,
    temperature: float,
    alpha: float,
    desc: str,
    transfer_rows: int = 0,
    hidden_weight: float = 0.0,
    give_up: GiveUp | None = None,
) -> TrainResult:
    """Train `student` on the labelled rows, distilling from `teacher` (also on `transfer_rows` unlabelled rows) when given;
    with `hidden_weight`, each student layer's pooled hidden state also matches its teacher layer's (same width: a student
    cut from the teacher)."""
    manifest = Manifest.load(src)
    tokenize = Tokenize(src, manifest.max_length)
    train_df, val_df = labelled_train(ctx), val_split(ctx)
    loss, extra = None, None
    if teacher is not None and alpha > 0:
        train_df = with_transfer_rows(train_df, ctx, transfer_rows)
        hidden = hidden_weight > 0
        pairs = layer_pairs(student.config.num_hidden_layers, teacher.config.num_hidden_layers) if hidden else []
        texts, device = list(train_df["text"]), resolve_device(cfg.device)
        view = cached_teacher_view(ctx.scratch / "teacher", src, manifest.max_length, teacher, texts, device, [t for _, t in pairs], hidden)
        loss = distillation_loss(view.logits, temperature, alpha)
        if hidden:
            extra = intermediate_loss(view, pairs, [lambda pooled: pooled] * len(pairs), hidden_weight)  # same width: no projection
    return train(
        student, tokenize, train_df, val_df, ctx.labels, cfg, ctx.seed,
        checkpoint_dir=ctx.checkpoint, resume_key=ctx.checkpoint.name if ctx.checkpoint else "", loss_fn=loss, desc=desc,
        outputs_loss=extra, give_up=give_up,
    )  # fmt: skip


def training_report(result: TrainResult, total: int, **params: Any) -> StepReport:
    """What a training method records (its val checks as a curve); its time is recorded by the compress stage for every method alike."""
    recorded, metrics = result.record(total)
    notes = []
    if result.gave_up_at_step:
        notes.append(f"Gave up at step {result.gave_up_at_step}: best val macro-F1 {result.best_val_macro_f1:.4f} was below the bar.")
    return StepReport(params={**recorded, **params}, metrics=metrics, notes=notes, history=result.history)
