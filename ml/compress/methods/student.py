"""Distillation into a different, smaller pretrained model (the student), which keeps its own tokenizer.

The teacher (any `hf` classifier, a decoder LLM included) labels the training texts once with
its own tokenizer; the student learns from those soft labels (plus the true labels) with its
tokenizer, and the saved folder carries the student's tokenizer, since that is what serves.

Optional MiniLM-style intermediate transfer, where shapes allow it:
- hidden: each student layer's mean-pooled hidden state (through a learned Linear when the widths
  differ) matches its mapped teacher layer's. Pooling over the text makes it tokenizer-independent.
- attention: each student layer's head-averaged attention map matches its teacher layer's (KL per
  query). Only with the same tokenizer (the maps then cover the same tokens) and when both attend the
  same way: a bidirectional student would learn nothing useful from a decoder's causal maps.
A refused transfer falls back to what remains and says why in the step's notes and params.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from frugal.config import ModelConfig, TinyModelConfig
from frugal.runtime import Tokenize
from frugal.runtime.formats.torch import count_params, load_torch
from frugal.runtime.manifest import TOKENIZER_DIR, Manifest
from frugal.runtime.registry import save_model
from ml.compress import common
from ml.compress.base import TORCH_FORMATS, CompressContext, MethodOptions, StepReport, TorchMethod, register
from ml.compress.importance import cut, magnitude_scores, shape_params
from ml.compress.structure import shape_suffix
from ml.compress.transfer import TeacherView, cached_teacher_view, intermediate_loss, kept_layers, layer_pairs, teacher_view
from ml.families import family_of
from ml.modeling import fitting_max_length, load_pretrained, load_tokenizer, other_model, save_tokenizer
from ml.training import OutputsLoss, TrainResult, ensure_pad_token_id, resolve_device, train

if TYPE_CHECKING:
    import torch

PROJECTION = "frugal_hidden_projection"  # attached to the student while it trains (so it trains and resumes with it), then removed


class StudentModel(MethodOptions):
    source: Literal["embedded", "path", "hub", "tiny"] = Field(
        "embedded",
        description="The student, as model.source: embedded (name_or_path: null = all-MiniLM-L6-v2, or all-mpnet-base-v2), path, hub, "
        "or tiny (random, tests).",
    )
    name_or_path: str | None = Field(None, description="Folder (source=path), hub id (source=hub) or embedded model name.")
    revision: str | None = Field(None, description="Hub revision for source=hub (model.trust_remote_code's allowlist applies).")
    tiny: TinyModelConfig | None = Field(None, description="Sizes of a tiny random student; null = model.tiny.")

    @model_validator(mode="after")
    def _needs_name(self) -> StudentModel:
        if self.source in ("path", "hub") and not self.name_or_path:
            raise ValueError(f"student source={self.source} needs student.name_or_path")
        return self


class StudentOptions(common.TrainingOptions):
    student: StudentModel = Field(default_factory=StudentModel, description="The smaller pretrained model that learns.")
    layers: int | None = Field(None, ge=1, description="Keep only this many evenly spaced layers of the student; null = all.")
    heads_fraction: float = Field(0.0, ge=0, lt=1, description="Share of attention heads removed in every student layer (by |weight|).")
    ffn_fraction: float = Field(0.0, ge=0, lt=1, description="Share of feed-forward neurons removed in every student layer (by |weight|).")
    intermediate: Literal["none", "hidden", "attention", "hidden+attention"] = Field(
        "hidden", description="Intermediate-layer transfer besides the logits, where shapes allow (see the module docstring)."
    )
    intermediate_weight: float = Field(1.0, gt=0, description="Weight of the intermediate-layer losses next to the logit loss.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the teacher's soft targets.")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the soft-target loss; 1 - alpha goes to the labels.")
    transfer_rows: int = Field(
        0, ge=0, description="Extra train rows, labels hidden, that the student learns on from the teacher's soft targets."
    )
    epochs: float | None = Field(None, gt=0, description="Training epochs; null = the fine-tuning epochs.")
    learning_rate: float | None = Field(None, gt=0, description="Learning rate; null = the fine-tuning rate.")


def is_causal(maps: list[np.ndarray]) -> bool:
    """Attention maps with no weight above the diagonal: a decoder's, which never looks at later tokens."""
    return all(float(np.triu(m, k=1).sum()) < 1e-6 for m in maps)


def same_tokenizer(a: Path, b: Path) -> bool:
    """Two model folders whose tokenizers split text into the same ids (padding/truncation settings aside)."""

    def read(folder: Path) -> dict:
        spec = json.loads((folder / TOKENIZER_DIR / "tokenizer.json").read_text())
        return {k: v for k, v in spec.items() if k not in ("padding", "truncation")}

    return read(a) == read(b)


@register
class DistillStudent(TorchMethod):
    name = "distill_student"
    accepts = TORCH_FORMATS
    produces = TORCH_FORMATS
    Options = StudentOptions
    heavy = True
    _tokenizer: Any = None  # the student's, kept by build for save

    def student_config(self, ctx: CompressContext) -> ModelConfig:
        """The pipeline's model section with the student in it (so its trust_remote_code allowlist still applies)."""
        spec: StudentModel = self.options.student
        return other_model(ctx.model, spec.source, spec.name_or_path, spec.revision, spec.tiny)

    def build(self, src: Path, ctx: CompressContext):
        opts: StudentOptions = self.options
        manifest = self.source(src)
        teacher = load_torch(src).float()
        student_cfg = self.student_config(ctx)
        self._tokenizer = load_tokenizer(student_cfg)
        student = load_pretrained(student_cfg, ctx.labels, ctx.seed)
        ensure_pad_token_id(student.config, self._tokenizer)
        report = StepReport(params={"student": opts.student.name_or_path or opts.student.source})
        if opts.layers is not None:
            report.notes += self._drop_layers(student, opts.layers)
        if opts.heads_fraction or opts.ffn_fraction:
            report.params |= self._cut(student, report)
        max_length = fitting_max_length(student.config, manifest.max_length)
        attn_impl = student.config._attn_implementation
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp)  # the student's tokenizer and config: what its Tokenize reads (pad id, token types)
            save_tokenizer(self._tokenizer, scratch)
            student.config.save_pretrained(scratch)
            result = self._learn(student, teacher, src, scratch, max_length, ctx, report)
        self._detach(student, attn_impl)
        params = count_params(student)
        done = common.training_report(result, params, **report.params)
        done.metrics["params_vs_teacher"] = params / count_params(teacher)
        done.notes = [*report.notes, *done.notes]
        shape = (f"-{opts.layers}L" if opts.layers else "") + shape_suffix(opts.heads_fraction, opts.ffn_fraction)
        lineage = [*manifest.lineage, f"{self.name}-{Path(report.params['student']).name}{shape}"]
        return student.eval(), manifest.derive(params=params, max_length=max_length, lineage=lineage), done

    def _learn(self, student: Any, teacher: Any, src: Path, scratch: Path, max_length: int, ctx: CompressContext,
               report: StepReport) -> TrainResult:  # fmt: skip
        """Label the texts with the teacher (and its tokenizer), then train the student on them (with its own)."""
        opts: StudentOptions = self.options
        tokenize = Tokenize(scratch, max_length)
        cfg = common.train_config(ctx, epochs=opts.epochs, learning_rate=opts.learning_rate, precision=opts.precision)
        device = resolve_device(cfg.device)
        train_df = common.with_transfer_rows(common.labelled_train(ctx), ctx, opts.transfer_rows)
        texts = list(train_df["text"])
        pairs = layer_pairs(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
        hidden, attention = "hidden" in opts.intermediate, "attention" in opts.intermediate and self._aligned(src, scratch, report)
        if attention:  # sdpa kernels return no attention maps
            student.set_attn_implementation("eager")
            teacher.set_attn_implementation("eager")
        layers = [t for _, t in pairs]
        if attention:
            view = teacher_view(teacher, Tokenize(src, max_length), texts, device, layers, hidden, attention)
        else:  # the search's candidates share one teacher pass (kept on disk by content)
            view = cached_teacher_view(ctx.scratch / "teacher", src, max_length, teacher, texts, device, layers, hidden)
        if attention and not self._same_direction(view, student, tokenize, texts, device, report):
            view.attention, attention = None, False
        used = [kind for kind, on in (("hidden", hidden), ("attention", attention)) if on]
        report.params |= {"intermediate_used": "+".join(used) or "none", "layer_pairs": json.dumps(pairs if used else [])}
        return train(
            student, tokenize, train_df, common.val_split(ctx), ctx.labels, cfg, ctx.seed,
            checkpoint_dir=ctx.checkpoint, resume_key=ctx.checkpoint.name if ctx.checkpoint else "",
            loss_fn=common.distillation_loss(view.logits, opts.temperature, opts.alpha), desc=f"{self.name} {report.params['student']}",
            outputs_loss=self._attach(student, teacher, view, pairs, opts.intermediate_weight) if used else None,
            give_up=opts.give_up(),
        )  # fmt: skip

    @staticmethod
    def _aligned(src: Path, scratch: Path, report: StepReport) -> bool:
        """Attention maps compare token by token: only with the same tokenizer (same max_length, so the same tokens)."""
        if same_tokenizer(src, scratch):
            return True
        report.notes.append("Attention transfer refused: teacher and student tokenizers differ, so their maps cover different tokens.")
        return False

    @staticmethod
    def _same_direction(view: TeacherView, student: Any, tokenize: Tokenize, texts: list[str], device: str, report: StepReport) -> bool:
        """Both models causal (decoders) or both bidirectional: a student cannot copy maps it is masked from producing."""
        teacher_causal = is_causal((view.attention or [])[:8])
        student_causal = is_causal(teacher_view(student, tokenize, texts[:8], device, [0], hidden=False, attention=True).attention or [])
        if teacher_causal == student_causal:
            return True
        kinds = {True: "causal (a decoder)", False: "bidirectional"}
        report.notes.append(
            f"Attention transfer refused: the teacher's attention is {kinds[teacher_causal]}, the student's {kinds[student_causal]}."
        )
        return False

    @staticmethod
    def _attach(student: Any, teacher: Any, view: TeacherView, pairs: list[tuple[int, int]], weight: float) -> OutputsLoss:
        """The intermediate loss; its hidden-state projections (student width -> teacher width) join the student while it trains."""
        import torch

        wide, narrow = teacher.config.hidden_size, student.config.hidden_size
        projections = torch.nn.ModuleList(
            [torch.nn.Identity() if wide == narrow else torch.nn.Linear(narrow, wide) for _ in pairs] if view.hidden is not None else []
        )
        student.add_module(PROJECTION, projections)
        return intermediate_loss(view, pairs, projections, weight)

    @staticmethod
    def _detach(student: Any, attn_impl: str) -> None:
        """The student as it serves: without the projections, with the attention kernels it came with."""
        if hasattr(student, PROJECTION):
            delattr(student, PROJECTION)
        if student.config._attn_implementation != attn_impl:
            student.set_attn_implementation(attn_impl)

    def _cut(self, student: Any, report: StepReport) -> dict[str, Any]:
        """Remove the shares of heads and FFN neurons with the least |weight| in every layer, before the student trains."""
        opts: StudentOptions = self.options
        family = family_of(student, "distill_student (student heads/FFN)")
        report.notes += sorted(cut(student, family, magnitude_scores(student, family), opts.heads_fraction, opts.ffn_fraction))
        return shape_params(student, family)

    @staticmethod
    def _drop_layers(student: Any, depth: int) -> list[str]:
        family = family_of(student, "distill_student (student layers)")
        keep = kept_layers(len(family.layers(student)), depth)
        return [f"Student keeps layers {keep} of {len(family.layers(student))}.", *family.set_layers(student, keep)]

    def save(self, model: torch.nn.Module, manifest: Manifest, src: Path, dst: Path) -> None:  # type: ignore[override]
        """Like every torch method, but with the student's tokenizer: the teacher's would feed it ids it never learned."""
        if self._tokenizer is None:
            raise RuntimeError("distill_student.save needs the tokenizer build() loaded: call build first")
        save_model(model, dst, manifest)
        save_tokenizer(self._tokenizer, dst)
