"""One error shape for every non-2xx answer: ``{"error": {"field": ..., "message": ...}}``.

``field`` is a dotted path into the request (``vectors.3.17``, ``k``, ``name``) or
``null`` when no single field is at fault.  The catch-all turns anything unexpected into
a logged 500 with a generic message; client inputs are validated before they can reach
code that could fail that way (the OpenAPI fuzz test holds us to it).
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from trinity.engine import OverloadedError
from trinity.serving.spec import CollectionGone, Conflict, InvalidRequest, NotFound, StorageFull, StoreUnavailable

log = logging.getLogger("trinity.serving")

_FIELD_PREFIX = re.compile(r"^(?:Value error, )?([a-z_]+): (.*)$", re.S)
_LOCATIONS = {"body", "query", "path", "header", "cookie"}


def _err(description: str) -> dict[str, Any]:
    from trinity.serving.models import ErrorBody

    return {"model": ErrorBody, "description": description}


#: Documented error answers of every /v1 route (all share the ErrorBody shape).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _err("body is not valid JSON"), 404: _err("unknown collection or cache"),
    409: _err("already exists / wrong state"), 413: _err("body over the size limit"),
    422: _err("invalid input; `field` names it"), 429: _err("overloaded; retry after Retry-After seconds"),
    503: _err("unavailable: a quarantined collection, a failed write-ahead log (Retry-After), shutting down"),
    507: _err("no space left on the device; nothing was stored (Retry-After)"),
}


class ApiError(Exception):
    """Raise from a handler to answer ``status`` with the standard error body."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


class Overloaded(ApiError):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(429, message, None, {"Retry-After": str(retry_after_s)})


class FastJSONResponse(JSONResponse):
    """JSON with ASCII escapes: lone surrogates in stored payloads can never fail encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    return FastJSONResponse({"error": {"field": field, "message": message}}, status_code=status, headers=headers)


def _field_of(loc: tuple[Any, ...], msg: str) -> tuple[str | None, str]:
    parts = [str(p) for p in loc]
    where = parts[0] if parts and parts[0] in _LOCATIONS else None
    if where:
        parts = parts[1:]
    # pydantic puts model-level validator errors at the model itself; our validators
    # prefix their message with the field they are about ("dim: ...").
    m = _FIELD_PREFIX.match(msg)
    if m:
        parts.append(m.group(1))
        msg = m.group(2)
    return (".".join(parts) or where), msg  # the whole body (or query, ...) when no single field


def _validation_handler(request: Request, exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if not errors:
        return error_response(422, "invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return error_response(400, f"body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})",
                              "body")
    field, msg = _field_of(tuple(first.get("loc", ())), str(first.get("msg", "invalid value")))
    if first.get("type") == "missing" and field is None:
        return error_response(422, "a JSON request body is required", "body")
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return error_response(422, msg + more, field)


def _http_handler(request: Request, exc: StarletteHTTPException) -> Response:
    field = "body" if exc.status_code in (400, 413, 415) else None
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    return error_response(exc.status_code, detail, field, getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Register the handlers that give every error the standard body."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return _validation_handler(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return _http_handler(request, exc)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return error_response(404, str(exc), exc.field)

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> Response:
        return error_response(409, str(exc), exc.field)

    @app.exception_handler(InvalidRequest)
    async def _invalid(request: Request, exc: InvalidRequest) -> Response:
        return error_response(422, str(exc), exc.field)

    @app.exception_handler(CollectionGone)
    async def _gone(request: Request, exc: CollectionGone) -> Response:
        return error_response(404, f"collection {exc} was dropped", "name")

    @app.exception_handler(OverloadedError)
    async def _overloaded(request: Request, exc: OverloadedError) -> Response:
        wait = max(retry_after_s, math.ceil(exc.retry_after_s))
        return error_response(429, str(exc), None, {"Retry-After": str(wait)})

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable) -> Response:
        status = 507 if isinstance(exc, StorageFull) else 503
        if exc.retry:
            log.error("%s %s refused (%d): %s", request.method, request.url.path, status, exc)
        return error_response(status, str(exc), exc.field, {"Retry-After": str(retry_after_s)} if exc.retry else None)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", None)
