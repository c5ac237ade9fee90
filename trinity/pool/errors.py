"""The pool's error answers: ``{"error": {"code", "field", "message"}}`` with the status that
:data:`trinity.errors.HTTP_STATUS` gives the code.

``field`` is a dotted path into the request (``vectors.3.17``, ``k``, ``name``) or ``null``.
Anything unexpected is a logged 500 with a generic message.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from trinity.errors import HTTP_STATUS, ErrorCode, TrinityError
from trinity.pool.outcomes import engine_error
from trinity.pool.protocol import ErrorBody

__all__ = ["ERROR_RESPONSES", "FastJSONResponse", "error_response", "install_error_handlers"]

log = logging.getLogger("trinity.pool")

_LOCATIONS = {"body", "query", "path", "header", "cookie"}
_STARLETTE_CODES = {400: ErrorCode.INVALID_JSON, 404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED,
                    413: ErrorCode.BODY_TOO_LARGE, 415: ErrorCode.UNSUPPORTED_MEDIA_TYPE}


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


#: Documented error answers of every /v1 route (all share the ErrorBody shape).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("body is not valid JSON"), 404: _doc("unknown collection or cache"),
    409: _doc("already exists / wrong state"), 413: _doc("body over the size limit"),
    422: _doc("invalid input; `field` names it"), 429: _doc("overloaded; retry after Retry-After seconds"),
    503: _doc("unavailable: a quarantined collection, a failed write-ahead log (Retry-After), shutting down"),
    507: _doc("no space left on the device; nothing was stored (Retry-After)"),
}


class FastJSONResponse(JSONResponse):
    """JSON with ASCII escapes: lone surrogates in stored payloads can never fail encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(code: ErrorCode, message: str, field: str | None = None, headers: dict[str, str] | None = None,
                   status: int | None = None) -> Response:
    body = {"error": {"code": code.value, "field": field, "message": message}}
    return FastJSONResponse(body, status_code=status or HTTP_STATUS[code], headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc]
    where = parts[0] if parts and parts[0] in _LOCATIONS else None
    if where:
        parts = parts[1:]
    return ".".join(parts) or where  # the whole body (or query, ...) when no single field


def _validation_response(exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if not errors:
        return error_response(ErrorCode.INVALID_ARGUMENT, "invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "decode error")
        return error_response(ErrorCode.INVALID_JSON, f"body is not valid JSON ({reason})", "body")
    field = _field_of(tuple(first.get("loc", ())))
    if first.get("type") == "missing" and field is None:
        return error_response(ErrorCode.INVALID_ARGUMENT, "a JSON request body is required", "body")
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return error_response(ErrorCode.INVALID_ARGUMENT, str(first.get("msg", "invalid value")) + more, field)


def _http_response(exc: StarletteHTTPException) -> Response:
    status = exc.status_code
    code = _STARLETTE_CODES.get(status, ErrorCode.INVALID_REQUEST if 400 <= status < 500 else ErrorCode.INTERNAL)
    field = "body" if status in (400, 413, 415) else None
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    return error_response(code, detail, field, getattr(exc, "headers", None), status=status)


def _trinity_response(request: Request, err: TrinityError, retry_after_s: int) -> Response:
    if err.code is ErrorCode.INTERNAL:
        log.error("internal error on %s %s: %s", request.method, request.url.path, err)
        return error_response(ErrorCode.INTERNAL, "internal server error")
    headers = None
    if err.retryable:
        wait = max(retry_after_s, math.ceil(err.retry_after_s or 0))
        headers = {"Retry-After": str(wait)}
        if err.code is not ErrorCode.OVERLOADED:
            log.error("%s %s refused (%s): %s", request.method, request.url.path, err.code.value, err)
    return error_response(err.code, err.message, err.field, headers)


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Register the handlers that give every error the standard body."""

    async def trinity(request: Request, exc: Exception) -> Response:
        err = engine_error(exc)
        if err is None:
            raise exc
        return _trinity_response(request, err, retry_after_s)

    app.add_exception_handler(TrinityError, trinity)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return _http_response(exc)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(ErrorCode.INTERNAL, "internal server error")
