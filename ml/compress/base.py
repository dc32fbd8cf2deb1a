"""The one small interface every compression method implements, and the registry of methods by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from frugal.runtime.formats.torch import torch_format
from frugal.runtime.manifest import Manifest, copy_tokenizer
from frugal.runtime.registry import save_model

if TYPE_CHECKING:
    import torch

    from frugal.config import GenerateConfig, ModelConfig, TrainConfig

REGISTRY: dict[str, type[Method]] = {}
TORCH_FORMATS = ("hf", "hf-resized")  # PyTorch folders frugal's loader reads: what most methods take


class MethodOptions(BaseModel):
    """A method's options: defaults, help text and validation in one place."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class CompressContext:
    """What a method may use besides its input model."""

    data: Path  # local folder of the train/val/test Parquet splits
    labels: list[str]
    seed: int
    train: TrainConfig  # the fine-tuning settings: the template for recovery and distillation training
    model: ModelConfig  # the pretrained model, for methods that start from it (LoRA)
    serve_device: str  # where variants are evaluated and served: a method that cannot run there is skipped
    scratch: Path
    serve_threads: int = 2  # threads variants are measured and served with (evaluate.threads): what a method times itself at
    serve_batch_size: int = 32  # batch size variants are measured with (evaluate.batch_size)
    tolerance: float = 0.01  # select.tolerance: the largest macro-F1 drop a method may accept when it chooses between candidates
    checkpoint: Path | None = None  # where a training method keeps its resume point (None: no checkpoints)
    generate: GenerateConfig | None = None  # task generate: the prompt format and decoding settings (None for classifiers)
    baseline: Path | None = None  # the fine-tuned model folder: what a step may need besides its input (speculative's target)


@dataclass
class StepReport:
    """What a step wants recorded on its MLflow run besides the model."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)  # a training's val checks, by step (MLflow's charts)


class Method(ABC):
    """Turns the model folder `src` into a new model folder `dst` (formats: frugal/runtime/formats/).

    A method declares the formats it `accepts` and the ones it may `produce`, so a chain is checked
    before anything runs (ml/compress/plan.py). Raise ``frugal.errors.SkipVariant`` when the hardware
    cannot run the method.
    """

    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    accepts: ClassVar[tuple[str, ...]] = ("hf",)  # formats of the model folder it takes
    produces: ClassVar[tuple[str, ...]] = ("hf",)  # formats its result may have (the next step must take each)
    heavy: ClassVar[bool] = False  # trains or needs a GPU: belongs on a GPU worker in `workers` mode

    def __init__(self, options: MethodOptions) -> None:
        self.options = options

    @classmethod
    def from_config(cls, options: dict[str, Any]) -> Method:
        return cls(cls.Options(**options))

    def unsupported(self, serve_device: str) -> str | None:
        """Why this method cannot run for `serve_device` on this machine (the variant is then skipped), or None."""
        return None

    def source(self, src: Path) -> Manifest:
        """The source's manifest, or a clear error when the method cannot take a model of that format."""
        manifest = Manifest.load(src)
        if manifest.format not in self.accepts:
            names = {"hf": "a PyTorch (hf)", "hf-resized": "a PyTorch (hf)", "onnx": "an ONNX"}
            kinds = " or ".join(dict.fromkeys(names.get(f, f"a {f}") for f in self.accepts))
            raise ValueError(f"{self.name} needs {kinds} model, got {manifest.format!r}; put it earlier in the chain")
        return manifest

    @abstractmethod
    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport: ...


class TorchMethod(Method):
    """A method whose result is a PyTorch model: `build` makes it in memory, `apply` saves it.

    Keeping the two apart lets tests compare the model before saving with the one reloaded.
    """

    @abstractmethod
    def build(self, src: Path, ctx: CompressContext) -> tuple[torch.nn.Module, Manifest, StepReport]: ...

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        model, manifest, report = self.build(src, ctx)
        self.save(model, manifest, src, dst)
        return report

    @staticmethod
    def save(model: torch.nn.Module, manifest: Manifest, src: Path, dst: Path) -> None:
        if manifest.format in TORCH_FORMATS:  # a folder says what it holds: standard transformers only if its config says it all
            manifest = manifest.derive(format=torch_format(model))
        save_model(model, dst, manifest)
        copy_tokenizer(src, dst)


def register(cls: type[Method]) -> type[Method]:
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"compression method {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls
