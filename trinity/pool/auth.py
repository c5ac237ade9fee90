"""API-key authentication: ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``).

Keys come from :class:`~trinity.pool.config.ServerConfig` (``TRINITY_API_KEYS``).
With no keys configured every request is allowed -- the server then refuses to bind a
non-loopback address (see ``ServerConfig.check_bind``).  Keys are compared in constant
time; a wrong key and a missing key get the same 401.

The check runs in the outer ASGI layer (a header lookup, microseconds) rather than as a
FastAPI dependency (sub-dependency resolution cost ~0.2 ms per request); the OpenAPI
document declares the scheme via :func:`add_security_scheme`.  ``/health``, the OpenAPI
document and the docs pages stay open: they expose no data.
"""

from __future__ import annotations

import hmac
from typing import Any

OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def _matches(given: bytes, keys: tuple[bytes, ...]) -> bool:
    # NOTE: no early exit: timing says nothing about which key a guess came close to.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key)
    return ok


class KeyChecker:
    """``allowed(scope)`` for one set of keys (always true when there are none)."""

    def __init__(self, keys: frozenset[str]) -> None:
        self.keys = tuple(k.encode("utf-8") for k in sorted(keys))

    def allowed(self, scope: dict[str, Any]) -> bool:
        if not self.keys or scope["path"] in OPEN_PATHS:
            return True
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
                break
            if name == b"x-api-key":
                given = value.strip()
        return bool(given) and _matches(given, self.keys)


def add_security_scheme(openapi: dict[str, Any]) -> dict[str, Any]:
    """Declare bearer / X-API-Key auth on every operation except the open paths."""
    schemes = openapi.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["bearer"] = {"type": "http", "scheme": "bearer", "description": "an API key from TRINITY_API_KEYS"}
    schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, item in openapi.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for op in item.values():
            op["security"] = [{"bearer": []}, {"apiKey": []}]
            op.setdefault("responses", {})["401"] = {
                "description": "missing or invalid API key",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    return openapi
