"""What each /v1 endpoint does once the key is known, as plain synchronous calls (the routes run them in a worker thread)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from frugal.accounts.store import Accounts, AccountsError, KeyInfo, Served
from frugal.config.serve import ServeSettings
from frugal.serve.batcher import Batcher
from frugal.serve.errors import ApiError
from frugal.serve.meter import Meter
from frugal.serve.metrics import Metrics
from frugal.serve.model import Classified, Loaded, ModelHolder
from frugal.serve.schemas import FeedbackRequest, FeedbackResponse, Figures, ModelInfo, Prediction, PredictResponse


@dataclass
class Service:
    settings: ServeSettings
    holder: ModelHolder
    store: Accounts
    metrics: Metrics
    batcher: Batcher[Classified]
    meter: Meter

    def authenticate(self, plaintext: str | None) -> KeyInfo:
        if not plaintext:
            raise ApiError(401, "No API key.", "Send `Authorization: Bearer <key>` or `X-API-Key: <key>` (keys: `frugal keys create`).",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip
        key = self.store.authenticate(plaintext)
        if key is None:
            raise ApiError(401, "Unknown or revoked API key.", "Check the key; ask the operator for a new one if it was revoked.",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip
        return key

    def model(self) -> Loaded:
        """The model to answer with; a request keeps this one even if a reload swaps another in meanwhile."""
        loaded = self.holder.current
        if loaded is None:
            raise ApiError(503, "No model is loaded yet.", "Retry in a few seconds; GET /readyz says when the server is ready.",
                           {"Retry-After": "5"})  # fmt: skip
        return loaded

    def admit(self, key: KeyInfo, n_texts: int) -> None:
        """Every /v1 request counts toward the key's rate; predicted texts also toward its monthly quota."""
        admission = self.store.admit(key, n_texts)
        if not admission.ok:
            headers = {"Retry-After": str(admission.retry_after)} if admission.retry_after is not None else {}
            fixes = {429: "Wait for Retry-After seconds, or move the key to a larger plan.", 401: "Ask the operator for a new key."}
            fix = fixes.get(admission.status, "Ask the operator for a key on a current plan.")
            raise ApiError(admission.status, admission.reason or "Request refused.", fix, headers)

    def predict(self, key: KeyInfo, texts: list[str], request_id: str) -> PredictResponse:
        if len(texts) > self.settings.max_texts:
            raise ApiError(422, f"{len(texts)} texts in one request; the limit is {self.settings.max_texts}.",
                           f"Split the texts into requests of at most {self.settings.max_texts}.")  # fmt: skip
        loaded = self.model()
        self.admit(key, len(texts))
        classified = self.batcher.run(loaded.classify, texts)
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

    def _add_feedback(self, key: KeyInfo, body: FeedbackRequest) -> int:
        try:
            return self.store.add_feedback(key, body.label, text=body.text, request_id=body.request_id, index=body.index)
        except AccountsError:
            if body.request_id is None:
                raise
        # Another worker process may have answered it, its writer one flush away: look once more after that.
        time.sleep(self.meter.flush_s)
        return self.store.add_feedback(key, body.label, text=body.text, request_id=body.request_id, index=body.index)

    def info(self, key: KeyInfo) -> ModelInfo:
        loaded = self.model()
        self.admit(key, 0)
        release, manifest = loaded.release, loaded.predictor.manifest
        return ModelInfo(
            version=release.version, variant=release.variant, source=release.uri, configured=self.settings.model,
            loaded_at=loaded.loaded_at, format=manifest.format, labels=loaded.labels, max_length=manifest.max_length,
            metrics=Figures(**release.figures),
        )  # fmt: skip
