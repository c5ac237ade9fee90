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
from collections.abc import Iterable, Mapping

from trinity.serving.gateway_config import TENANT_RE, GatewayConfig, check_api_keys
from trinity.serving.gateway_errors import GatewayError

__all__ = ["TENANT_HEADER", "merge_api_keys", "parse_api_keys", "resolve_tenant"]

TENANT_HEADER = "x-tenant-id"


def parse_api_keys(specs: Iterable[str], default_tenant: str = "default") -> dict[str, str]:
    """``KEY=TENANT`` or ``KEY`` (-> ``default_tenant``) items, split at the last ``=``.

    NOTE: an ``=`` followed by no valid tenant name is part of the key (base64 padding).
    """
    out: dict[str, str] = {}
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        key, _, tenant = spec.rpartition("=")
        if not key or not TENANT_RE.match(tenant):
            key, tenant = spec, default_tenant
        out = merge_api_keys(out, {key: tenant})
    check_api_keys(out)
    return out


def merge_api_keys(*sources: Mapping[str, str]) -> dict[str, str]:
    """The union of key -> tenant maps; a key given two different tenants is an error."""
    out: dict[str, str] = {}
    for source in sources:
        for key, tenant in source.items():
            if out.setdefault(key, tenant) != tenant:
                raise ValueError(f"api_keys: a key maps to exactly one tenant (one key is given both "
                                 f"{out[key]!r} and {tenant!r})")
    return out


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
    """The request's tenant, or :class:`GatewayError` 401 / 403 / 400 naming the header at fault."""
    claimed = headers.get(TENANT_HEADER)
    if cfg.api_keys:
        tenant = _tenant_of_key(cfg.api_keys, _bearer(headers))
        if tenant is None:
            raise GatewayError(401, "invalid or missing API key (Authorization: Bearer <key>)", "authorization")
        if claimed is not None and claimed != tenant:
            raise GatewayError(403, f"{TENANT_HEADER}: the API key decides the tenant; this key cannot act as "
                                    "another tenant", TENANT_HEADER)
        return tenant
    if not cfg.trust_tenant_header:
        if claimed is not None:
            raise GatewayError(403, f"{TENANT_HEADER}: this gateway has no API keys, so it serves one anonymous "
                                    "tenant; tenants come from API keys (--api-key KEY=TENANT)", TENANT_HEADER)
        return cfg.default_tenant
    if claimed is None:
        return cfg.default_tenant
    if not claimed.strip():
        raise GatewayError(400, f"{TENANT_HEADER}: expected a non-empty tenant name", TENANT_HEADER)
    # NOTE: hashed, so any client string becomes a safe, bounded pool tenant that never equals the anonymous one.
    return "t-" + hashlib.sha256(claimed.encode()).hexdigest()[:16]
