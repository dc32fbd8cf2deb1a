"""Prometheus metrics, and the outermost middleware: request id, timing, counting, and the last-resort 500.

Each app owns its CollectorRegistry, so two apps in one process (tests) never share counts.
"""

from __future__ import annotations

import logging
import time
import uuid

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frugal.serve.batcher import BatchStats
from frugal.serve.errors import error_body
from frugal.serve.limits import send_json

log = logging.getLogger(__name__)
OTHER = "other"  # the endpoint label of unknown paths: a scanner's random URLs must not each become a time series


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("frugal_requests", "HTTP requests by endpoint and status code.", ["endpoint", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("frugal_request_seconds", "Time to answer a request, by endpoint.", ["endpoint"], registry=self.registry)
        self.errors = Counter("frugal_errors", "Unhandled exceptions, each answered with a 500.", ["endpoint"], registry=self.registry)
        self.texts = Counter("frugal_texts", "Texts classified.", registry=self.registry)
        self.tokens = Counter("frugal_tokens", "Tokens of generative requests answered, by kind (prompt, completion).", ["kind"],
                              registry=self.registry)  # fmt: skip
        self.reloads = Counter("frugal_model_loads", "Model versions loaded and swapped in.", registry=self.registry)
        self.ready = Gauge("frugal_model_ready", "1 once a model is loaded.", registry=self.registry)
        self.batch_texts = Histogram("frugal_batch_texts", "Texts per model batch (adaptive batching).", registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))  # fmt: skip
        self.batch_wait = Histogram("frugal_batch_wait_seconds", "The first request's wait in the queue before its batch ran.",
                                    registry=self.registry)  # fmt: skip

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_texts.observe(stats.items)
        self.batch_wait.observe(stats.waited_s)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Observe:
    """Gives every request an id (scope state `request_id`, response header X-Request-ID), times and counts it, and turns
    an exception nothing else handled into a JSON 500 while the server carries on."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: frozenset[str]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        endpoint = scope["path"] if scope["path"] in self.endpoints else OTHER
        status, started = 500, False

        async def tagged_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        begun = time.perf_counter()
        try:
            await self.app(scope, receive, tagged_send)
        except Exception:
            log.exception("Unhandled error in %s %s (request %s)", scope["method"], scope["path"], request_id)
            self.metrics.errors.labels(endpoint).inc()
            status = 500
            if not started:
                problem = error_body(
                    scope["path"], 500, f"Internal error (request {request_id}).", "Retry; if it persists, report the request id."
                )
                await send_json(send, 500, problem, [(b"x-request-id", request_id.encode())])
        finally:
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - begun)
            self.metrics.requests.labels(endpoint, str(status)).inc()
