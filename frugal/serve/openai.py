"""OpenAI-compatible routes for a generative model: /v1/chat/completions, /v1/completions (streaming or not), /v1/models.

A request's path: the key (401), the body (422: a missing or wrong field, max_tokens over the server's max_tokens), the
prompt rendered and counted in a worker thread (422: chat on a model without a chat template; 413: prompt + max_tokens
over the model's context), admission (429: rate, or prompt tokens + max_tokens over the month's token quota; taken
before the model runs), then the generation in the one generation thread (generation.py). Its bill (prompt and
completion tokens, the unused part of max_tokens given back to the quota) goes to the meter when it ends, also when a
streaming client leaves early. Errors are OpenAI's JSON error objects (errors.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from frugal.accounts.store import KeyInfo, Served, TokenUse
from frugal.runtime.generator import Message, PromptError, Token
from frugal.serve.api import Key, documented, service
from frugal.serve.errors import ApiError, error_body
from frugal.serve.generation import Generating, Output, budget
from frugal.serve.openai_schemas import ChatRequest, CompletionRequest, Shapes
from frugal.serve.service import Service

log = logging.getLogger(__name__)
Body = TypeVar("Body", bound=BaseModel)
router = APIRouter()
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold the tokens back


@router.post("/v1/chat/completions", openapi_extra=documented(ChatRequest))
async def chat_completions(request: Request, key: Key) -> Response:
    """OpenAI's chat completion: the messages through the model's chat template, greedy decoding."""
    body = await _parse(request, ChatRequest)
    return await _complete(request, key, body, body.conversation(), body.prompt_text(), chat=True)


@router.post("/v1/completions", openapi_extra=documented(CompletionRequest))
async def completions(request: Request, key: Key) -> Response:
    """OpenAI's (legacy) text completion: the prompt as the model takes a prompt, greedy decoding."""
    body = await _parse(request, CompletionRequest)
    if isinstance(body.prompt, list) and len(body.prompt) != 1:
        raise ApiError(422, f"prompt is a list of {len(body.prompt)} prompts; one request completes one.",
                       "Send one prompt per request.", param="prompt")  # fmt: skip
    return await _complete(request, key, body, body.prompt_text(), body.prompt_text(), chat=False)


@router.get("/v1/models")
async def models(request: Request, key: Key) -> dict[str, Any]:
    """OpenAI's model list: the one model this server serves."""
    serving = service(request)
    loaded = serving.model()
    await run_in_threadpool(serving.admit, key, 0)
    entry = {"id": loaded.release.uri, "object": "model", "created": int(loaded.loaded_at.timestamp()), "owned_by": "frugal"}
    return {"object": "list", "data": [entry]}


async def _parse(request: Request, model: type[Body]) -> Body:
    """The body as `model`; the first wrong or missing field is a 422 naming it (OpenAI's `param`)."""
    raw = await request.body()  # the size limit (limits.py) applies while this reads
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        param = ".".join(map(str, first["loc"])) or None
        raise ApiError(422, f"{param or 'The body'}: {first['msg']}.", "Send the fields of OpenAI's request (docs/serving.md).",
                       param=param) from None  # fmt: skip


@dataclass
class _Job:
    """One admitted generation: what it runs, and what its bill needs."""

    serving: Service
    key: KeyInfo
    loaded: Generating
    prompt: str | Sequence[Message]
    prompt_text: str  # kept as the served text, for feedback by request id
    prompt_tokens: int
    max_tokens: int
    request_id: str

    def tokens(self) -> AbstractAsyncContextManager[AsyncIterator[Token]]:
        """The tokens as they come; leaving the `async with` (a client gone) stops the generation at its next token."""
        return aclosing(self.serving.generations.tokens(self.loaded.generator, self.prompt, self.max_tokens))

    def bill(self, output: Output, failed: bool) -> None:
        """On the meter: the tokens used (a failure before any token bills nothing) and the rest of max_tokens given back."""
        prompt = 0 if failed and not output.tokens else self.prompt_tokens
        use = TokenUse(prompt, output.tokens, self.prompt_tokens + self.max_tokens)
        cost = self.loaded.cost_usd(output.tokens)
        served = Served(self.key, self.request_id, [self.prompt_text], [""], self.loaded.version, cost, datetime.now(UTC), use)
        self.serving.meter.add(served)
        self.serving.metrics.tokens.labels("prompt").inc(prompt)
        self.serving.metrics.tokens.labels("completion").inc(output.tokens)


async def _complete(request: Request, key: KeyInfo, body: ChatRequest | CompletionRequest, prompt: str | Sequence[Message],
                    prompt_text: str, chat: bool) -> Response:  # fmt: skip
    serving = service(request)
    loaded = serving.generating()
    prompt_tokens, max_tokens = await _budget(serving, loaded, body, prompt, chat)
    # Awaited, not waited for in a worker thread: a request queued for admission holds no pool thread.
    serving.require((await asyncio.wrap_future(serving.admission(key, 0, prompt_tokens + max_tokens)))[0])
    request_id = request.state.request_id
    job = _Job(serving, key, loaded, prompt, prompt_text, prompt_tokens, max_tokens, request_id)
    shapes = Shapes(chat, request_id, loaded.release.uri)
    if body.stream:
        return StreamingResponse(_events(job, shapes, body.include_usage, request.url.path), media_type="text/event-stream",
                                 headers=_SSE_HEADERS)  # fmt: skip
    output, failed = Output(loaded.generator.eos_ids), True
    try:
        async with job.tokens() as tokens:
            async for token in tokens:
                output.add(token)
        failed = False
    finally:
        job.bill(output, failed)
    return JSONResponse(shapes.whole(output.text, output.finish_reason, prompt_tokens, output.tokens))


async def _budget(serving: Service, loaded: Generating, body: ChatRequest | CompletionRequest, prompt: str | Sequence[Message],
                  chat: bool) -> tuple[int, int]:  # fmt: skip
    """(prompt tokens, max_tokens), or the 422 / 413 that says why the request cannot run."""
    cap, asked = serving.settings.max_tokens, body.asked_tokens
    if asked is not None and asked > cap:
        raise ApiError(422, f"max_tokens {asked} is more than this server's limit of {cap}.", f"Ask for at most {cap} new tokens.",
                       code="max_tokens_too_large", param="max_tokens")  # fmt: skip
    try:  # the chat template and the tokenizer: CPU work, off the event loop
        return await run_in_threadpool(budget, loaded.generator, prompt, asked, cap)
    except PromptError as exc:
        code = "context_length_exceeded" if exc.status == 413 else "invalid_prompt"
        raise ApiError(exc.status, exc.problem, exc.fix, code=code, param="messages" if chat else "prompt") from None


async def _events(job: _Job, shapes: Shapes, include_usage: bool, path: str) -> AsyncIterator[str]:
    """The server-sent events of a streamed answer; its bill when it ends, however it ends (a client gone included)."""
    output, failed = Output(job.loaded.generator.eos_ids), True
    try:
        if shapes.chat:
            yield _event(shapes.first())
        async with job.tokens() as tokens:
            async for token in tokens:
                output.add(token)
                if token.text:
                    yield _event(shapes.chunk(token.text))
        yield _event(shapes.chunk(None, output.finish_reason))
        if include_usage:
            yield _event(shapes.usage_chunk(job.prompt_tokens, output.tokens))
        yield "data: [DONE]\n\n"
        failed = False
    except Exception:  # the response has started: the error goes in the stream, as OpenAI's does
        log.exception("Generation failed mid-stream (request %s)", job.request_id)
        yield _event(error_body(path, 500, f"Internal error (request {job.request_id}).", "Retry; if it persists, report the request id."))
    finally:
        job.bill(output, failed)


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"
