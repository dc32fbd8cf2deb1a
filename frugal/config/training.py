"""Config sections for training: the shared training options, LoRA adapters, federated fine-tuning, fine-tuning."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from frugal.config._base import Strict


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
    """Federated fine-tuning with Flower (docs/federated.md): LoRA adapters trained where the data is, FedAvg-merged."""

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
