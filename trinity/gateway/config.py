"""``GatewayConfig``: everything one gateway process is configured with.

Sources, highest first: flags, ``TRINITY_GATEWAY_*`` variables (nested with ``__``, e.g.
``TRINITY_GATEWAY_SLO__TTFT_MS``; ``TRINITY_POOL_API_KEY``; ``TRINITY_GATEWAY_API_KEYS`` as
``key=tenant,...``), ``OPENAI_API_KEY`` for the upstream instances (as vLLM's proxies read it),
``--config FILE`` (TOML or JSON: ``[backend]``, ``[backend.upstream]``, ``[slo]``,
``[retrieval]``, ``[cache]``), defaults.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from trinity.config import Section, Settings
from trinity.gateway.keys import check_api_keys, parse_api_keys

__all__ = ["BackendConfig", "CacheConfig", "GatewayConfig", "RetrievalConfig", "SLOConfig", "UpstreamConfig"]

BACKEND_KINDS = ("vllm-pd", "openai", "emulated")
KV_CONNECTORS = ("nixl", "p2p-nccl", "mooncake")


def _check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what}: {url!r} is not an http(s) URL with a host (e.g. http://127.0.0.1:8100)")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"{what}: {url!r} has an invalid port") from None
    return url.rstrip("/")


class UpstreamConfig(Section):
    """HTTP behaviour towards the LLM instances."""

    api_key: str | None = Field(None, description="Sent as Authorization: Bearer (vLLM's --api-key).")
    connect_timeout_s: float = Field(2.0, description="TCP connect limit; a failed connect marks the instance down.")
    read_timeout_s: float = Field(60.0, description="Max silence on a leg (between chunks, or for a prefill).")
    cooldown_s: float = Field(2.0, description="How long a failed instance is skipped while others remain.")


class BackendConfig(Section):
    """Where the LLM legs go; ``emulated`` is ``vllm-pd`` pointed at ``trinity emulate`` servers."""

    kind: Literal["vllm-pd", "openai", "emulated"] = "vllm-pd"
    prefill_urls: tuple[str, ...] = ()
    decode_urls: tuple[str, ...] = ()
    model: str | None = Field(None, description="Override the client's model name upstream.")
    upstream: UpstreamConfig = UpstreamConfig()
    prefill_retries: int = 1
    require_kv_transfer: bool = False
    kv_connector: Literal["nixl", "p2p-nccl", "mooncake"] = Field(
        "nixl", description="The KV connector the instances run; decides the PD handshake (docs/gateway.md).")
    prefill_kv_addresses: tuple[str, ...] = Field((), description="p2p-nccl: ZMQ address of each prefill URL.")
    decode_kv_addresses: tuple[str, ...] = Field((), description="p2p-nccl: ZMQ address of each decode URL.")
    bootstrap_ports: tuple[int, ...] = Field((), description="mooncake: bootstrap port of each prefill URL "
                                                             "(default 8998).")

    @model_validator(mode="after")
    def _check_backend(self) -> BackendConfig:
        for what, urls in (("prefill_urls", self.prefill_urls), ("decode_urls", self.decode_urls)):
            for u in urls:
                _check_url(u, f"backend.{what}")
        if self.kv_connector == "p2p-nccl" and self.kind != "openai":
            if (len(self.prefill_kv_addresses), len(self.decode_kv_addresses)) != (len(self.prefill_urls),
                                                                                   len(self.decode_urls)):
                raise ValueError("backend.kv_connector p2p-nccl: give one ZMQ address per instance "
                                 "(--prefill-kv-address per --prefill, --decode-kv-address per --decode)")
        if self.bootstrap_ports and len(self.bootstrap_ports) != len(self.prefill_urls):
            raise ValueError("backend.bootstrap_ports: one per prefill URL")
        return self


class SLOConfig(Section):
    """Default latency SLOs; ``x-slo-ttft-ms`` / ``x-slo-tpot-ms`` override them per request."""

    ttft_ms: float = 1000.0
    tpot_ms: float = 100.0
    deadline_factor: float = Field(1.0, description="Fail a request (504) once it is this many SLOs late.")
    max_request_s: float = Field(600.0, description="Cap on any request's deadline (and the deadline of a "
                                                    "request without max_tokens).")
    min_leg_ms: float = Field(2.0, description="Refuse (504) rather than start an upstream leg with less time than "
                                               "this left to its deadline: no engine answers faster.")


class RetrievalConfig(Section):
    """RAG defaults and how retrieval deadlines are carved from the SLOs."""

    collection: str | None = Field(None, description="Default collection (none: only when a request names one).")
    k: int = 4
    nprobe: int | None = None
    prefill_share: float = Field(0.3, description="Share of the TTFT SLO for embedding, cache lookups and the "
                                                  "prefill-stage search together.")
    decode_interval: int = Field(0, description="Tokens between decode-stage retrievals (0 = off).")
    decode_k: int = 1
    decode_share: float = Field(1.0, description="Stall a decode-stage retrieval may add to one inter-token gap, "
                                                 "in TPOT SLOs.")
    decode_query: Literal["combined", "text"] = Field(
        "combined", description="Decode-stage query vector: combined = the request's query vector plus an "
                                "embedding of the answer tail only; text = embed query and answer tail together.")
    decode_tail_tokens: int = Field(16, ge=1, description="Answer tail a decode-stage query embeds: its last this "
                                                          "many streamed tokens (at most 8 characters each).")
    decode_tail_weight: float = Field(2.0, gt=0, description="combined: weight of the tail's vector against the "
                                                             "query's (the query's passages are in the prompt).")
    decode_prefetch_tokens: int = Field(4, description="Start each decode-stage retrieval this many tokens before "
                                                       "its leg ends.")
    min_deadline_ms: float = Field(5.0, description="Floor of any retrieval deadline (below it: skip, degrade).")
    max_passage_chars: int = 1200
    embed: Literal["local", "pool", "openai"] = Field(
        "local", description="local: MiniLM in the gateway; pool: send texts to the pool's embedder; openai: an "
                             "OpenAI-compatible /v1/embeddings server at embed_url.")
    embed_url: str | None = Field(None, description="Base URL of the embedding server (ending in /v1).")
    embed_model: str | None = Field(None, description="Model name sent to the embedding server (default: its "
                                                      "first /v1/models entry).")
    embed_threads: int = Field(1, description="torch threads of the local embedder (see docs/gateway.md).")
    embed_decode_lane: bool = Field(False, description="local: a second MiniLM instance (~90 MB) for decode-stage "
                                                       "texts, so they never wait for a prefill batch being encoded "
                                                       "(for gateways with spare cores; see docs/gateway.md).")


class CacheConfig(Section):
    """Semantic caches in the pool (created at start-up if missing): ``answer`` maps a prompt to a
    finished answer, ``prompt`` to the passages its retrieval returned."""

    answer_cache: str | None = "answers"
    prompt_cache: str | None = "prompts"
    use_answer_cache: bool = True
    use_prompt_cache: bool = False
    threshold: float = 0.95
    ttl_s: float = 3600.0
    max_entries: int = 10_000
    lookup_deadline_ms: float = 50.0


class _OpenAIKey(PydanticBaseSettingsSource):
    """``OPENAI_API_KEY`` as the upstream instances' key (below ``TRINITY_GATEWAY_BACKEND__UPSTREAM__API_KEY``)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        key = os.environ.get("OPENAI_API_KEY")
        return {"backend": {"upstream": {"api_key": key}}} if key else {}


class GatewayConfig(Settings):
    """Everything ``trinity gateway`` configures."""

    model_config = SettingsConfigDict(env_prefix="TRINITY_GATEWAY_")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    pool_url: str = "http://127.0.0.1:8077"
    pool_api_key: str | None = Field(None, validation_alias=AliasChoices("pool_api_key", "TRINITY_POOL_API_KEY"))
    backend: BackendConfig = BackendConfig()
    slo: SLOConfig = SLOConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    cache: CacheConfig = CacheConfig()
    on_pool_error: Literal["degrade", "fail"] = Field("degrade", description="degrade: answer without retrieval "
                                                                             "(and say so); fail: 503.")
    max_concurrency: int = Field(512, description="Requests past the admission gate at once; others queue.")
    api_keys: Annotated[dict[str, str], NoDecode] = Field(
        {}, description="Client key -> tenant; when set, keys are required and decide the tenant.")
    default_tenant: str = "default"
    trust_tenant_header: bool = Field(False, description="Without keys, take the tenant from x-tenant-id (only "
                                                         "behind a trusted, authenticating proxy).")

    @classmethod
    def extra_sources(cls, settings_cls: type[BaseSettings]) -> tuple[PydanticBaseSettingsSource, ...]:
        return (_OpenAIKey(settings_cls),)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, v: Any) -> Any:
        return parse_api_keys(v.split(",")) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> GatewayConfig:
        b, r, s = self.backend, self.retrieval, self.slo
        if b.kind != "openai" and not b.prefill_urls:
            raise ValueError(f"backend.prefill_urls: the {b.kind} backend needs at least one prefill instance "
                             "(--prefill URL)")
        if not b.decode_urls:
            raise ValueError("backend.decode_urls: at least one decode (or OpenAI) instance is needed (--decode URL)")
        _check_url(self.pool_url, "pool_url")
        if r.embed_url and r.embed != "openai":
            raise ValueError(f"retrieval.embed_url: given with embed={r.embed}; use embed=openai (--embed openai, or "
                             "leave --embed out)")
        if r.embed == "openai":
            if not r.embed_url:
                raise ValueError("retrieval.embed_url: embed=openai needs the embedding server's URL (--embed-url)")
            _check_url(r.embed_url, "retrieval.embed_url")
        if not 0 < r.prefill_share <= 1 or r.decode_share <= 0:
            raise ValueError("retrieval.prefill_share must be in (0, 1] and decode_share > 0")
        if s.ttft_ms <= 0 or s.tpot_ms <= 0 or self.max_concurrency < 1:
            raise ValueError("slo.ttft_ms, slo.tpot_ms and max_concurrency must be positive")
        if not s.deadline_factor >= 1 or not s.max_request_s > 0:
            raise ValueError("slo.deadline_factor must be >= 1 and slo.max_request_s > 0")
        check_api_keys(self.api_keys)
        if self.api_keys and self.trust_tenant_header:
            raise ValueError("trust_tenant_header: not with api_keys (the key decides the tenant)")
        return self
