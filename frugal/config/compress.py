"""Config sections for compression variants (step chains and cascades), their measurement, and champion selection."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from frugal.config._base import Strict


class StepConfig(BaseModel):
    """One compression step: a registered method name plus that method's options (validated by ml/compress/plan.py)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    method: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class CascadeConfig(Strict):
    """A variant that routes each text: the cheap part answers when its top probability reaches the threshold, else the strong part."""

    cascade: tuple[str, str] = Field(description="[cheap, strong]: two other variants of this config, or 'baseline' (fine-tuned).")
    # Optional, unlike the config's other keys: a variant value is written by hand, and omitting it means "calibrate".
    threshold: float | None = Field(
        default=None, le=1,
        description="task classify: the cheap part's top probability (0-1) at or above which it answers; task generate: its mean "
        "token log-probability (<= 0); null = calibrated on the val split: the lowest (least deferral) whose val score is >= the "
        "baseline's val score - select.tolerance.",
    )  # fmt: skip

    @property
    def cheap(self) -> str:
        return self.cascade[0]

    @property
    def strong(self) -> str:
        return self.cascade[1]


class SearchStudent(Strict):
    """A pretrained model the search's students start from, instead of the fine-tuned model's own layers."""

    source: Literal["embedded", "path", "hub"] = Field(description="As model.source (the model section's allowlist applies to hub ids).")
    name_or_path: str | None = Field(default=None, description="As model.name_or_path; embedded: null = all-MiniLM-L6-v2.")


class SearchConfig(Strict):
    """The search for the cheapest good-enough model (ml/search.py): a space of shapes, priced untrained, trained cheapest first."""

    enabled: bool = Field(description="Search the space below beside the hand-written variants (off: the variants only).")
    budget_minutes: float = Field(gt=0, description="Wall clock for the search's pricing and training (`frugal run --budget`).")
    student: SearchStudent | None = Field(
        description="null: students are the fine-tuned model's own layers, heads and neurons (`distill`); a model: students are "
        "that pretrained model's (any family, any tokenizer: `distill_student`), taught by the fine-tuned model."
    )
    layers: list[int] = Field(min_length=1, description="Student depths; the fine-tuned model's own depth = pruning only.")
    heads_fractions: list[float] = Field(min_length=1, description="Shares of attention heads pruned per layer (0 = none).")
    ffn_fractions: list[float] = Field(min_length=1, description="Shares of feed-forward neurons pruned per layer (0 = none).")
    epochs: float = Field(gt=0, description="Training epochs of each candidate's distillation (and pruning recovery).")
    transfer_rows: int = Field(ge=0, description="Extra train rows, labels hidden, each candidate learns the teacher's soft targets on.")
    learning_rate: float | None = Field(gt=0, description="Each candidate's distillation learning rate; null = the fine-tuning rate.")
    price_texts: int = Field(ge=32, description="Test texts each untrained candidate is timed on to price it.")
    precisions: list[Literal["int8", "int4", "fp32"]] = Field(
        min_length=1, description="task generate: the weight precisions each depth is priced and built at (genai, onnxruntime-genai)."
    )
    price_prompts: int = Field(ge=1, description="task generate: test prompts each untrained shape decodes generate.max_new_tokens after.")
    give_up_margin: float | None = Field(
        ge=0, description="A candidate whose best val macro-F1 halfway through its training is more than this below the floor stops "
        "there (one rung of successive halving); null = every candidate trains to the end."
    )  # fmt: skip

    @field_validator("heads_fractions", "ffn_fractions")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if any(not 0 <= v < 1 for v in values):
            raise ValueError("fractions must be >= 0 and < 1")
        return values


class CompressConfig(Strict):
    search: SearchConfig
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
    def _well_formed(cls, variants: dict[str, list[StepConfig] | CascadeConfig]) -> dict[str, list[StepConfig] | CascadeConfig]:
        # The shape only: methods and their options are checked where the methods live (ml/compress/plan.py).
        for name, steps in variants.items():
            if name == "baseline":
                raise ValueError("'baseline' is reserved for the fine-tuned fp32 model")
            if isinstance(steps, CascadeConfig):
                _check_parts(name, steps, variants)
            elif not steps:
                raise ValueError(f"variant {name!r} has no steps")
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
