"""The serving app: `create_app(settings, project_root)` builds it; `frugal serve` runs it under uvicorn.

Request path, outermost first: Observe (request id, metrics, last-resort 500) -> BodyLimit
(413) -> FastAPI routes (401 key check, then the body's 422s, then 429 admission, then the
model). Both middlewares are pure ASGI; nothing here uses BaseHTTPMiddleware.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from frugal import __version__
from frugal.accounts.admission import Admission, Request
from frugal.accounts.store import Accounts, url_for
from frugal.config.serve import ServeSettings
from frugal.serve import api, openai
from frugal.serve.batcher import Batcher
from frugal.serve.errors import ApiError, api_error_response
from frugal.serve.generation import Generating
from frugal.serve.limits import BodyLimit
from frugal.serve.meter import Meter
from frugal.serve.metrics import Metrics, Observe
from frugal.serve.model import Classified, Loaded, ModelHolder
from frugal.serve.service import Service
from frugal.serve.source import source_for

log = logging.getLogger(__name__)
WORKER_ENV = "FRUGAL_SERVE_WORKER"
ADMISSIONS_PER_WRITE = 256  # a bound on one admission transaction (its time is the wait of every request in it)
DESCRIPTION = """Classify texts with the registered champion, or, for a generative champion, answer OpenAI-compatible
chat and text completions. Every /v1 call needs an API key
(`Authorization: Bearer <key>` or `X-API-Key`), is rate-limited and metered by the key's plan."""


def create_app(settings: ServeSettings, project_root: Path) -> FastAPI:
    """The app, its accounts schema migrated; the model loads in the background once it starts (GET /readyz)."""
    store = Accounts(url_for(settings, project_root), settings.plans)
    store.migrate()  # here rather than at startup: a bad database URL is one clear CLI error, not a uvicorn traceback
    metrics = Metrics()
    threads = max(1, settings.threads // settings.workers)  # each worker process gets its share of the inference threads
    holder = ModelHolder(source_for(settings, project_root), threads, settings.batch_size, settings.reload_seconds)
    holder.on_swap = _count_swap(metrics)
    batcher: Batcher[str, Classified] = Batcher(settings.max_batch, settings.max_wait_ms, metrics.observe_batch)
    # Admissions are batched too: one transaction for every request that arrived while the last one was written.
    admissions: Batcher[Request, Admission] = Batcher(ADMISSIONS_PER_WRITE, 0)
    service = Service(settings, holder, store, metrics, batcher, admissions, Meter(store, settings.meter_flush_ms))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        holder.start()
        batcher.start()
        admissions.start()
        service.meter.start()
        unhook = _on_sighup(holder.wake)
        try:
            yield
        finally:  # uvicorn has finished the requests in flight: answer what is queued, then bill it all (SIGTERM loses nothing)
            unhook()
            batcher.stop()
            admissions.stop()
            service.generations.stop()
            service.meter.stop()
            holder.stop()
            store.close()

    app = FastAPI(title="frugal", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.include_router(api.router)
    app.include_router(openai.router)  # a generative model's OpenAI-compatible endpoints
    app.add_exception_handler(ApiError, api_error_response)
    routes = [*app.routes, *api.router.routes, *openai.router.routes]
    endpoints = frozenset(route.path for route in routes if hasattr(route, "path"))  # /docs too
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Observe, metrics=metrics, endpoints=endpoints)  # added last: outermost
    return app


def worker_app() -> FastAPI:
    """The app of one worker process under `frugal serve --workers N` (uvicorn imports this factory in each process)."""
    spec = json.loads(os.environ[WORKER_ENV])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    return create_app(ServeSettings(**spec["settings"]), Path(spec["project_root"]))


def worker_env(settings: ServeSettings, project_root: Path) -> dict[str, str]:
    """What `worker_app` reads: the parent's validated settings, so every worker serves exactly them."""
    return {WORKER_ENV: json.dumps({"settings": settings.model_dump(mode="json"), "project_root": str(project_root)})}


def _count_swap(metrics: Metrics) -> Callable[[Loaded | Generating], None]:
    def swapped(_loaded: Loaded | Generating) -> None:
        metrics.reloads.inc()
        metrics.ready.set(1)

    return swapped


def _on_sighup(callback: Callable[[], None]) -> Callable[[], None]:
    """SIGHUP wakes the reload check (`kill -HUP <pid>` after moving the alias); returns the undo."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, callback)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError):  # no SIGHUP (Windows) or not the main thread
        log.info("SIGHUP does not trigger a reload here; the alias is still polled")
        return lambda: None
    return lambda: loop.remove_signal_handler(signal.SIGHUP)
