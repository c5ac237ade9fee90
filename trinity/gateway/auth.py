"""Who is asking: API keys and tenants at the gateway.

With ``api_keys`` (config file, ``TRINITY_GATEWAY_API_KEYS``, ``--api-key``) every request
needs ``Authorization: Bearer <key>`` and the key alone decides the tenant; an
``x-tenant-id`` naming another tenant is refused (403). Without keys the gateway serves one
anonymous tenant and refuses ``x-tenant-id`` (403), unless ``trust_tenant_header`` says a
trusted proxy in front sets it. The OpenAI ``user`` field never selects a tenant.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from trinity.errors import BadRequest, ErrorCode, TrinityError
from trinity.gateway.config import GatewayConfig

__all__ = ["TENANT_HEADER", "resolve_tenant"]

TENANT_HEADER = "x-tenant-id"


def _bearer(headers: Mapping[str, str]) -> bytes:
    auth = headers.get("authorization", "")
    return auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""


def _tenant_of_key(keys: Mapping[str, str], given: bytes) -> str | None:
    found = None
    for key, tenant in keys.items():  # NOTE: no early exit: timing says nothing about the keys
        if hmac.compare_digest(given, key.encode()):
            found = tenant
    return found if given else None


def resolve_tenant(cfg: GatewayConfig, headers: Mapping[str, str]) -> str:
    """The request's tenant, or a :class:`TrinityError` (401 / 403 / 400) naming the header at fault."""
    claimed = headers.get(TENANT_HEADER)
    if cfg.api_keys:
        tenant = _tenant_of_key(cfg.api_keys, _bearer(headers))
        if tenant is None:
            raise TrinityError("invalid or missing API key (Authorization: Bearer <key>)", "authorization",
                               code=ErrorCode.UNAUTHENTICATED)
        if claimed is not None and claimed != tenant:
            raise TrinityError(f"{TENANT_HEADER}: the API key decides the tenant; this key cannot act as another "
                               "tenant", TENANT_HEADER, code=ErrorCode.PERMISSION_DENIED)
        return tenant
    if not cfg.trust_tenant_header:
        if claimed is not None:
            raise TrinityError(f"{TENANT_HEADER}: this gateway has no API keys, so it serves one anonymous tenant; "
                               "tenants come from API keys (--api-key KEY=TENANT)", TENANT_HEADER,
                               code=ErrorCode.PERMISSION_DENIED)
        return cfg.default_tenant
    if claimed is None:
        return cfg.default_tenant
    if not claimed.strip():
        raise BadRequest(f"{TENANT_HEADER}: expected a non-empty tenant name", TENANT_HEADER)
    # NOTE: hashed, so any client string becomes a safe, bounded pool tenant that never equals the anonymous one.
    return "t-" + hashlib.sha256(claimed.encode()).hexdigest()[:16]
