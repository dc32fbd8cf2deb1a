"""Layer dropping + distillation for causal LMs: the fine-tuned model cut to `keep_layers` decoder layers, then distilled.

The student is a copy of the fine-tuned model with only some of its decoder layers (ml/generation/distill.py `cut_layers`:
evenly spaced, first and last kept), so it keeps the tokenizer and can be speculative decoding's draft. It learns from the
fine-tuned model by token-level KD on its logits, sequence-level KD on its greedy answers to train prompts, or both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from pydantic import Field

from frugal.errors import ConfigError
from frugal.runtime.formats.causal import load_causal
from frugal.runtime.manifest import TOKENIZER_DIR, copy_tokenizer
from frugal.runtime.registry import save_model
from ml.compress.base import CompressContext, Method, MethodOptions, StepReport, register
from ml.compress.common import training_settings
from ml.generation.batches import encode_pair, eos_token_id, pad_token_id
from ml.generation.distill import KD, Row, cut_layers, distill, teacher_answers, val_losses
from ml.training import resolve_device

if TYPE_CHECKING:
    from frugal.config import GenerateConfig

Answer = Callable[[list[str]], list[str]]  # prompts -> the teacher's greedy answers
ANSWERS = "teacher_answers.parquet"  # sequence-level KD's responses, kept beside the checkpoint: generated once per step


class LayerDropOptions(MethodOptions):
    keep_layers: int = Field(ge=1, description="Decoder layers the student keeps: evenly spaced, the first and last always among them.")
    epochs: float = Field(1.0, gt=0, description="Distillation epochs over the training rows.")
    learning_rate: float | None = Field(None, gt=0, description="Learning rate; null = finetune.learning_rate.")
    kd: Literal["token", "sequence", "both"] = Field(
        "both", description="token: KL to the teacher's next-token distributions on the reference responses; sequence: learn "
        "the teacher's own greedy answers to `sequence_rows` train prompts; both: the two sets of rows, with the token-level KL."
    )  # fmt: skip
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the token-level KD (its KL is scaled by T^2).")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the token-level KD; 1 - alpha goes to each row's response.")
    sequence_rows: int = Field(128, ge=1, description="Train prompts the teacher answers greedily for sequence-level KD.")


@register
class LayerDrop(Method):
    name = "layer_drop"
    Options = LayerDropOptions
    accepts = ("causal-hf",)
    produces = ("causal-hf",)
    heavy = True

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        import torch
        from transformers import AutoTokenizer

        opts: LayerDropOptions = self.options
        manifest, gen = self.source(src), _generate(ctx, self.name)
        cfg = training_settings(ctx.train, epochs=opts.epochs, learning_rate=opts.learning_rate)
        torch.set_num_threads(cfg.threads)
        teacher = load_causal(src, "float32", resolve_device(cfg.device))
        tokenizer = AutoTokenizer.from_pretrained(src / TOKENIZER_DIR)
        student, kept = cut_layers(teacher, opts.keep_layers)
        chat, pad = bool(manifest.notes.get("chat", gen.chat)), pad_token_id(tokenizer)
        eos = list(manifest.notes.get("eos_token_ids") or [eos_token_id(tokenizer)])  # where serving stops, the teacher's answers do

        def answer(prompts: list[str]) -> list[str]:
            return teacher_answers(teacher, tokenizer, prompts, chat, gen.max_new_tokens, cfg.batch_size, eos)

        train = self._train_rows(ctx, answer)
        val = _encode(tokenizer, pd.read_parquet(ctx.data / "val.parquet"), chat, manifest.max_length)
        before = val_losses(student, teacher, val, pad, cfg.batch_size)
        kd = KD(token=opts.kd != "sequence", temperature=opts.temperature, alpha=opts.alpha)
        rows = _encode(tokenizer, train, chat, manifest.max_length)
        result = distill(student, teacher, rows, val, kd, cfg, ctx.seed, pad, ctx.checkpoint)
        after = val_losses(student, teacher, val, pad, cfg.batch_size)
        params = sum(p.numel() for p in student.parameters())
        save_model(student.to("cpu"), dst, manifest.derive(params=params, lineage=[*manifest.lineage, f"{self.name}-{len(kept)}L"]))
        copy_tokenizer(src, dst)
        report = StepReport(
            params={"kept_layers": ",".join(map(str, kept)), "student_layers": len(kept), "train_rows": len(rows),
                    "steps": result.steps, "resumed_from_step": result.resumed_from},
            metrics={"val_kl_before": before["kl"], "val_kl_after": after["kl"], "val_loss_before": before["ce"],
                     "val_loss_after": after["ce"], "params_vs_teacher": params / max(manifest.params, 1)},
            history=result.history,
        )  # fmt: skip
        report.notes.append(f"Kept decoder layers {kept} of {teacher.config.num_hidden_layers}; val KL(fine-tuned || student) on "
                            f"the response tokens {before['kl']:.4f} -> {after['kl']:.4f}.")  # fmt: skip
        return report

    def _train_rows(self, ctx: CompressContext, answer: Answer) -> pd.DataFrame:
        """The prompt/response rows the student learns: the references, the teacher's answers, or both (`kd`)."""
        opts: LayerDropOptions = self.options
        train = pd.read_parquet(ctx.data / "train.parquet")
        if ctx.train.max_rows and len(train) > ctx.train.max_rows:  # the rows fine-tuning saw (a seeded sample): no more
            train = train.sample(n=ctx.train.max_rows, random_state=ctx.seed)
        frames = [] if opts.kd == "sequence" else [train[["prompt", "response"]]]
        if opts.kd != "token":
            frames.append(_answers(ctx, list(train["prompt"].iloc[: opts.sequence_rows]), answer))
        return pd.concat(frames, ignore_index=True)


def _answers(ctx: CompressContext, prompts: list[str], answer: Answer) -> pd.DataFrame:
    """The teacher's greedy answers to `prompts`, read back from the checkpoint folder when a resumed step made them."""
    cached = ctx.checkpoint / ANSWERS if ctx.checkpoint else None
    if cached is not None and cached.is_file():
        return pd.read_parquet(cached)
    answers = pd.DataFrame({"prompt": prompts, "response": answer(prompts)})
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        answers.to_parquet(cached)
    return answers


def _encode(tokenizer: Any, frame: pd.DataFrame, chat: bool, max_length: int) -> list[Row]:
    return [encode_pair(tokenizer, p, r, chat, max_length) for p, r in zip(frame["prompt"], frame["response"], strict=True)]


def _generate(ctx: CompressContext, method: str) -> GenerateConfig:
    if ctx.generate is None:
        raise ConfigError(f"{method} compresses generative models (task: generate), but this step has no generate settings.",
                          f"Use {method} in a config with task: generate.")  # fmt: skip
    return ctx.generate
