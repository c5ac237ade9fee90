"""Client API keys of the gateway: ``KEY[=TENANT]`` specs, merged from the file, the environment
(``TRINITY_GATEWAY_API_KEYS``) and ``--api-key``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["TENANT_RE", "check_api_keys", "merge_api_keys", "parse_api_keys"]

TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$")  # NOTE: the pool's tenant names
KEY_RE = re.compile(r"^[^\s,]+$")


def check_api_keys(keys: Mapping[str, str]) -> None:
    """Keys of 8+ visible characters (no spaces or commas), each mapped to a pool tenant name."""
    for key, tenant in keys.items():
        if len(key) < 8 or not KEY_RE.match(key):
            raise ValueError("api_keys: each key needs at least 8 characters and no whitespace or commas")
        if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
            raise ValueError(f"api_keys: tenant {tenant!r} is not 1-128 of [A-Za-z0-9_.:@-]")


def merge_api_keys(*sources: Mapping[str, str]) -> dict[str, str]:
    """The union of key -> tenant maps; a key given two different tenants is an error."""
    out: dict[str, str] = {}
    for source in sources:
        for key, tenant in source.items():
            if out.setdefault(key, tenant) != tenant:
                raise ValueError(f"api_keys: a key maps to exactly one tenant (one key is given both "
                                 f"{out[key]!r} and {tenant!r})")
    return out


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
