"""Per-request options: gateway config < ``x-trinity-*`` / ``x-slo-*`` headers < the body's
``trinity`` object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from trinity.errors import BadRequest
from trinity.gateway.config import GatewayConfig

__all__ = ["RequestOptions", "resolve_options"]

_HEADERS = {
    "collection": "x-trinity-collection", "k": "x-trinity-k", "nprobe": "x-trinity-nprobe",
    "retrieval_interval": "x-trinity-retrieval-interval", "answer_cache": "x-trinity-answer-cache",
    "prompt_cache": "x-trinity-prompt-cache", "on_pool_error": "x-trinity-on-pool-error",
    "ttft_ms": "x-slo-ttft-ms", "tpot_ms": "x-slo-tpot-ms",
}
_KINDS: dict[str, type] = {"collection": str, "k": int, "nprobe": int, "retrieval_interval": int, "answer_cache": bool,
                           "prompt_cache": bool, "on_pool_error": str, "ttft_ms": float, "tpot_ms": float}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class RequestOptions:
    """Resolved retrieval/cache/SLO options of one request."""

    collection: str | None
    k: int
    nprobe: int | None
    retrieval_interval: int
    answer_cache: bool
    prompt_cache: bool
    ttft_ms: float
    tpot_ms: float
    on_pool_error: str
    tenant: str


def _invalid(param: str, message: str) -> BadRequest:
    return BadRequest(f"{param}: {message}", param)


def _coerce(param: str, value: Any, kind: type, minimum: float) -> Any:
    """``value`` as ``kind`` (headers arrive as strings); ``param`` names it in errors."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (*_TRUE, *_FALSE):
            return value.lower() in _TRUE
        raise _invalid(param, f"expected a boolean, got {value!r}")
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise _invalid(param, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not out >= minimum:  # NOTE: "not >=" also rejects NaN
        raise _invalid(param, f"must be >= {minimum:g}, got {value!r}")
    return out


def _defaults(cfg: GatewayConfig, tenant: str) -> RequestOptions:
    r, c = cfg.retrieval, cfg.cache
    return RequestOptions(r.collection, r.k, r.nprobe, r.decode_interval, c.use_answer_cache and bool(c.answer_cache),
                          c.use_prompt_cache and bool(c.prompt_cache), cfg.slo.ttft_ms, cfg.slo.tpot_ms,
                          cfg.on_pool_error, tenant)


def resolve_options(cfg: GatewayConfig, body_opts: Any, headers: Mapping[str, str], tenant: str) -> RequestOptions:
    """Merge config, headers and the body's ``trinity`` object; a bad value is a 400 naming it."""
    body_opts = {} if body_opts is None else body_opts
    if not isinstance(body_opts, dict):
        raise _invalid("trinity", "expected an object")
    if unknown := set(body_opts) - set(_KINDS):
        raise _invalid("trinity", f"unknown options {sorted(unknown)}; known: {sorted(_KINDS)}")
    changes: dict[str, Any] = {}
    for name, kind in _KINDS.items():
        raw = body_opts[name] if name in body_opts else headers.get(_HEADERS[name])
        if raw is None:
            continue
        if kind is str:
            changes[name] = str(raw) or None
        else:
            param = f"trinity.{name}" if name in body_opts else _HEADERS[name]
            changes[name] = _coerce(param, raw, kind, 1 if name in ("k", "nprobe") else 0)
    out = replace(_defaults(cfg, tenant), **changes)
    if out.on_pool_error not in ("degrade", "fail"):
        raise _invalid("on_pool_error", "expected degrade or fail")
    if out.ttft_ms <= 0 or out.tpot_ms <= 0:
        raise _invalid("x-slo-ttft-ms", "SLOs must be positive")
    if out.answer_cache and not cfg.cache.answer_cache or out.prompt_cache and not cfg.cache.prompt_cache:
        raise _invalid("trinity", "that cache is not configured on this gateway")
    return out
