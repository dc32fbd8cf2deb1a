"""Request body size limit, as pure ASGI middleware.

Pure ASGI on purpose: Starlette's BaseHTTPMiddleware reads bodies through its own stream,
and an exception raised there while the body is read comes out as a 500, not a 413.
A declared Content-Length over the limit is refused before a byte of the body is read; a
chunked (or understated) body is counted as it streams in and refused the moment it passes
the limit, so no request ever holds more than `max_bytes` of body in memory.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frugal.serve.errors import error_body


class BodyTooLarge(Exception):
    pass


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, path: str) -> dict[str, Any]:
        return error_body(path, 413, f"The request body is larger than {self.max_bytes} bytes.",
                          "Send fewer or shorter texts per request (the server's max_body_bytes).")  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await send_json(send, 400, {"error": "The Content-Length header is not a number.", "fix": "Send a valid Content-Length."})
                return
            if int(declared) > self.max_bytes:
                await send_json(send, 413, self._too_large(scope["path"]), [(b"connection", b"close")])
                return
        received, started = 0, False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if started:  # cannot happen with this app (it answers after reading), but never send two responses
                raise
            await send_json(send, 413, self._too_large(scope["path"]), [(b"connection", b"close")])
