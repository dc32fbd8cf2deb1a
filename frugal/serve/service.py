"""What each /v1 endpoint does once the key is known, as plain synchronous calls (the routes run them in a worker thread)."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime

from frugal.accounts.admission import Admission, Request
from frugal.accounts.store import Accounts, AccountsError, KeyInfo, Served, secret_digest
from frugal.config.serve import ServeSettings
from frugal.serve.batcher import Batcher
from frugal.serve.errors import ApiError
from frugal.serve.generation import Generating, Generations
from frugal.serve.meter import Meter
from frugal.serve.metrics import Metrics
from frugal.serve.model import Classified, Loaded, ModelHolder
from frugal.serve.schemas import FeedbackRequest, FeedbackResponse, Figures, ModelInfo, Prediction, PredictResponse, ResponseFeedbackRequest

KNOWN_KEY_SECONDS, MAX_KNOWN_KEYS = 10.0, 10_000
CLASSIFIER_FIGURES = frozenset(Figures.model_fields)  # a generative model's figures add usd_per_1m_tokens


@dataclass
class Service:
    settings: ServeSettings
    holder: ModelHolder
    store: Accounts
    metrics: Metrics
    batcher: Batcher[str, Classified]
    admissions: Batcher[Request, Admission]
    meter: Meter
    generations: Generations = field(default_factory=Generations)  # the one thread every generation runs in
    # Known keys for a few seconds: a key check costs no database read on the hot path. Safe because admission reads
    # the key's row again in its own write (a key revoked meanwhile gets 401 there); unknown keys are never cached.
    _known: dict[str, tuple[float, KeyInfo]] = field(default_factory=dict)

    def authenticate(self, plaintext: str | None) -> KeyInfo:
        if not plaintext:
            raise ApiError(401, "No API key.", "Send `Authorization: Bearer <key>` or `X-API-Key: <key>` (keys: `frugal keys create`).",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip
        digest = secret_digest(plaintext)
        known = self._known.get(digest)
        if known is not None and known[0] > time.monotonic():
            return known[1]
        key = self.store.authenticate(plaintext)
        if key is None:
            raise ApiError(401, "Unknown or revoked API key.", "Check the key; ask the operator for a new one if it was revoked.",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip
        if len(self._known) > MAX_KNOWN_KEYS:  # a bound on memory: start over rather than track ages
            self._known.clear()
        self._known[digest] = (time.monotonic() + KNOWN_KEY_SECONDS, key)
        return key

    def model(self) -> Loaded | Generating:
        """The model to answer with; a request keeps this one even if a reload swaps another in meanwhile."""
        loaded = self.holder.current
        if loaded is None:
            raise ApiError(503, "No model is loaded yet.", "Retry in a few seconds; GET /readyz says when the server is ready.",
                           {"Retry-After": "5"})  # fmt: skip
        return loaded

    def admission(self, key: KeyInfo, n_texts: int, n_tokens: int = 0) -> Future[list[Admission]]:
        """Queue a request for admission: the requests that arrive together are admitted in one transaction."""
        return self.admissions.submit(self.store.admit_many, [(key, n_texts, n_tokens)])

    def generating(self) -> Generating:
        """The generative model to answer a completion with (404 when the server serves a classifier)."""
        loaded = self.model()
        if not isinstance(loaded, Generating):
            raise ApiError(404, "This server serves a classifier, not a generative model.", "POST the texts to /v1/predict.")
        return loaded

    def admit(self, key: KeyInfo, n_texts: int) -> None:
        """Every /v1 request counts toward the key's rate; predicted texts also toward its monthly quota."""
        self.require(self.admission(key, n_texts).result()[0])

    @staticmethod
    def require(admission: Admission) -> None:
        if not admission.ok:
            headers = {"Retry-After": str(admission.retry_after)} if admission.retry_after is not None else {}
            fixes = {429: "Wait for Retry-After seconds, or move the key to a larger plan.", 401: "Ask the operator for a new key."}
            fix = fixes.get(admission.status, "Ask the operator for a key on a current plan.")
            raise ApiError(admission.status, admission.reason or "Request refused.", fix, headers)

    def checked(self, texts: list[str]) -> Loaded:
        """A predict request's own checks (no I/O): the model version that will answer it."""
        if len(texts) > self.settings.max_texts:
            raise ApiError(422, f"{len(texts)} texts in one request; the limit is {self.settings.max_texts}.",
                           f"Split the texts into requests of at most {self.settings.max_texts}.")  # fmt: skip
        loaded = self.model()
        if not isinstance(loaded, Loaded):
            raise ApiError(404, "This server serves a generative model, not a classifier.",
                           "POST to /v1/chat/completions or /v1/completions (OpenAI-compatible; docs/serving.md).")  # fmt: skip
        return loaded

    def answer(self, key: KeyInfo, texts: list[str], loaded: Loaded, classified: list[Classified], request_id: str) -> PredictResponse:
        """The response, with its bill queued for the metering writer (no database write here)."""
        labels = [c.label for c in classified]
        self.meter.add(Served(key, request_id, texts, labels, loaded.version, loaded.cost_usd(len(texts)), datetime.now(UTC)))
        self.metrics.texts.inc(len(texts))
        predictions = [Prediction(label=c.label, probabilities=c.probabilities, truncated=c.truncated) for c in classified]
        return PredictResponse(request_id=request_id, model_version=loaded.version, predictions=predictions)

    def feedback(self, key: KeyInfo, body: FeedbackRequest) -> FeedbackResponse:
        labels = self.model().labels
        if body.label not in labels:
            raise ApiError(422, f"label {body.label!r} is not one of the model's labels {labels}.", f"Send one of {labels}.")
        self.admit(key, 0)
        if body.request_id is not None:
            self.meter.flush()  # the request it cites may still be queued for the bill
        try:
            feedback_id = self._add_feedback(key, body)
        except AccountsError as exc:  # a request id (or index) this key never got back
            raise ApiError(404, exc.problem, exc.fix) from None
        return FeedbackResponse(feedback_id=feedback_id)

    def response_feedback(self, key: KeyInfo, body: ResponseFeedbackRequest) -> FeedbackResponse:
        """A generative model's feedback: the corrected response to a prompt (given, or served under a request id)."""
        self.admit(key, 0)
        request_id = body.request_id.split("-", 1)[-1] if body.request_id else None  # chatcmpl-<id> / cmpl-<id>, or the id
        if request_id is not None:
            self.meter.flush()
        try:
            return FeedbackResponse(feedback_id=self._stored(key, body.response, body.prompt, request_id, 0, "generate"))
        except AccountsError as exc:
            raise ApiError(404, exc.problem, exc.fix) from None

    def _add_feedback(self, key: KeyInfo, body: FeedbackRequest) -> int:
        return self._stored(key, body.label, body.text, body.request_id, body.index, "classify")

    def _stored(self, key: KeyInfo, label: str, text: str | None, request_id: str | None, index: int, task: str) -> int:
        try:
            return self.store.add_feedback(key, label, text=text, request_id=request_id, index=index, task=task)
        except AccountsError:
            if request_id is None:
                raise
        # Another worker process may have answered it, its writer one flush away: look once more after that.
        time.sleep(self.meter.flush_s)
        return self.store.add_feedback(key, label, text=text, request_id=request_id, index=index, task=task)

    def info(self, key: KeyInfo) -> ModelInfo:
        loaded = self.model()
        self.admit(key, 0)
        release, manifest = loaded.release, loaded.manifest
        return ModelInfo(
            version=release.version, variant=release.variant, source=release.uri, configured=self.settings.model,
            loaded_at=loaded.loaded_at, format=manifest.format, labels=loaded.labels, max_length=manifest.max_length,
            metrics=Figures(**{k: v for k, v in release.figures.items() if k in CLASSIFIER_FIGURES or isinstance(loaded, Generating)}),
        )  # fmt: skip
