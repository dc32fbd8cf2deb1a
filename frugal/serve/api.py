"""The HTTP routes. /v1/* needs an API key, checked before the body is read; health, readiness and metrics do not."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from frugal.accounts.store import KeyInfo
from frugal.serve.generation import Generating
from frugal.serve.schemas import (
    FeedbackRequest,
    FeedbackResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    Problem,
    ResponseFeedbackRequest,
)
from frugal.serve.service import Service

Model = TypeVar("Model", bound=BaseModel)
router = APIRouter()
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or X-API-Key: <key>")
_WHY = {401: "missing, unknown or revoked key", 413: "body over max_body_bytes", 429: "over the plan's rate or quota", 503: "no model yet"}
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Problem, "description": why} for code, why in _WHY.items()}


def service(request: Request) -> Service:
    return request.app.state.service


async def api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> KeyInfo:
    plaintext = bearer.credentials if bearer is not None else header
    return await run_in_threadpool(service(request).authenticate, plaintext)


def documented(model: type[BaseModel]) -> dict[str, Any]:
    """The body schema for /docs: the routes parse the body themselves, after the key check, so FastAPI cannot infer it."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def parse(request: Request, model: type[Model]) -> Model:
    """The body as `model`; malformed JSON or a wrong field is FastAPI's usual 422, with `loc` naming the field."""
    raw = await request.body()  # the size limit (limits.py) applies while this reads
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


Key = Annotated[KeyInfo, Depends(api_key)]


@router.post("/v1/predict", response_model=PredictResponse, responses=_ERRORS, openapi_extra=documented(PredictRequest))
async def predict(request: Request, key: Key) -> PredictResponse:
    """Classify texts: a label, every label's probability and a truncation flag per text."""
    body = await parse(request, PredictRequest)
    serving = service(request)
    loaded = serving.checked(body.texts)
    # Awaited, not waited for in a worker thread: a request queued for admission or for its batch holds no pool thread.
    serving.require((await asyncio.wrap_future(serving.admission(key, len(body.texts))))[0])
    classified = await asyncio.wrap_future(serving.batcher.submit(loaded.classify, body.texts))
    return serving.answer(key, body.texts, loaded, classified, request.state.request_id)


@router.post("/v1/feedback", response_model=FeedbackResponse, status_code=201, responses=_ERRORS,
             openapi_extra=documented(FeedbackRequest))  # fmt: skip
async def feedback(request: Request, key: Key) -> FeedbackResponse:
    """The correct label for a text served earlier (request_id + index) or for any text; it feeds the next retraining.
    A generative model's: the corrected `response` for a completion served earlier (request_id) or for a `prompt`."""
    serving = service(request)
    if isinstance(serving.holder.current, Generating):
        answer = await parse(request, ResponseFeedbackRequest)
        return await run_in_threadpool(serving.response_feedback, key, answer)
    body = await parse(request, FeedbackRequest)
    return await run_in_threadpool(serving.feedback, key, body)


@router.get("/v1/model", response_model=ModelInfo, responses=_ERRORS)
async def model(request: Request, key: Key) -> ModelInfo:
    """The version served, where it came from, and its measured quality and cost."""
    return await run_in_threadpool(service(request).info, key)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (it may still be loading the model)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": Problem, "description": "no model loaded yet"}})
async def readyz(request: Request) -> JSONResponse:
    """200 once a model is loaded, 503 before."""
    holder = service(request).holder
    loaded = holder.current
    if loaded is None:
        why = f"No model loaded yet{f' (last attempt: {holder.last_error})' if holder.last_error else ''}."
        return JSONResponse({"error": why, "fix": "Wait for the first load; check the server log and the serve config's model."}, 503)
    return JSONResponse({"status": "ready", "model_version": loaded.version})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    payload, content_type = service(request).metrics.render()
    return Response(payload, media_type=content_type)
