"""The search: the cheapest shape of the fine-tuned model that keeps the quality bar, found by pricing before training.

A candidate is a shape: a student depth, shares of attention heads and feed-forward neurons pruned per layer,
then int8 on the fastest runtime (the `int8` race). The student is cut from the fine-tuned model itself
(`distill`), or, with `compress.search.student`, from another pretrained model of any family and tokenizer,
which the fine-tuned model then teaches (`distill_student`). Its cost does not depend on its trained weights,
so each shape is built untrained (the kept layers, heads and neurons, no training), quantized and timed in
seconds: that predicts its throughput, hence its $/1M.

The fine-tuned model itself through int8 trains nothing and keeps the bar (the race checks it on val): it is
the anchor. Only shapes predicted faster than the anchor are ever trained, in the order of a bisection over
them sorted by predicted cost (`Bisection`): a bigger shape keeps more of the model, so the cheapest one that
keeps the bar is found in about log2(n) trainings instead of n. The budget ends it too, before a training that
would not finish in it starts.
"""

from __future__ import annotations

import copy
import itertools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frugal.config import ModelConfig, SearchConfig, StepConfig
from frugal.runtime.formats.torch import load_torch, torch_format
from frugal.runtime.manifest import Manifest, copy_tokenizer
from frugal.runtime.registry import save_model
from ml.compress.importance import cut
from ml.compress.onnx import race
from ml.compress.quantize import openvino_folder, ort_folder
from ml.compress.structure import make_student, shape_suffix
from ml.embedded import DEFAULT
from ml.families import family_of
from ml.modeling import fitting_max_length, load_pretrained, load_tokenizer, save_tokenizer
from ml.training import ensure_pad_token_id

CALIBRATION = 32  # texts an untrained shape's static int8 is calibrated on: ranges do not change its speed


@dataclass(frozen=True, order=True)
class Shape:
    layers: int
    heads_fraction: float = 0.0
    ffn_fraction: float = 0.0
    student: str = ""  # the pretrained student's name; "" = cut from the fine-tuned model

    @property
    def name(self) -> str:
        return f"search-{self.student + '-' if self.student else ''}{self.layers}L{shape_suffix(self.heads_fraction, self.ffn_fraction)}"

    def steps(self, cfg: SearchConfig, floor: float | None = None) -> list[StepConfig]:
        """The chain that makes this shape: one distillation into it (its layers kept, its least important heads and neurons cut
        before it trains, so one training shrinks and recovers it), then the int8 race. Logits only, so every candidate
        learns from the same cached teacher pass. With the val `floor`, a training that cannot reach it stops halfway."""
        give_up = None if floor is None or cfg.give_up_margin is None else round(floor - cfg.give_up_margin, 4)
        options = {"layers": self.layers, "heads_fraction": self.heads_fraction, "ffn_fraction": self.ffn_fraction,
                   "epochs": cfg.epochs, "transfer_rows": cfg.transfer_rows, "learning_rate": cfg.learning_rate,
                   "give_up_below": give_up}  # fmt: skip
        options = {k: v for k, v in options.items() if v is not None}
        if self.student and cfg.student is not None:
            distill = StepConfig(method="distill_student", student=cfg.student.model_dump(), intermediate="none", **options)
        else:
            distill = StepConfig(method="distill", **options)
        return [distill, StepConfig(method="int8")]


@dataclass
class Source:
    """What the shapes are cut from: the fine-tuned model (its tokenizer in its folder) or a pretrained student (its own)."""

    model: Any  # a classifier for the task's labels
    tokenizer: Any = None  # None: the fine-tuned model's
    student: str = ""  # Shape.student

    @property
    def depth(self) -> int:
        return len(family_of(self.model, "search").layers(self.model))


def fine_tuned_source(fine_tuned: Path) -> Source:
    return Source(load_torch(fine_tuned).float().eval())


def student_source(cfg: ModelConfig, labels: list[str], seed: int) -> Source:
    """A pretrained student with a fresh head for `labels` (what `distill_student` starts from) and its tokenizer."""
    tokenizer = load_tokenizer(cfg)
    model = load_pretrained(cfg, labels, seed)
    ensure_pad_token_id(model.config, tokenizer)
    return Source(model.eval(), tokenizer, student_name(cfg))


def student_name(cfg: ModelConfig) -> str:
    return Path(cfg.name_or_path).name if cfg.name_or_path else DEFAULT


def space(cfg: SearchConfig, source: Source) -> list[Shape]:
    """Every shape of the config's grid that the source can give, except the fine-tuned model itself (the anchor)."""
    layers = sorted({min(n, source.depth) for n in cfg.layers})
    grid = itertools.product(layers, cfg.heads_fractions, cfg.ffn_fractions)
    shapes = {Shape(n, h, f, source.student) for n, h, f in grid}
    return sorted(shapes - {Shape(source.depth)})


def untrained(base: Any, shape: Shape) -> Any:
    """The shape built from `base` without training: what it costs to run is all that is read from it."""
    import torch

    family = family_of(base, "search")
    model = make_student(base, shape.layers, None, "search")[0] if shape.layers < len(family.layers(base)) else copy.deepcopy(base)
    d = family.head_dim(model)
    arbitrary = [(torch.arange(family.heads(layer, d), dtype=torch.float), torch.arange(family.ffn_width(layer), dtype=torch.float))
                 for layer in family.layers(model)]  # fmt: skip
    cut(model, family, arbitrary, shape.heads_fraction, shape.ffn_fraction)
    return model.eval()


def price(fine_tuned: Path, shape: Shape | None, texts: list[str], threads: int, source: Source | None = None) -> float:
    """Predicted texts/s of a shape cut from `source` (shape None: the fine-tuned model itself) through int8: the faster of ONNX
    Runtime dynamic and OpenVINO static, timed on `texts` as evaluation times a model."""
    manifest = Manifest.load(fine_tuned)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        if shape is None:
            shutil.copytree(fine_tuned, folder)
        else:
            source = source or fine_tuned_source(fine_tuned)
            model = untrained(source.model, shape)
            max_length = fitting_max_length(model.config, manifest.max_length)
            save_model(model, folder, manifest.derive(format=torch_format(model), max_length=max_length))
            if source.tokenizer is None:
                copy_tokenizer(fine_tuned, folder)
            else:
                save_tokenizer(source.tokenizer, folder)
        made = Manifest.load(folder)
        ort_folder(folder, Path(tmp) / "onnx", made, "dynamic", texts[:CALIBRATION])
        candidates = [Path(tmp) / "onnx"]
        try:
            openvino_folder(folder, Path(tmp) / "openvino", made, "int8", texts[:CALIBRATION])
            candidates.append(Path(tmp) / "openvino")
        except ImportError:  # openvino/nncf not installed: ONNX Runtime alone prices it
            pass
        return max(race(candidates, texts, threads, passes=2))


def order(predicted: dict[Shape, float], anchor: float) -> list[Shape]:
    """The shapes predicted faster than the anchor, fastest (cheapest) first; the others cannot beat it and are never trained."""
    return sorted((s for s, speed in predicted.items() if speed > anchor), key=lambda s: (-predicted[s], s))


class Bisection:
    """The cheapest shape that keeps the bar, assuming quality grows with predicted cost (a shape with more layers, heads and
    neurons keeps more of the model): train the middle of the cost-ordered shapes; if it keeps the bar, look among the
    cheaper ones, else among the dearer ones."""

    def __init__(self, cheapest_first: list[Shape]) -> None:
        self.shapes, self.lo, self.hi = cheapest_first, 0, len(cheapest_first) - 1
        self.best: Shape | None = None

    def next(self) -> Shape | None:
        """The shape to train next, or None when the search is done."""
        return self.shapes[(self.lo + self.hi) // 2] if self.lo <= self.hi else None

    def record(self, shape: Shape, keeps_bar: bool) -> None:
        at = self.shapes.index(shape)
        if keeps_bar:
            self.best, self.hi = shape, at - 1
        else:
            self.lo = at + 1


def training_seconds(share: float, fine_tune: float, fine_tune_passes: int, rows: int, epochs: float, teacher_read: bool) -> float:
    """About how long a shape's chain takes, from the fine-tune's time (`fine_tune` seconds for `fine_tune_passes` texts
    trained, epochs counted): `rows` texts trained `epochs` times at the shape's `share` of the fine-tuned model's compute
    (the ratio of their priced throughputs), the teacher's soft targets on them (a forward pass without the val checks:
    about a fifth of the fine-tune's time per text, 6 vs 29 ms on a 2-core EPYC; kept on disk, so only the first candidate
    reads them), plus a minute for the int8 race. It errs long: the fine-tune's time includes its val checks."""
    per_text = fine_tune / fine_tune_passes
    return per_text * rows * epochs * share + (0 if teacher_read else per_text / 5 * rows) + 60
