"""The one shape of every error the routes return: ``{"error": "..."}`` with a status (and headers)."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error a route answers: ``status``, a one-line ``message``; ``retry_after`` seconds (503) and
    ``close`` (the connection closes after the answer: the request was not read whole)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.retry_after, self.close = status, message, retry_after, close


def error_response(status: int, message: str, retry_after: int | None = None, close: bool = False) -> JSONResponse:
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    if close:
        headers["connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)
