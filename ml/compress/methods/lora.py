"""LoRA fine-tuning (peft) of the *pretrained* model, as a cheaper alternative to full fine-tuning.

It trains low-rank adapters (and the classifier head) instead of every weight, records the
trainable share, time and $ next to full fine-tuning, and merges the adapters into the
weights before saving, so the result serves like any PyTorch model.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from frugal.runtime.formats.torch import count_params
from ml.compress.base import TORCH_FORMATS, CompressContext, TorchMethod, register
from ml.compress.common import TrainingOptions, train_config, train_with_teacher, training_report
from ml.modeling import load_pretrained


class LoraOptions(TrainingOptions):
    r: int = Field(8, ge=1, description="Rank of the adapters.")
    alpha: int = Field(16, ge=1, description="Adapter scaling (lora_alpha).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(["query", "key", "value", "dense"], description="Linear layers (by name) that get adapters.")
    epochs: float | None = Field(None, gt=0, description="Training epochs; null = the fine-tuning epochs.")
    learning_rate: float = Field(5e-4, gt=0, description="Adapters train best with a higher rate than full fine-tuning.")


@register
class Lora(TorchMethod):
    name = "lora"
    accepts = TORCH_FORMATS
    Options = LoraOptions
    heavy = True

    def build(self, src: Path, ctx: CompressContext):
        from peft import LoraConfig, TaskType, get_peft_model

        opts: LoraOptions = self.options
        manifest = self.source(src)  # src only lends its tokenizer: training starts from the pretrained model
        base = load_pretrained(ctx.model, ctx.labels, ctx.seed)
        total = count_params(base)
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS, r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, target_modules=opts.target_modules
        )
        model = get_peft_model(base, config)
        cfg = train_config(ctx, epochs=opts.epochs, learning_rate=opts.learning_rate, precision=opts.precision)
        result = train_with_teacher(model, None, src, ctx, cfg, temperature=1.0, alpha=0.0, desc=f"lora r={opts.r}", give_up=opts.give_up())
        merged = model.merge_and_unload().eval()
        report = training_report(result, total, starts_from="pretrained model")
        report.notes.append("Trained from the pretrained model with LoRA adapters (merged), not from the fine-tuned baseline.")
        return merged, manifest.derive(params=count_params(merged), lineage=[self.name]), report
