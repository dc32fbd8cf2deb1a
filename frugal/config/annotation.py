"""Config section for the cost of labels: label-noise detection and active learning."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from frugal.config._base import Strict, unique


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

    _unique_strategies = field_validator("strategies")(unique)

    @property
    def budget(self) -> int:
        """Labels bought in all: the seed plus every round's batch."""
        return self.seed_size + self.rounds * self.batch_size


class AnnotationConfig(Strict):
    """The cost of labels: label-noise detection before fine-tuning, and active learning (docs/labels.md)."""

    features: Literal["embeddings", "tfidf"] = Field(
        description="Features of the cheap learner both use: the pretrained model's frozen mean-pooled embeddings, or TF-IDF."
    )
    c: float = Field(gt=0, description="Inverse regularisation strength (C) of the cheap learner, a logistic regression.")
    usd_per_label: float = Field(ge=0, description="What an annotator is paid per label: prices the active-learning curve.")
    noise: NoiseConfig
    active: ActiveConfig
