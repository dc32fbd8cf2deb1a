"""API errors: one JSON shape, `{"error": what went wrong, "fix": what to do}`, plus any headers (Retry-After).

The OpenAI-compatible endpoints (OPENAI_PATHS) answer OpenAI's shape instead, so OpenAI's clients read them:
`{"error": {"message": what went wrong and the fix, "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

OPENAI_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models"})
_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
_CODES = {401: "invalid_api_key", 403: "plan_without_access", 404: "not_found", 413: "request_too_large", 422: "invalid_request",
          429: "rate_limit_exceeded", 503: "model_not_ready"}  # fmt: skip


class ApiError(Exception):
    def __init__(self, status: int, error: str, fix: str, headers: dict[str, str] | None = None, code: str | None = None,
                 param: str | None = None) -> None:  # fmt: skip
        super().__init__(error)
        self.status, self.error, self.fix, self.headers = status, error, fix, headers or {}
        self.code, self.param = code, param  # OpenAI's error code and the request field at fault (OpenAI paths only)


def error_body(path: str, status: int, error: str, fix: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The error as the endpoint at `path` answers it."""
    if path not in OPENAI_PATHS:
        return {"error": error, "fix": fix}
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": f"{error} {fix}", "type": kind, "param": param, "code": code or _CODES.get(status, "server_error")}}


async def api_error_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    body = error_body(request.url.path, exc.status, exc.error, exc.fix, exc.code, exc.param)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)
