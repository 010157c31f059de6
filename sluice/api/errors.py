"""Every error the API answers with, in one JSON shape per family of routes.

Native routes answer ``{"error": {"type", "message"}}``; the OpenAI routes (``/v1/...``) answer
OpenAI's ``{"error": {"message", "type", "param", "code"}}``, which the ``openai`` SDK parses into
its exceptions. Errors come from the one root :class:`~sluice.errors.SluiceError`: the core's
(validation 422, job not found 404, infrastructure 503) and the API's own below (auth 401/403,
limits 413/429). Nothing else leaks: an unexpected exception is logged and answered as a bare 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from sluice.errors import (
    ConfigError,
    InfrastructureError,
    JobNotFoundError,
    SluiceError,
    UnknownModelError,
    ValidationError,
)

log = logging.getLogger("sluice.api")


class ApiError(SluiceError):
    """An error with its HTTP status, its native ``type`` and its OpenAI ``type``/``code``/``param``."""

    status = 400
    kind = "invalid_request"
    openai_type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    pass


class Unauthenticated(ApiError):
    status, kind, openai_type, code = 401, "authentication_error", "invalid_request_error", "invalid_api_key"


class Forbidden(ApiError):
    status, kind, openai_type = 403, "permission_error", "permission_error"


class NotFound(ApiError):
    status, kind = 404, "not_found"


class PayloadTooLarge(ApiError):
    status, kind = 413, "payload_too_large"


class TooManyRequests(ApiError):
    status, kind, openai_type, code = 429, "rate_limited", "rate_limit_error", "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnsupportedMediaType(ApiError):
    status, kind = 415, "unsupported_media_type"


#: core errors: (status, native type, OpenAI type, OpenAI code)
_CORE: list[tuple[type[SluiceError], int, str, str, str | None]] = [
    (ValidationError, 422, "validation_error", "invalid_request_error", None),
    (UnknownModelError, 422, "unknown_model", "invalid_request_error", "model_not_found"),
    (JobNotFoundError, 404, "not_found", "invalid_request_error", None),
    (InfrastructureError, 503, "unavailable", "server_error", "service_unavailable"),
    (ConfigError, 500, "config_error", "server_error", None),
]


def is_openai(path: str) -> bool:
    return path.startswith("/v1/")


def error_body(path: str, status: int, kind: str, message: str, openai_type: str | None = None,
               code: str | None = None, param: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The error JSON for a route: OpenAI's shape under ``/v1/``, the native one elsewhere."""
    if is_openai(path):
        openai_type = openai_type or ("server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": message, "type": openai_type, "param": param, "code": code}}
    return {"error": {"type": kind, "message": message}}


def error_response(path: str, status: int, kind: str, message: str, headers: dict[str, str] | None = None,
                   **openai: Any) -> JSONResponse:  # fmt: skip
    return JSONResponse(error_body(path, status, kind, message, **openai), status_code=status, headers=headers)


def _sluice_error(request: Request, exc: Exception) -> JSONResponse:
    path = request.url.path
    if isinstance(exc, ApiError):
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
        if isinstance(exc, Unauthenticated):
            headers = {"WWW-Authenticate": "Bearer"}
        return error_response(path, exc.status, exc.kind, str(exc), headers, openai_type=exc.openai_type,
                              code=exc.code, param=exc.param)  # fmt: skip
    for cls, status, kind, openai_type, code in _CORE:
        if isinstance(exc, cls):
            if status == 422 and is_openai(path):
                status = 400  # OpenAI answers bad input with 400
            if status >= 500:
                log.warning("%s %s: %s", request.method, path, exc)
            headers = {"Retry-After": "5"} if status == 503 else None
            return error_response(path, status, kind, str(exc), headers, openai_type=openai_type, code=code)
    return _unexpected(request, exc)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(request.url.path, 500, "internal_error", "internal error; the API's log has the details")


def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own parameter and body validation, as one readable line."""
    problems = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = problems[0] if problems else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    message = f"{where}: {first.get('msg', 'invalid request')}"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s))"
    status = 400 if is_openai(request.url.path) else 422
    return error_response(request.url.path, status, "validation_error", message, param=where)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (no such route, wrong method) in the same shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "error"
    kinds = {404: "not_found", 405: "method_not_allowed"}
    headers = getattr(exc, "headers", None)
    return error_response(request.url.path, status, kinds.get(status, "http_error"), str(detail), headers)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(SluiceError, _sluice_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
