"""What the API accepts and answers: the request and response bodies, as /docs shows them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422 naming it, not silently ignored


class PredictRequest(Body):
    texts: list[str] = Field(min_length=1, description="The texts to classify (at most the server's max_texts).")


class Prediction(BaseModel):
    label: str = Field(description="The most probable label.")
    probabilities: dict[str, float] = Field(description="Every label's probability; they sum to 1.")
    truncated: bool = Field(description="The text was longer than the model's max_length tokens and was cut to it.")


class PredictResponse(BaseModel):
    request_id: str = Field(description="Also the X-Request-ID header; cite it with /v1/feedback.")
    model_version: str
    predictions: list[Prediction] = Field(description="One per text, in order.")


class FeedbackRequest(Body):
    label: str = Field(description="The correct label: one of the model's labels (GET /v1/model).")
    request_id: str | None = Field(None, description="A request_id this key got back from /v1/predict ...")
    index: int = Field(0, ge=0, description="... and the position of the text in that request.")
    text: str | None = Field(None, description="Or the text itself.")

    @model_validator(mode="after")
    def _one_reference(self) -> FeedbackRequest:
        if (self.request_id is None) == (self.text is None):
            raise ValueError("give either request_id (and index) or text, not both and not neither")
        return self


class ResponseFeedbackRequest(Body):
    """Feedback on a generative model: the response it should have given."""

    response: str = Field(min_length=1, description="The corrected response.")
    request_id: str | None = Field(None, description="A completion id (or X-Request-ID) this key got back ...")
    prompt: str | None = Field(None, description="... or the prompt itself.")

    @model_validator(mode="after")
    def _one_reference(self) -> ResponseFeedbackRequest:
        if (self.request_id is None) == (self.prompt is None):
            raise ValueError("give either request_id or prompt, not both and not neither")
        return self


class FeedbackResponse(BaseModel):
    feedback_id: int


class Figures(BaseModel):
    """What evaluation measured for the served variant (null when the source is a folder); a generative model's also
    `usd_per_1m_tokens` (its measured cost per 1M output tokens)."""

    model_config = ConfigDict(extra="allow")

    macro_f1: float | None
    f1_retained: float | None
    usd_per_1m: float | None
    latency_p50_ms: float | None
    throughput_per_s: float | None


class ModelInfo(BaseModel):
    version: str
    variant: str | None
    source: str = Field(description="The exact version served, e.g. models:/frugal-default/3.")
    configured: str = Field(description="The serve config's model, e.g. models:/frugal-default@champion.")
    loaded_at: datetime
    format: str
    labels: list[str]
    max_length: int
    metrics: Figures


class Problem(BaseModel):
    error: str
    fix: str
