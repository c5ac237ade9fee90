"""Gateway configuration (frozen dataclasses) and per-request option resolution.

Precedence for a request: gateway config < request headers < the request body's
``trinity`` object. Config files are TOML or JSON with the sections of
:class:`GatewayConfig` (``[backend]``, ``[slo]``, ``[retrieval]``, ``[cache]``).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from trinity.serving.llm_backend import UpstreamConfig

__all__ = [
    "BackendConfig", "CacheConfig", "GatewayConfig", "OptionError", "RequestOptions", "RetrievalConfig", "SLOConfig",
    "check_api_keys", "resolve_options",
]

BACKEND_KINDS = ("vllm-pd", "openai", "emulated")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$")  # NOTE: the pool's tenant names
KEY_RE = re.compile(r"^[^\s,]+$")


@dataclass(frozen=True)
class SLOConfig:
    """Default latency SLOs; ``x-slo-ttft-ms`` / ``x-slo-tpot-ms`` override per request.

    Attributes:
        deadline_factor: a request fails (504) once it is this many SLOs late: no first
            token by ``ttft_ms * deadline_factor``, or not finished by that plus
            ``tpot_ms * deadline_factor`` per further token (``trinity.serving.gateway_deadline``).
        max_request_s: cap on any request's deadline (also the deadline of a request
            without ``max_tokens``).
    """

    ttft_ms: float = 1000.0
    tpot_ms: float = 100.0
    deadline_factor: float = 1.0
    max_request_s: float = 600.0


@dataclass(frozen=True)
class RetrievalConfig:
    """RAG defaults and how retrieval deadlines are carved from the SLOs.

    Attributes:
        collection: default collection (``None``: retrieval only when a request names one).
        prefill_share: share of the TTFT SLO that embedding, cache lookups and the
            prefill-stage search may use together (the rest is for queueing + prefill).
        decode_interval: tokens between decode-stage retrievals (0 = off).
        decode_share: the stall a decode-stage retrieval may add to one inter-token gap,
            in TPOT SLOs (``decode_share * tpot_ms``).
        decode_prefetch_tokens: start each decode-stage retrieval this many tokens before
            its leg ends, overlapping it with generation (its deadline adds those tokens'
            SLO time).
        min_deadline_ms: floor of any retrieval deadline (below it, skip and degrade).
        embed: ``local`` embeds once in the gateway (vector reused for cache and search);
            ``pool`` sends texts and lets the pool's embedder encode them.
        embed_threads: torch threads of the local embedder. NOTE: 1 by default: query
            batches are tiny, and on a shared CPU multi-threaded torch spin-waits (measured
            on 2 busy cores: 25-45 ms per query with 1 thread, 0.1-1.4 s with 2).
    """

    collection: str | None = None
    k: int = 4
    nprobe: int | None = None
    prefill_share: float = 0.3
    decode_interval: int = 0
    decode_k: int = 1
    decode_share: float = 1.0
    decode_prefetch_tokens: int = 4
    min_deadline_ms: float = 5.0
    max_passage_chars: int = 1200
    embed: str = "local"
    embed_threads: int = 1


@dataclass(frozen=True)
class CacheConfig:
    """Semantic caches in the pool. The gateway creates missing ones at startup.

    ``answer`` maps a prompt to a finished answer; ``prompt`` maps a prompt to the passages
    its retrieval returned (a hit skips the search).
    """

    answer_cache: str | None = "answers"
    prompt_cache: str | None = "prompts"
    use_answer_cache: bool = True
    use_prompt_cache: bool = False
    threshold: float = 0.95
    ttl_s: float = 3600.0
    max_entries: int = 10_000
    lookup_deadline_ms: float = 50.0


@dataclass(frozen=True)
class BackendConfig:
    """Where the LLM legs go. ``emulated`` is ``vllm-pd`` pointed at ``trinity emulate`` servers."""

    kind: str = "vllm-pd"
    prefill_urls: tuple[str, ...] = ("http://127.0.0.1:8100",)
    decode_urls: tuple[str, ...] = ("http://127.0.0.1:8200",)
    model: str | None = None  # override the client's model name upstream
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    prefill_retries: int = 1
    require_kv_transfer: bool = False


@dataclass(frozen=True)
class GatewayConfig:
    """Everything ``trinity gateway`` configures.

    Attributes:
        on_pool_error: ``degrade`` answers without retrieval (and says so in the
            response); ``fail`` answers 503. Per request: ``trinity.on_pool_error``.
        max_concurrency: requests past the admission gate at once; others queue.
        api_keys: client key -> tenant; when set, keys are required and decide the tenant
            (a header cannot claim another tenant's cache entries).
        trust_tenant_header: without keys, take the tenant from ``x-tenant-id`` (for a
            trusted, authenticating proxy in front). Off: one anonymous tenant.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    pool_url: str = "http://127.0.0.1:8077"
    pool_api_key: str | None = None
    backend: BackendConfig = field(default_factory=BackendConfig)
    slo: SLOConfig = field(default_factory=SLOConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    on_pool_error: str = "degrade"
    max_concurrency: int = 512
    api_keys: Mapping[str, str] = field(default_factory=dict)
    default_tenant: str = "default"
    trust_tenant_header: bool = False

    def __post_init__(self) -> None:
        if self.backend.kind not in BACKEND_KINDS:
            raise ValueError(f"backend.kind: expected one of {BACKEND_KINDS}, got {self.backend.kind!r}")
        if self.backend.kind != "openai" and not self.backend.prefill_urls:
            raise ValueError("backend.prefill_urls: the vllm-pd backend needs at least one prefill instance")
        if not self.backend.decode_urls:
            raise ValueError("backend.decode_urls: at least one decode (or OpenAI) instance is needed")
        if self.on_pool_error not in ("degrade", "fail"):
            raise ValueError("on_pool_error: expected degrade or fail")
        if self.retrieval.embed not in ("local", "pool"):
            raise ValueError("retrieval.embed: expected local or pool")
        if not 0 < self.retrieval.prefill_share <= 1 or self.retrieval.decode_share <= 0:
            raise ValueError("retrieval.prefill_share must be in (0, 1] and decode_share > 0")
        if self.slo.ttft_ms <= 0 or self.slo.tpot_ms <= 0 or self.max_concurrency < 1:
            raise ValueError("slo.ttft_ms, slo.tpot_ms and max_concurrency must be positive")
        if not self.slo.deadline_factor >= 1 or not self.slo.max_request_s > 0:
            raise ValueError("slo.deadline_factor must be >= 1 and slo.max_request_s > 0")
        check_api_keys(self.api_keys)
        if self.api_keys and self.trust_tenant_header:
            raise ValueError("trust_tenant_header: not with api_keys (the key decides the tenant)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GatewayConfig:
        """Build from nested dicts (a parsed TOML/JSON file); unknown keys raise ``ValueError``."""
        def build(klass: type, raw: Mapping[str, Any], where: str) -> Any:
            known = {f.name for f in fields(klass)}
            if unknown := set(raw) - known:
                raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
            return klass(**raw)

        data = dict(data)
        backend = dict(data.pop("backend", {}))
        for key in ("prefill_urls", "decode_urls"):
            if key in backend:
                backend[key] = tuple(backend[key])
        if "upstream" in backend:
            backend["upstream"] = build(UpstreamConfig, backend["upstream"], "backend.upstream")
        sections = {"backend": build(BackendConfig, backend, "backend")}
        for name, klass in (("slo", SLOConfig), ("retrieval", RetrievalConfig), ("cache", CacheConfig)):
            sections[name] = build(klass, data.pop(name, {}), name)
        return build(cls, {**data, **sections}, "gateway")

    @classmethod
    def load(cls, path: Path) -> GatewayConfig:
        text = Path(path).read_text()
        return cls.from_dict(tomllib.loads(text) if str(path).endswith(".toml") else json.loads(text))


def check_api_keys(keys: Mapping[str, str]) -> None:
    """Keys of 8+ visible characters (no spaces or commas), each mapped to a pool tenant name."""
    for key, tenant in keys.items():
        if len(key) < 8 or not KEY_RE.match(key):
            raise ValueError("api_keys: each key needs at least 8 characters and no whitespace or commas")
        if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
            raise ValueError(f"api_keys: tenant {tenant!r} is not 1-128 of [A-Za-z0-9_.:@-]")


class OptionError(ValueError):
    """A bad per-request option; ``param`` names it (returned in the 400 body)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


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


_HEADERS = {
    "collection": "x-trinity-collection", "k": "x-trinity-k", "nprobe": "x-trinity-nprobe",
    "retrieval_interval": "x-trinity-retrieval-interval", "answer_cache": "x-trinity-answer-cache",
    "prompt_cache": "x-trinity-prompt-cache", "on_pool_error": "x-trinity-on-pool-error",
    "ttft_ms": "x-slo-ttft-ms", "tpot_ms": "x-slo-tpot-ms",
}


def _coerce(param: str, value: Any, kind: type, minimum: float) -> Any:
    """``value`` as ``kind`` (headers arrive as strings); ``param`` names it in errors."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise OptionError(param, f"expected a boolean, got {value!r}")
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise OptionError(param, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not out >= minimum:  # NOTE: "not >=" also rejects NaN
        raise OptionError(param, f"must be >= {minimum:g}, got {value!r}")
    return out


def resolve_options(cfg: GatewayConfig, body_opts: Any, headers: Mapping[str, str], tenant: str) -> RequestOptions:
    """Merge config, ``x-trinity-*`` / ``x-slo-*`` headers and the body's ``trinity`` object."""
    if body_opts is None:
        body_opts = {}
    if not isinstance(body_opts, dict):
        raise OptionError("trinity", "expected an object")
    r, c = cfg.retrieval, cfg.cache
    opts = RequestOptions(r.collection, r.k, r.nprobe, r.decode_interval, c.use_answer_cache and bool(c.answer_cache),
                          c.use_prompt_cache and bool(c.prompt_cache), cfg.slo.ttft_ms, cfg.slo.tpot_ms,
                          cfg.on_pool_error, tenant)
    kinds = {"collection": str, "k": int, "nprobe": int, "retrieval_interval": int, "answer_cache": bool,
             "prompt_cache": bool, "on_pool_error": str, "ttft_ms": float, "tpot_ms": float}
    if unknown := set(body_opts) - set(kinds):
        raise OptionError("trinity", f"unknown options {sorted(unknown)}; known: {sorted(kinds)}")
    changes: dict[str, Any] = {}
    for name, kind in kinds.items():
        raw = body_opts[name] if name in body_opts else headers.get(_HEADERS[name])
        if raw is None:
            continue
        if kind is str:
            changes[name] = str(raw) or None
        else:
            param = f"trinity.{name}" if name in body_opts else _HEADERS[name]
            changes[name] = _coerce(param, raw, kind, 1 if name in ("k", "nprobe") else 0)
    out = replace(opts, **changes)
    if out.on_pool_error not in ("degrade", "fail"):
        raise OptionError("on_pool_error", "expected degrade or fail")
    if out.ttft_ms <= 0 or out.tpot_ms <= 0:
        raise OptionError("x-slo-ttft-ms", "SLOs must be positive")
    if out.answer_cache and not c.answer_cache or out.prompt_cache and not c.prompt_cache:
        raise OptionError("trinity", "that cache is not configured on this gateway")
    return out
