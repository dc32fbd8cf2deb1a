"""The typed schema of configs/serve.yaml (defaults live in the YAML only, as for pipeline configs)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError

from frugal.compose import compose
from frugal.config._base import Strict
from frugal.errors import ConfigError


class Plan(Strict):
    requests_per_minute: int = Field(gt=0, description="Requests a key on this plan may make per minute; more get 429.")
    texts_per_month: int = Field(gt=0, description="Texts a key may send per calendar month (UTC); more get 429.")
    usd_per_1k_texts: float = Field(ge=0, description="What the customer pays per 1,000 texts (the plan's price).")
    # The token fields default here, not in the YAML: a plan written before generation existed (classification only) stays valid.
    tokens_per_month: int = Field(0, ge=0, description="Tokens (prompt + completion) a key may use per calendar month (UTC) on a "
                                  "generative model; 0 = the plan does not include generation.")  # fmt: skip
    usd_per_1m_tokens: float = Field(0.0, ge=0, description="What the customer pays per 1M completion (generated) tokens.")
    usd_per_1m_prompt_tokens: float = Field(0.0, ge=0, description="What the customer pays per 1M prompt tokens.")


class ServeSettings(Strict):
    model: str = Field(description="models:/NAME@ALIAS in the MLflow registry, or a bundle folder.")
    tracking_uri: str | None = Field(
        description="MLflow store with the registry (MLFLOW_TRACKING_URI, if set, wins); null = the project's mlflow.db."
    )
    reload_seconds: float = Field(gt=0, description="How often the alias is polled; a new version is loaded, then swapped in.")
    host: str
    port: int = Field(gt=0, lt=65536)
    threads: int = Field(gt=0, description="CPU threads for inference, split between the worker processes.")
    workers: int = Field(gt=0, description="Server processes sharing the port, the accounts database and the model files.")
    batch_size: int = Field(gt=0, description="Texts per model run inside a batch (length-ordered).")
    max_batch: int = Field(gt=0, description="Adaptive batching: texts of concurrent requests collected into one batch, at most.")
    max_wait_ms: float = Field(ge=0, description="Adaptive batching: how long a request waits for others; 0 takes what is queued.")
    meter_flush_ms: float = Field(gt=0, description="Answered requests are billed in batches this often (a SIGKILL loses at most these).")
    max_body_bytes: int = Field(gt=0, description="Request bodies above this size get 413 before they are read.")
    max_texts: int = Field(gt=0, description="Texts per request; more is 422.")
    max_tokens: int = Field(gt=0, description="A generative model's largest max_tokens per request; more is 422 (and the default).")
    database_url: str | None = Field(description="SQLAlchemy URL for keys, usage and feedback; null = sqlite serve.db in the project.")
    plans: dict[str, Plan] = Field(min_length=1, description="Plan name -> limits and price.")


def load_settings(name_or_path: str | Path = "serve", overrides: list[str] | None = None) -> ServeSettings:
    """configs/serve.yaml (or a path), with `key=value` overrides, validated; one error names every bad key."""
    try:
        return ServeSettings(**compose(name_or_path, overrides or []))
    except ValidationError as exc:
        bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"Invalid serve config: {bad}.", "Correct the key in configs/serve.yaml (see docs/serving.md).") from None


def database_url(settings: ServeSettings, project_root: Path) -> str:
    return settings.database_url or f"sqlite:///{project_root / 'serve.db'}"
