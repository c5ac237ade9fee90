"""vLLM disaggregated prefill/decode (PD) protocol, as vLLM's own proxies speak it.

Mirrors ``tests/v1/kv_connector/nixl_integration/toy_proxy_server.py`` and
``examples/online_serving/disaggregated_serving/`` in the vLLM repository:

1. Prefill leg, non-streaming, to a prefill instance: the client body with
   ``kv_transfer_params = {"do_remote_decode": true, "do_remote_prefill": false,
   "remote_engine_id": null, "remote_block_ids": null, "remote_host": null,
   "remote_port": null}``, ``stream = false``, ``max_tokens = 1`` (and
   ``max_completion_tokens = 1`` if present), without ``stream_options``,
   ``min_tokens`` and ``min_completion_tokens``.
2. Decode leg, streamed, to a decode instance: the client body plus the
   ``kv_transfer_params`` object the prefill response returned (top-level field).

Both legs carry the same ``X-Request-Id``. A prefill response without
``kv_transfer_params`` still proceeds (like vLLM's proxy), but it means the decode
instance silently re-prefills -- the most common PD misconfiguration -- so it is
counted (``trinity_gateway_decode_without_kv_transfer_total``), logged, and refused
outright with ``require_kv_transfer``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from trinity.gateway.backends.instances import BackendError, Instance, LegRequest, post_json
from trinity.gateway.backends.openai import OpenAIBackend, PrefillResult
from trinity.gateway.config import UpstreamConfig

__all__ = ["PREFILL_KV_TRANSFER_PARAMS", "VllmPDBackend", "prefill_body"]

log = logging.getLogger(__name__)

#: What vLLM's proxies send to the prefill instance.
PREFILL_KV_TRANSFER_PARAMS: dict[str, Any] = {
    "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
    "remote_block_ids": None, "remote_host": None, "remote_port": None,
}


def prefill_body(body: dict[str, Any]) -> dict[str, Any]:
    """The prefill leg's body derived from a client body (see the module docstring)."""
    req = {k: v for k, v in body.items()
           if k not in ("stream_options", "min_tokens", "min_completion_tokens", "kv_transfer_params")}
    req["kv_transfer_params"] = dict(PREFILL_KV_TRANSFER_PARAMS)
    req["stream"] = False
    req["max_tokens"] = 1
    if "max_completion_tokens" in body:
        req["max_completion_tokens"] = 1
    return req


class VllmPDBackend(OpenAIBackend):
    """Prefill pool + decode pool speaking vLLM's PD protocol (also the emulated engines').

    Args:
        prefill_retries: other prefill instances tried after a connection error or 5xx.
        require_kv_transfer: fail the request instead of decoding without KV params.
    """

    kind = "vllm-pd"
    disaggregated = True

    def __init__(self, prefill_urls: Sequence[str], decode_urls: Sequence[str],
                 upstream: UpstreamConfig | None = None, metrics: Any = None,
                 prefill_retries: int = 1, require_kv_transfer: bool = False) -> None:
        if not prefill_urls:
            raise ValueError("vllm-pd backend: at least one prefill URL is needed")
        super().__init__(decode_urls, upstream, metrics, prefill_urls=prefill_urls)
        self.prefill_retries, self.require_kv_transfer = prefill_retries, require_kv_transfer

    async def prefill(self, leg: LegRequest) -> PrefillResult:
        """Run the prefill leg, retrying on another instance after transport errors or 5xx."""
        assert self.prefill_pool is not None
        body = prefill_body(leg.body)
        tried: list[Instance] = []
        t0 = time.perf_counter()
        while True:
            inst = self.prefill_pool.pick(exclude=tried)
            tried.append(inst)
            try:
                resp = await post_json(self.prefill_pool, inst, "prefill",
                                       LegRequest(leg.endpoint, body, leg.request_id))
                break
            except BackendError as exc:
                retryable = exc.upstream_status is None or exc.upstream_status >= 500
                others = len(tried) < len(self.prefill_pool.instances)
                if not (retryable and others and len(tried) <= self.prefill_retries):
                    raise
                log.warning("prefill on %s failed (%s); retrying on another instance", inst.url, exc)
        kv = resp.get("kv_transfer_params")
        result = PrefillResult(kv if isinstance(kv, dict) and kv else None, (time.perf_counter() - t0) * 1e3,
                               inst.url, len(tried))
        if result.kv_transfer_params is None:
            if self.metrics is not None:
                self.metrics.no_kv_transfer.labels(inst.url).inc()
            log.warning("prefill instance %s returned no kv_transfer_params: the decode instance will "
                        "re-prefill (is it started with --kv-transfer-config?)", inst.url)
            if self.require_kv_transfer:
                raise BackendError("prefill", "no kv_transfer_params in the prefill response", 502, inst.url)
        return result

    def first_decode_body(self, body: dict[str, Any], prefill: PrefillResult) -> dict[str, Any]:
        out = {k: v for k, v in body.items() if k != "kv_transfer_params"}
        if prefill.kv_transfer_params is not None:
            out["kv_transfer_params"] = prefill.kv_transfer_params
        return out
