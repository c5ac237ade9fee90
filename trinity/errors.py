"""One error taxonomy for every Trinity process: a machine-readable code, the offending field,
and one table from codes to HTTP statuses (the pool, the gateway and their clients share it).

A deadline that cuts a search short is not an error: the answer comes back ``partial``.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "HTTP_STATUS", "RETRY_AFTER_CODES", "BadRequest", "Conflict", "ErrorCode", "InvalidArgument", "NotFound",
    "Overloaded", "TrinityError", "Unavailable", "http_status",
]


class ErrorCode(enum.StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    INVALID_ARGUMENT = "invalid_argument"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNKNOWN_COLLECTION = "unknown_collection"
    UNKNOWN_CACHE = "unknown_cache"
    BODY_TIMEOUT = "body_timeout"
    ALREADY_EXISTS = "already_exists"
    CONFLICT = "conflict"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    OVERLOADED = "overloaded"
    CLIENT_GONE = "client_gone"
    INTERNAL = "internal"
    UPSTREAM_FAILED = "upstream_failed"
    UPSTREAM_REJECTED = "upstream_rejected"
    UNAVAILABLE = "unavailable"
    ENGINE_CLOSED = "engine_closed"
    QUARANTINED = "quarantined"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    STORAGE_FULL = "storage_full"


#: The HTTP status of every code, for every route of every process.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_ARGUMENT: 422,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.UNKNOWN_COLLECTION: 404,
    ErrorCode.UNKNOWN_CACHE: 404,
    ErrorCode.BODY_TIMEOUT: 408,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.CONFLICT: 409,
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.CLIENT_GONE: 499,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UPSTREAM_FAILED: 502,
    ErrorCode.UPSTREAM_REJECTED: 400,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.ENGINE_CLOSED: 503,
    ErrorCode.QUARANTINED: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.STORAGE_FULL: 507,
}

#: Codes whose answer carries ``Retry-After``: trying again later can succeed.
RETRY_AFTER_CODES = frozenset({ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE, ErrorCode.STORAGE_FULL})


def http_status(code: ErrorCode | str) -> int:
    return HTTP_STATUS[ErrorCode(code)]


class TrinityError(Exception):
    """Base of every error a client can be answered with.

    ``field`` names the offending input (a dotted path such as ``vectors.3``, a header, or
    ``None``); ``retry_after_s`` overrides the server's default ``Retry-After``.
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, field: str | None = None, *, code: ErrorCode | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message, self.field, self.retry_after_s = message, field, retry_after_s
        if code is not None:
            self.code = code  # type: ignore[misc]

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    @property
    def retryable(self) -> bool:
        return self.code in RETRY_AFTER_CODES


class BadRequest(TrinityError):
    """An OpenAI-style invalid parameter (400), as the gateway answers it."""

    code = ErrorCode.INVALID_REQUEST


class InvalidArgument(TrinityError):
    """A client input the pool refuses (422)."""

    code = ErrorCode.INVALID_ARGUMENT


class InvalidInput(InvalidArgument, ValueError):
    """A bad argument to an in-process API (engine, index): 422 over HTTP, a ``ValueError`` in Python.

    Never raise it inside a pydantic validator: pydantic turns every ``ValueError`` into its own error.
    """


class NotFound(TrinityError):
    code = ErrorCode.NOT_FOUND


class Conflict(TrinityError):
    """Valid input that clashes with the current state (409)."""

    code = ErrorCode.CONFLICT


class Overloaded(TrinityError):
    code = ErrorCode.OVERLOADED


class Unavailable(TrinityError):
    code = ErrorCode.UNAVAILABLE
