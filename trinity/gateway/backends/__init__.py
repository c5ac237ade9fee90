"""LLM backends of the gateway: ``openai`` (one server does both phases) and ``vllm_pd`` (vLLM's
disaggregated prefill/decode protocol, also spoken by ``trinity emulate``)."""

from __future__ import annotations

from typing import Any

from trinity.gateway.backends.openai import OpenAIBackend
from trinity.gateway.backends.vllm_pd import VllmPDBackend
from trinity.gateway.config import GatewayConfig

__all__ = ["OpenAIBackend", "VllmPDBackend", "make_backend"]


def make_backend(cfg: GatewayConfig, metrics: Any = None) -> OpenAIBackend:
    b = cfg.backend
    if b.kind == "openai":
        return OpenAIBackend(b.decode_urls, b.upstream, metrics)
    return VllmPDBackend(b.prefill_urls, b.decode_urls, b.upstream, metrics, prefill_retries=b.prefill_retries,
                         require_kv_transfer=b.require_kv_transfer, connector=b.kv_connector,
                         kv_addresses={**dict(zip(b.prefill_urls, b.prefill_kv_addresses)),
                                       **dict(zip(b.decode_urls, b.decode_kv_addresses))},
                         bootstrap_ports=dict(zip(b.prefill_urls, b.bootstrap_ports)))
