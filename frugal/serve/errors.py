"""API errors: one JSON shape, `{"error": what went wrong, "fix": what to do}`, plus any headers (Retry-After)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse


class ApiError(Exception):
    def __init__(self, status: int, error: str, fix: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.fix, self.headers = status, error, fix, headers or {}


async def api_error_response(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.error, "fix": exc.fix}, status_code=exc.status, headers=exc.headers)
